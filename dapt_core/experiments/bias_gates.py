"""The gates of issue 14 (item 3): is a backbone's context bias strong enough, and measurable, to judge DAPT on?

Four gates, each a measurement against a threshold of :mod:`dapt_core.experiments.gate_thresholds`:

1. ``bg_gap``: the zero-shot backbone's BG-Gap in the bias suite (:mod:`dapt_core.experiments.bias_suite`);
2. ``only_bg``: its Only-BG accuracy over chance;
3. ``headroom``: the downstream few-shot task leaves room: zero-shot accuracy on its headroom split at most the
   threshold, and CoOp trained on the task's shots at least the threshold above zero-shot there;
4. ``attention``: the attention metric (energy share of the true class's Grad-CAM on the object, over the task's
   conflicting split) separates two control CoOp prompt sets: one trained on *balanced* scenes (backgrounds
   independent of the label) and one on *background-label* scenes (each label's scenes on that class's home
   backgrounds, the object drawn from every class alike, so only the background carries the label). The
   paired 95% interval of the per-scene difference (balanced - background) must lie above the threshold.

Every prompt set is trained through :func:`dapt_core.train.train_prompts` on scenes written to a temporary image
folder; evaluation and attention run on the scenes in memory. :func:`verdicts` is pure: fake measurements in,
pass/fail out.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from dapt_core.experiments.bias_suite import SuiteWorld, classified_correctly, learner_classifier, paired_interval
from dapt_core.experiments.bias_worlds import TEST_SPLITS, DownstreamTask, LabelledScenes
from dapt_core.experiments.gate_thresholds import (
    ATTENTION_METRIC_WORDS,
    ATTENTION_METRICS,
    SETTINGS,
    THRESHOLDS,
    GateSettings,
    GateThresholds,
    registration_of,
)
from dapt_core.preprocess import normalize_pixels

log = logging.getLogger(__name__)

CONTROL_KINDS = ("balanced", "background")
CONTROL_STREAM = 231  # spawn key of the control scenes' stream (the suite uses 221)


def control_scenes(world: SuiteWorld, kind: str, shots: int, seed: int, size: int, repeat: int = 0) -> LabelledScenes:
    """``shots`` training scenes per label for one control prompt set.

    ``balanced``: the label's own object on a background drawn uniformly from every home background of the world;
    ``background``: an object of a uniformly drawn class (any, the label's own included) on one of the label's
    home backgrounds, so only the background tells the label. ``repeat`` > 0 draws another, independent set of the
    same kind from the same seed (repeat 0 is the stream every single-pair run used).
    """
    if kind not in CONTROL_KINDS:
        raise ValueError(f"kind: unknown control {kind!r}; choose from {', '.join(CONTROL_KINDS)}")
    key = (CONTROL_STREAM, CONTROL_KINDS.index(kind)) + ((repeat,) if repeat else ())
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
    everywhere = world.backgrounds
    items = []
    for label, name in enumerate(world.classnames):
        for _ in range(shots):
            if kind == "balanced":
                obj, bg = name, everywhere[int(rng.integers(len(everywhere)))]
            else:
                obj = world.classnames[int(rng.integers(len(world.classnames)))]
                bg = world.home[name][int(rng.integers(len(world.home[name])))]
            parts = world.render(obj, bg, size, rng)
            items.append((parts.image, parts.mask, label, bg))
    return LabelledScenes.stack(items)


def control_seed(seed: int, repeat: int) -> int:
    """The training seed of control pair ``repeat`` of a run seeded ``seed`` (repeat 0: ``seed`` itself)."""
    if repeat == 0:
        return seed
    state = np.random.SeedSequence(seed, spawn_key=(CONTROL_STREAM, len(CONTROL_KINDS), repeat)).generate_state(1)
    return int(state[0] % 2**31)


def _write_samples(scenes: LabelledScenes, classnames: tuple[str, ...], root: Path) -> list:
    """Scenes as PNG files ``root/<label>/<index>.png`` and the Samples that name them."""
    from PIL import Image

    from dapt_core.data.records import Sample

    samples = []
    for index, (image, label) in enumerate(zip(scenes.images, scenes.labels)):
        path = root / f"{int(label):03d}" / f"{index:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        samples.append(Sample(path, int(label), classnames[int(label)]))
    return samples


def train_coop(backbone, classnames: tuple[str, ...], scenes: LabelledScenes | None, seed: int,
               settings: GateSettings = SETTINGS, history: list | None = None):
    """A CoOp learner from "a photo of a", trained on ``scenes`` (None: left untrained, i.e. zero-shot CLIP);
    ``history``, when given, receives the training's per-epoch records (:func:`dapt_core.train.train_prompts`)."""
    from dapt_core.constants import ZERO_SHOT_CONTEXT
    from dapt_core.learners import build_learner
    from dapt_core.objective import DaptConfig
    from dapt_core.train import TrainConfig, seed_everything, train_prompts

    seed_everything(seed)
    learner = build_learner(settings.learner, backbone, list(classnames), ctx_init=ZERO_SHOT_CONTEXT,
                            **settings.learner_options())
    if scenes is not None:
        cfg = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, seed=seed,
                          crop_min=settings.crop_min, selection="last")
        with tempfile.TemporaryDirectory(prefix="dapt-gates-") as tmp:
            samples = _write_samples(scenes, classnames, Path(tmp))
            records = train_prompts(learner, samples, cfg, DaptConfig(cue="off"), progress=False)
        if history is not None:
            history.extend(records)
    learner.eval()
    return learner


