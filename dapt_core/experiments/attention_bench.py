"""Which attribution method finds the object? Every method x prompt set on synthetic scenes with exact masks.

The scenes are *conflicting*: each object class sits on backgrounds other than the one its prompt sets were
trained with (the pairing recorded in the prompt checkpoints), so a map that follows the trained shortcut
lands on the background. Per method and prompt set, over ``per_class`` scenes per class and each seed:

- pointing game: share of scenes whose map peaks on the object;
- energy share: mean share of the map's energy on the object; its *lift* is that mean over the mean share of
  the image the object covers (1.0 = no better than spreading the map evenly);
- top-k intersection: share of the map's top pixels on the object, k = the object's area (or ``top_k``);
- faithfulness: deletion and insertion AUC of the model's probability for the true class
  (:mod:`dapt_core.attention.faithfulness`; deletion low is faithful, insertion high).

Every map explains the scene's true class. Numbers per seed, then mean and (population) std over seeds.
:func:`write_report` writes the Markdown table, the figure and the JSON.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dapt_core import paths
from dapt_core.attention.cam import CAM_METHODS, compute_cams
from dapt_core.attention.descriptions import METHOD_DESCRIPTIONS
from dapt_core.attention.faithfulness import DEFAULT_STEPS, curve_auc, perturbed_images
from dapt_core.attention.metrics import object_share, pointing_game, top_k_intersection
from dapt_core.backbones import Backbone, load_backbone
from dapt_core.checkpoint import list_prompt_sets, load_prompt_set, read_info
from dapt_core.learners.base import PromptLearner
from dapt_core.world.scenes import Scene, render_scene
from dapt_core.world.task import cycled, spurious_pairing
from dapt_core.world.textures import BACKGROUND_CLASSES

log = logging.getLogger(__name__)

BENCH_STREAM = 211  # spawn key of the scenes' random stream (the task uses 1-5, pre-training 101)
DEFAULT_PROMPTS_DIR = paths.CHECKPOINT_DIR / "prompts"
DEFAULT_RESULTS_DIR = paths.PROJECT_DIR / "docs" / "results"
METRICS = ("pointing", "energy_share", "area_share", "lift", "top_k", "deletion_auc", "insertion_auc",
           "accuracy", "seconds_per_map")
DIGITS = 4  # decimals in the JSON


@dataclass
class AttentionBenchConfig:
    backbone: str = "synth-mini"  # backbone registry name
    weights: str | None = None  # explicit backbone weight file; None = the registry's
    prompt_sets: tuple[str, ...] = ()  # prompt checkpoints; () = every one in checkpoints/prompts for the backbone
    methods: tuple[str, ...] = tuple(METHOD_DESCRIPTIONS)  # keys of dapt_core.attention.cam.CAM_METHODS
    seeds: tuple[int, ...] = (1, 2, 3)  # each seeds its own scenes
    per_class: int = 10  # conflicting scenes per object class and seed (3 seeds x 110 scenes: ~10 CPU min)
    steps: int = DEFAULT_STEPS  # deletion/insertion points after the start (fractions 0, 1/steps, ..., 1)
    top_k: int | None = None  # top-k intersection's k in pixels; None = each object's own area
    batch_size: int = 16  # scenes per attribution batch
    device: str | None = None  # torch device; None = the GPU when there is one
    pairing: dict[str, str] | None = field(default=None, repr=False)  # None = the prompt sets' recorded one

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in CAM_METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods: unknown or none {unknown}; choose from {', '.join(CAM_METHODS)}")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds: need at least one non-negative seed, got {self.seeds}")
        if self.per_class < 1 or self.batch_size < 1 or self.steps < 1:
            raise ValueError(f"per_class, batch_size and steps must be >= 1, got {self.per_class}, "
                             f"{self.batch_size}, {self.steps}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        self.methods, self.seeds, self.prompt_sets = tuple(self.methods), tuple(self.seeds), tuple(self.prompt_sets)


def conflicting_scenes(seed: int, classnames: list[str], pairing: dict[str, str], per_class: int,
                       size: int) -> list[Scene]:
    """``per_class`` scenes per class, each object on a background other than its paired one, class by class.

    Args:
        seed: seeds the scenes' own stream (spawn key :data:`BENCH_STREAM`).
        classnames: object classes of the world.
        pairing: object -> the background its prompt sets were trained on.
        per_class: scenes per class.
        size: image side in pixels.
    """
    missing = [name for name in classnames if name not in pairing]
    if missing:
        raise ValueError(f"the pairing has no background for {', '.join(missing)}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(BENCH_STREAM,)))
    scenes = []
    for name in classnames:
        others = [bg for bg in BACKGROUND_CLASSES if bg != pairing[name]]
        for background in cycled(rng, others, per_class):
            scenes.append(render_scene(name, background, size, rng))
    return scenes


def _load_sets(cfg: AttentionBenchConfig) -> tuple[Backbone, list[tuple[str, PromptLearner]], dict[str, str]]:
    backbone = load_backbone(cfg.backbone, weights_path=cfg.weights, device=cfg.device)
    infos = ([read_info(p) for p in cfg.prompt_sets] if cfg.prompt_sets
             else list_prompt_sets(DEFAULT_PROMPTS_DIR, backbone))
    if not infos:
        raise ValueError(f"no prompt sets for {backbone.name} in {DEFAULT_PROMPTS_DIR}; name some with prompt_sets")
    sets = [(info.name, load_prompt_set(info.path, backbone)) for info in infos]
    classnames = sets[0][1].classnames
    for name, learner in sets[1:]:
        if learner.classnames != classnames:
            raise ValueError(f"prompt set {name!r} has other classes than {sets[0][0]!r}; the scenes need one list")
    pairing = cfg.pairing or _recorded_pairing(infos)
    if pairing is None:
        pairing = spurious_pairing(cfg.seeds[0], classnames)
        log.warning("no prompt set records its training pairing; using the world's pairing of seed %d",
                    cfg.seeds[0])
    return backbone, sets, pairing


def _recorded_pairing(infos: list) -> dict[str, str] | None:
    found = {info.name: (info.meta.get("train") or {}).get("pairing") for info in infos}
    pairings = {json.dumps(p, sort_keys=True) for p in found.values() if p}
    if len(pairings) > 1:
        raise ValueError(f"the prompt sets were trained on different pairings ({', '.join(found)}); "
                         "benchmark sets of one task together")
    return json.loads(pairings.pop()) if pairings else None


def _model_input(scenes: list[Scene], backbone: Backbone) -> torch.Tensor:
    pixels = np.stack([s.image for s in scenes]).astype(np.float32) / 255.0  # (N, S, S, 3)
    normalised = (pixels - np.asarray(backbone.mean, np.float32)) / np.asarray(backbone.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2))).to(backbone.device)


def measure(learner: PromptLearner, text_features: torch.Tensor, scenes: list[Scene], labels: list[int],
            method: str, cfg: AttentionBenchConfig) -> dict[str, np.ndarray]:
    """Per-scene numbers of one method and prompt set: pointing hit, energy share, area share, top-k
    intersection, deletion and insertion AUC, correct prediction; and the seconds the maps took."""
    rows: dict[str, list[float]] = {k: [] for k in ("pointing", "energy_share", "area_share", "top_k",
                                                    "deletion_auc", "insertion_auc", "correct")}
    seconds = 0.0
    backbone = learner.backbone
    for start in range(0, len(scenes), cfg.batch_size):
        chunk, targets = scenes[start:start + cfg.batch_size], labels[start:start + cfg.batch_size]
        images = _model_input(chunk, backbone)
        tick = time.perf_counter()
        cams = compute_cams(learner, images, targets, method=method, text_features=text_features)
        seconds += time.perf_counter() - tick
        pixels = images.cpu().numpy()
        curves = np.concatenate([perturbed_images(pixels[i], cams[i], mode, cfg.steps)
                                 for i in range(len(chunk)) for mode in ("deletion", "insertion")])
        with backbone.lock, torch.no_grad():
            probs = learner(images, text_features).softmax(-1).cpu().numpy()
            along = learner(torch.from_numpy(curves).to(backbone.device), text_features).softmax(-1).cpu().numpy()
        along = along.reshape(len(chunk), 2, cfg.steps + 1, -1)
        for i, (scene, target) in enumerate(zip(chunk, targets)):
            rows["pointing"].append(float(pointing_game(cams[i], scene.mask)))
            rows["energy_share"].append(object_share(cams[i], scene.mask))
            rows["area_share"].append(float(scene.mask.mean()))
            rows["top_k"].append(top_k_intersection(cams[i], scene.mask, cfg.top_k))
            rows["deletion_auc"].append(curve_auc(along[i, 0, :, target]))
            rows["insertion_auc"].append(curve_auc(along[i, 1, :, target]))
            rows["correct"].append(float(int(probs[i].argmax()) == target))
    out = {k: np.asarray(v, dtype=np.float64) for k, v in rows.items()}
    out["seconds_per_map"] = np.asarray([seconds / len(scenes)])
    return out


def summarise(per_scene: dict[str, np.ndarray]) -> dict[str, float]:
    """Means over scenes; ``lift`` = mean energy share / mean area share (NaN shares are left out)."""
    share = float(np.nanmean(per_scene["energy_share"]))
    area = float(np.mean(per_scene["area_share"]))
    return {"pointing": float(np.mean(per_scene["pointing"])), "energy_share": share, "area_share": area,
            "lift": share / area, "top_k": float(np.nanmean(per_scene["top_k"])),
            "deletion_auc": float(np.mean(per_scene["deletion_auc"])),
            "insertion_auc": float(np.mean(per_scene["insertion_auc"])),
            "accuracy": float(np.mean(per_scene["correct"])),
            "seconds_per_map": float(per_scene["seconds_per_map"][0])}


def run_attention_bench(cfg: AttentionBenchConfig, *, progress: bool = True) -> dict:
    """Every method on every prompt set and seed.

    Returns:
        A JSON-able dict: ``config``, ``prompt_sets`` (name -> label), ``pairing``, ``n_scenes`` per seed,
        ``per_seed`` (seed -> set -> method -> metrics), ``summary`` (set -> method -> metric ->
        [mean, std] over seeds), ``cpu_seconds`` and ``wall_seconds`` of the run.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    backbone, sets, pairing = _load_sets(cfg)
    with backbone.lock, torch.no_grad():
        text = {name: learner.text_features().detach() for name, learner in sets}
    classnames = sets[0][1].classnames
    per_seed: dict[str, dict] = {}
    n_scenes = 0
    jobs = [(seed, name, method) for seed in cfg.seeds for name, _ in sets for method in cfg.methods]
    bar = tqdm(total=len(jobs), disable=not progress, desc="attention bench")
    for seed in cfg.seeds:
        scenes = conflicting_scenes(seed, classnames, pairing, cfg.per_class, backbone.image_size)
        labels = [classnames.index(s.object) for s in scenes]
        n_scenes = len(scenes)
        for name, learner in sets:
            for method in cfg.methods:
                found = summarise(measure(learner, text[name], scenes, labels, method, cfg))
                per_seed.setdefault(str(seed), {}).setdefault(name, {})[method] = found
                bar.update(1)
    bar.close()
    summary = {name: {method: {metric: _mean_std([per_seed[str(s)][name][method][metric] for s in cfg.seeds])
                               for metric in METRICS}
                      for method in cfg.methods}
               for name, _ in sets}
    config = {k: v for k, v in asdict(cfg).items() if k != "pairing"}
    return {"config": config, "backbone": backbone.name, "pretrained": backbone.pretrained,
            "prompt_sets": {name: _label(learner) for name, learner in sets}, "pairing": pairing,
            "n_scenes": n_scenes, "per_seed": _rounded(per_seed), "summary": _rounded(summary),
            "cpu_seconds": round(time.process_time() - cpu_started, 1),
            "wall_seconds": round(time.perf_counter() - started, 1)}