def _inputs(backbone, scenes: LabelledScenes, index: slice) -> torch.Tensor:
    return normalize_pixels(scenes.images[index], backbone.mean, backbone.std).to(backbone.device)


def accuracy(learner, scenes: LabelledScenes, batch_size: int = 256) -> float:
    """Percent of scenes the learner names correctly."""
    backbone = learner.backbone
    with backbone.lock:
        hits = classified_correctly(learner_classifier(learner), lambda index: _inputs(backbone, scenes, index),
                                    scenes.labels, batch_size)
    return 100.0 * float(hits.mean())


def attention_per_scene(learner, scenes: LabelledScenes, method: str = SETTINGS.cam_method,
                        batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per scene, the true class's map: its energy share on the object (NaN for an all-zero map) and whether
    its peak is on the object (pointing game); two (N,) float arrays."""
    from dapt_core.attention.cam import compute_cams
    from dapt_core.attention.metrics import object_share, pointing_game

    backbone = learner.backbone
    with backbone.lock, torch.no_grad():
        text = learner.text_features()
    shares, hits = [], []
    for start in range(0, len(scenes.labels), batch_size):
        index = slice(start, start + batch_size)
        cams = compute_cams(learner, _inputs(backbone, scenes, index), scenes.labels[index].tolist(), method=method,
                            text_features=text)
        for cam, mask in zip(cams, scenes.masks[index]):
            shares.append(object_share(cam, mask))
            hits.append(float(pointing_game(cam, mask)))
    return np.asarray(shares, dtype=np.float64), np.asarray(hits, dtype=np.float64)


def measure_headroom(backbone, task: DownstreamTask, seed: int, settings: GateSettings = SETTINGS) -> dict:
    """Zero-shot and trained CoOp accuracy (percent) on every test split of the task, and CoOp's training time."""
    zero = train_coop(backbone, task.classnames, None, seed, settings)
    started = time.perf_counter()
    coop = train_coop(backbone, task.classnames, task.train, seed, settings)
    out = {"train_seconds": round(time.perf_counter() - started, 1)}
    for split in TEST_SPLITS:
        out[f"zero_shot_{split}"] = round(accuracy(zero, task.tests[split]), 2)
        out[f"coop_{split}"] = round(accuracy(coop, task.tests[split]), 2)
    return out


def measure_attention(backbone, world: SuiteWorld, task: DownstreamTask, seed: int,
                      settings: GateSettings = SETTINGS) -> dict:
    """The control prompt sets' attention on the task's conflicting scenes, and their paired difference.

    ``settings.control_repeats`` pairs are drawn and trained (:func:`control_scenes` ``repeat``, :func:`control_seed`);
    each scene's energy share and pointing hit are averaged over the pairs of a kind, then the difference balanced -
    background of ``settings.attention_metric`` gives ``difference`` and its paired 95% ``difference_ci``.
    """
    if tuple(world.classnames) != tuple(task.classnames):
        raise ValueError("the world's classes and the task's differ; the controls must label scenes as the task does")
    conflicting = task.tests["test_conflicting"]
    runs: dict[str, list] = {kind: [] for kind in CONTROL_KINDS}
    for repeat in range(settings.control_repeats):
        for kind in CONTROL_KINDS:
            scenes = control_scenes(world, kind, settings.shots, seed, backbone.image_size, repeat)
            learner = train_coop(backbone, world.classnames, scenes, control_seed(seed, repeat), settings)
            runs[kind].append((*attention_per_scene(learner, conflicting, settings.cam_method),
                               accuracy(learner, conflicting)))
    out: dict = {"metric": settings.attention_metric, "cam_method": settings.cam_method,
                 "control_repeats": settings.control_repeats}
    per_scene = {}
    for kind, found in runs.items():
        shares, hits = (np.nanmean(np.stack([f[i] for f in found]), axis=0) for i in (0, 1))
        per_scene[kind] = {"energy_share": shares, "pointing": hits}
        out[f"{kind}_energy_share"] = round(float(np.nanmean(shares)), 4)
        out[f"{kind}_pointing"] = round(float(hits.mean()), 4)
        out[f"{kind}_accuracy_conflicting"] = round(float(np.mean([f[2] for f in found])), 2)
    for metric in ATTENTION_METRICS:
        mean, low, high = paired_interval(per_scene["balanced"][metric] - per_scene["background"][metric])
        out[f"{metric}_difference"], out[f"{metric}_difference_ci"] = round(mean, 4), [round(low, 4), round(high, 4)]
    out.update(difference=out[f"{settings.attention_metric}_difference"],
               difference_ci=out[f"{settings.attention_metric}_difference_ci"],
               area_share=round(float(conflicting.masks.mean()), 4), n=int(len(conflicting.labels)))
    return out


def verdicts(measured: dict, thresholds: GateThresholds = THRESHOLDS) -> list[dict]:
    """Each gate's measurement, threshold and pass/fail from the measurements.

    Args:
        measured: ``{"suite": bias-suite dict, "headroom": measure_headroom's dict, "attention":
            measure_attention's dict}``; a part that is missing gives its gates ``passed: None`` (not measured).
        thresholds: the gates' thresholds.

    Returns:
        One dict per gate: ``gate``, ``measured``, ``threshold`` (text), ``passed`` (bool or None).
    """
    t, split = thresholds, thresholds.headroom_split
    suite, head, att = measured.get("suite"), measured.get("headroom"), measured.get("attention")
    zero = head[f"zero_shot_{split}"] if head else None
    gain = round(head[f"coop_{split}"] - zero, 2) if head else None
    rows = [
        ("bg_gap", suite["bg_gap"] if suite else None, f">= {t.bg_gap_min:g} points",
         lambda v: v >= t.bg_gap_min),
        ("only_bg", suite["only_bg_over_chance"] if suite else None, f">= {t.only_bg_over_chance_min:g} x chance",
         lambda v: v >= t.only_bg_over_chance_min),
        ("headroom_zero_shot", zero, f"<= {t.headroom_zero_shot_max:g}% on {split}",
         lambda v: v <= t.headroom_zero_shot_max),
        ("headroom_coop_gain", gain, f">= {t.headroom_coop_gain_min:g} points on {split}",
         lambda v: v >= t.headroom_coop_gain_min),
        ("attention_separation", att["difference_ci"] if att else None,
         f"95% interval of balanced - background {_metric_words(att)} above {t.attention_separation_min:g}",
         lambda v: v[0] > t.attention_separation_min),
    ]
    return [{"gate": gate, "measured": value, "threshold": rule,
             "passed": None if value is None else bool(test(value))}
            for gate, value, rule, test in rows]


def _metric_words(att: dict | None) -> str:
    """How the threshold names the attention metric: v1's words for its energy share of Grad-CAM; the method too
    when another map is registered, and "over N control pairs" when there are several."""
    att = att or {}
    words = ATTENTION_METRIC_WORDS[att.get("metric", "energy_share")]
    if att.get("cam_method", "gradcam") != "gradcam":
        words = f"{att['cam_method']} {words}"
    repeats = att.get("control_repeats", 1)
    return words if repeats == 1 else f"{words} over {repeats} control pairs"


def overall(rows: list[dict]) -> bool | None:
    """True when every gate passed, False when one failed, None when one was not measured (and none failed)."""
    values = [r["passed"] for r in rows]
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def settings_dict(settings: GateSettings, thresholds: GateThresholds) -> dict:
    """The settings and thresholds of a run, whether they are a registered set, and which (``registration``)."""
    name = registration_of(settings, thresholds)
    return {"settings": asdict(settings), "thresholds": asdict(thresholds), "registered": name is not None,
            "registration": name}


def run_gates(backbone, world: str, seed: int, *, settings: GateSettings = SETTINGS,
              thresholds: GateThresholds = THRESHOLDS, n_classes: int | None = None, suite: dict | None = None) -> dict:
    """Measure every gate on one backbone and world with one seed (scenes, task, training all from it).

    ``suite``: the zero-shot bias suite of this very backbone, world, seed and ``settings.suite_per_class``, when
    the caller has run it already (``bench gates`` writes its report too); None runs it here.

    Returns:
        A JSON-able dict: the run's facts and settings, ``suite``, ``headroom``, ``attention``, ``gates``
        (:func:`verdicts`) and ``passed`` (:func:`overall`).
    """
    from dapt_core.experiments.bias_suite import run_suite
    from dapt_core.experiments.bias_worlds import build, build_task

    started = time.perf_counter()
    suite_world = build(world, seed, n_classes)
    if suite is not None:
        given = (suite["backbone"], suite["world"], suite["seed"], suite["per_class"], suite["classifier"][:9])
        if given != (backbone.name, suite_world.name, seed, settings.suite_per_class, "zero-shot"):
            raise ValueError(f"suite: measured on {given}, not on this backbone, world, seed and per-class count")
    measured = {"suite": suite or run_suite(backbone, suite_world, settings.suite_per_class, seed)}
    log.info("bias suite: BG-Gap %.2f, Only-BG %.2f%%", measured["suite"]["bg_gap"], measured["suite"]["only_bg"])
    task = build_task(world, seed, settings.shots, settings.n_test, backbone.image_size, n_classes, settings.task)
    measured["headroom"] = measure_headroom(backbone, task, seed, settings)
    log.info("headroom: %s", measured["headroom"])
    measured["attention"] = measure_attention(backbone, suite_world, task, seed, settings)
    log.info("attention: %s", measured["attention"])
    rows = verdicts(measured, thresholds)
    facts = settings_dict(settings, thresholds)
    if n_classes is not None:  # a verdict covers every class of the world
        facts.update(registered=False, registration=None)
    return {"backbone": backbone.name, "pretrained": backbone.pretrained, **_weights(backbone), "world": world,
            "seed": seed, "n_classes": len(suite_world.classnames), "task": task.description, **facts, **measured,
            "gates": rows, "passed": overall(rows), "seconds": round(time.perf_counter() - started, 1)}


def _weights(backbone) -> dict:
    """The weight file the run measured and its sha256 (None for random weights)."""
    import hashlib

    path = backbone.weights_path
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    return {"weights": str(path) if path else None, "weights_sha256": digest}