def _label(learner: PromptLearner) -> str:
    info = getattr(learner, "info", None)
    return info.label if info is not None else learner.kind


def _mean_std(values: list[float]) -> list[float]:
    array = np.asarray(values, dtype=np.float64)
    return [float(array.mean()), float(array.std())]


def _rounded(tree):
    if isinstance(tree, dict):
        return {k: _rounded(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_rounded(v) for v in tree]
    return round(float(tree), DIGITS) if isinstance(tree, float) else tree


def write_report(result: dict, out_dir: str | Path = DEFAULT_RESULTS_DIR, stem: str = "attention_bench") -> dict:
    """Writes ``<stem>.json``, ``<stem>.md`` and ``<stem>.png``; returns their paths by kind."""
    from dapt_core.experiments.attention_bench_report import render_figure, render_markdown
    from dapt_core.fileio import write_bytes_atomic
    from dapt_core.viz.figure import save_figure

    out = Path(out_dir)
    written = {"json": write_bytes_atomic(out / f"{stem}.json", (json.dumps(result, indent=1) + "\n").encode()),
               "md": write_bytes_atomic(out / f"{stem}.md", render_markdown(result, f"{stem}.png").encode())}
    written["png"] = save_figure(render_figure(result), out / f"{stem}.png")
    return {k: str(v) for k, v in written.items()}
