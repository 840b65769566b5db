"""The background-shift benchmark: prompt learners with and without DAPT on a task with a background shortcut.

Two worlds (:data:`WORLDS`). ``synth``: the flat-shapes world's spurious task (`dapt_core.world.make_task`), where
every object class is trained on its own background only, so a learner can score perfectly by reading the
background. ``web``: the web world's few-shot task (:func:`dapt_core.experiments.bias_worlds.web_task`, backbone
``synth-web``), where each class sits on its two home backgrounds most of the time; its ``rehomed`` variant takes
those homes from another class's web homes. Each method is tested on three splits: ``aligned`` (the training
homes), ``balanced`` (backgrounds independent of the object) and ``conflicting`` (every object on a background
that is not its home). On the conflicting images it also measures where the model looks, for each configured
attribution map: the share of CAM energy on the true object mask and the pointing-game hit rate, both from the CAM
of the TRUE class, scene by scene. And it measures the tuned model's BG-Gap in the world's bias suite
(:func:`dapt_core.experiments.bias_suite.run_suite`). The seven methods are in :data:`METHODS`; ``zero-shot`` is
CoOp with its context initialised from "a photo of a" and never trained, which is zero-shot CLIP exactly.

The task of either world is exported to a temporary image folder and read back through the same loaders a user's
data takes (:mod:`~dapt_core.experiments.background_shift_tasks`).

This module holds the configuration and the runs; the attention and group measurements are in
:mod:`~dapt_core.experiments.background_shift_metrics`, the means over seeds, the summary line and the merging
of per-seed runs in :mod:`~dapt_core.experiments.background_shift_results`, and what is written to disk in
:mod:`~dapt_core.experiments.background_shift_report`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from dapt_core.attention.descriptions import METHOD_DESCRIPTIONS
from dapt_core.backbones import Backbone, load_backbone
from dapt_core.constants import ZERO_SHOT_CONTEXT
from dapt_core.experiments import bias_worlds
from dapt_core.experiments.background_shift_metrics import (
    BiasSuite,
    attention_on_object,
    background_pseudo_label_accuracy,
    mean_attention,
    object_attention_per_scene,
    shortcut_rate,
    worst_group_accuracy,
)
from dapt_core.experiments.background_shift_results import aggregate
from dapt_core.experiments.background_shift_tasks import TaskData, from_spurious, load_task
from dapt_core.experiments.bias_worlds import TEST_SPLITS, DownstreamTask
from dapt_core.learners import build_learner
from dapt_core.learners.base import PromptLearner
from dapt_core.metric_units import MAP_SEPARATOR, map_metric_key
from dapt_core.objective import DaptConfig, scaled_switch_epoch
from dapt_core.train import TrainConfig, predict, seed_everything, train_prompts
from dapt_core.world.scenes import DEFAULT_SCENE_CONFIG
from dapt_core.world.shapes import OBJECT_CLASSES, PoseConfig
from dapt_core.world.task import SpuriousTask, make_task
from dapt_core.world.textures import BACKGROUND_CLASSES
from dapt_core.world.web import DEFAULT_WEB_CONFIG
from dapt_core.world.web_shapes import WEB_OBJECT_CLASSES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    name: str  # key in results and on the command line
    learner: str  # "coop" or "maple"
    cue: str  # DAPT cue: "off", "mask" (ground-truth masks) or "gradcam" (the model's own CAM)
    trained: bool = True  # False: the learner is evaluated as initialised (zero-shot)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("zero-shot", "coop", "off", trained=False),
    Method("coop", "coop", "off"),
    Method("coop+dapt-mask", "coop", "mask"),
    Method("coop+dapt-gradcam", "coop", "gradcam"),
    Method("maple", "maple", "off"),
    Method("maple+dapt-mask", "maple", "mask"),
    Method("maple+dapt-gradcam", "maple", "gradcam"),
)}


# Largest object radius a task can ask for: the disk and the world's border margin must fit in the image.
MAX_OBJECT_RADIUS = 0.5 - PoseConfig().margin
WORLDS = bias_worlds.WORLDS
WORLD_BACKBONES = {"synth": "synth-mini", "web": "synth-web"}  # the backbone pre-trained on each world
WORLD_CLASSES = {"synth": OBJECT_CLASSES, "web": WEB_OBJECT_CLASSES}
TASK_IMAGE_SIZE = {"synth": 64, "web": DEFAULT_WEB_CONFIG.size}  # the side a task is rendered at (loaders resize)


@dataclass
class BenchConfig:
    backbone: str | None = None  # backbone registry name; None = the world's own (WORLD_BACKBONES)
    weights: str | None = None  # explicit backbone weight file; None = the registry's
    world: str = "synth"  # WORLDS: "synth" (flat shapes, the spurious task) or "web" (synth-web's world)
    task_variant: str = "home"  # the web task's variant (bias_worlds.TASK_VARIANTS); the synth world has only "home"
    shots: tuple[int, ...] = (1, 4, 16)  # training images per class; one task per (shots, seed)
    seeds: tuple[int, ...] = (1, 2, 3)  # each seeds the task (pairing, images) and the training
    epochs: int = 10  # official few-shot epochs
    batch_size: int = 4  # official batch size
    lr: float = 0.0035  # official SGD learning rate
    schedule: str = "official"  # DAPT loss schedule: "official" (triplet, then alignment) or "joint"
    switch_epoch: int | None = None  # official schedule's switch; None = round(0.7 * epochs), 7 at 10 epochs
    # ablations of DAPT's objective; official: the background view not detached, DaptConfig's weights
    detach_background_view: bool = False
    dapt_weights: tuple[float, float, float] | None = None  # (triplet, foreground, background); None = official
    n_test: int = 10  # images per class in each test split
    n_classes: int | None = None  # use the first n object classes (synth: and n backgrounds); None = all
    coop_ctx_init: str = ZERO_SHOT_CONTEXT  # CoOp's context init (4 tokens); the zero-shot method uses it too
    coop_class_specific: bool = False  # CoOp with one context per class (CSC), as the gates' CoOp (registration v3)
    # Attribution maps of the attention metrics (keys of dapt_core.attention.cam.CAM_METHODS); the first one's
    # results keep the plain keys (object_attention, pointing_game), the others' are suffixed "@<method>".
    cam_methods: tuple[str, ...] = ("gradcam",)
    suite_per_class: int = 20  # base scenes per class of the bias suite's BG-Gap of every tuned model; 0 = none
    methods: tuple[str, ...] = tuple(METHODS)  # which of METHODS to run
    # Smallest area share of the random-resized training crop. CoOp's 0.08 suits 224 px photos of a CLIP
    # pre-trained on crops; synth-mini never saw a crop, and on its 64 px scenes crops (with their 3:4-4:3
    # aspect jitter) cut or stretch the shape. Quick runs, conflicting accuracy: synth-v2, CoOp (zero-shot
    # 77.3 %) 43.6 % with 0.08, 44.5 % with 0.5, 77.3 % with 1.0; synth-v3, MaPLe 88.2 % with 0.08 and 100 %
    # with 1.0 (docs/results/synth_bench_quick*.md). 1.0 = no crop, flips only.
    crop_min: float = 1.0
    # Object radius range, as fractions of the image side, for every split of the task; None = the world's own
    # (PoseConfig: 0.25-0.42, the sizes synth-mini was pre-trained on). Smaller objects make the object the
    # harder cue to read and the background the easier one. Synth world only.
    object_radius: tuple[float, float] | None = None
    device: str | None = None  # torch device; None = the GPU when there is one

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; choose from {', '.join(METHODS)}")
        if not self.shots or min(self.shots) < 1:
            raise ValueError(f"shots: need at least one count, each >= 1, got {self.shots}")
        if not self.seeds:
            raise ValueError("seeds: need at least one seed")
        if self.epochs < 1:
            raise ValueError(f"epochs: must be >= 1, got {self.epochs}")
        if not 0.0 < self.crop_min <= 1.0:
            raise ValueError(f"crop_min: the smallest crop area share must lie in (0, 1], got {self.crop_min}")
        self._check_world()
        self._check_attention()
        if self.object_radius is not None:
            self.object_radius = radius = tuple(float(r) for r in self.object_radius)
            if len(radius) != 2 or not 0.0 < radius[0] <= radius[1] <= MAX_OBJECT_RADIUS:
                raise ValueError(f"object_radius: expected 0 < min <= max <= {MAX_OBJECT_RADIUS} (fractions of the "
                                 f"image side), got {self.object_radius}")
        self.shots, self.seeds, self.methods = tuple(self.shots), tuple(self.seeds), tuple(self.methods)
        # the training and DAPT settings are checked by their own config classes, before any task is built
        self.train_config(self.seeds[0])
        self.dapt("mask")

    def _check_world(self) -> None:
        if self.world not in WORLDS:
            raise ValueError(f"world: unknown {self.world!r}; choose from {', '.join(WORLDS)}")
        if self.task_variant not in bias_worlds.TASK_VARIANTS:
            raise ValueError(f"task_variant: unknown {self.task_variant!r}; choose from "
                             f"{', '.join(bias_worlds.TASK_VARIANTS)}")
        if self.world == "synth" and self.task_variant != "home":
            raise ValueError(f"task_variant: the synth world has one task (home); {self.task_variant!r} is the web "
                             "world's")
        if self.world == "web" and self.object_radius is not None:
            raise ValueError("object_radius: a synth-world setting; the web world draws its own object sizes")
        classes = WORLD_CLASSES[self.world]
        if self.n_classes is not None and not 2 <= self.n_classes <= len(classes):
            raise ValueError(f"n_classes: must lie in [2, {len(classes)}] for the {self.world} world, "
                             f"got {self.n_classes}")
        if self.task_variant == "rehomed":
            for seed in self.seeds:  # cheap, and a class count the permutation cannot serve fails here, not mid-run
                bias_worlds.rehomed_homes(seed, classes[:self.n_classes] if self.n_classes else classes)
        if self.backbone is None:
            self.backbone = WORLD_BACKBONES[self.world]

    def _check_attention(self) -> None:
        self.cam_methods = tuple(self.cam_methods)
        unknown = [m for m in self.cam_methods if m not in METHOD_DESCRIPTIONS]
        if not self.cam_methods or unknown or len(set(self.cam_methods)) < len(self.cam_methods):
            raise ValueError(f"cam_methods: need one or more distinct methods from {', '.join(METHOD_DESCRIPTIONS)}, "
                             f"got {list(self.cam_methods)}")
        if isinstance(self.suite_per_class, bool) or not isinstance(self.suite_per_class, int) \
                or self.suite_per_class < 0:
            raise ValueError(f"suite_per_class: expected an integer >= 0 (0 = no bias suite), got "
                             f"{self.suite_per_class!r}")

    @property
    def effective_switch_epoch(self) -> int:
        if self.switch_epoch is not None:
            return self.switch_epoch
        return scaled_switch_epoch(self.epochs)  # the official 7-of-10 switch kept in proportion

    def dapt(self, cue: str) -> DaptConfig:
        weights = dict(zip(("triplet_weight", "foreground_weight", "background_weight"), self.dapt_weights or ()))
        return DaptConfig(cue=cue, schedule=self.schedule, switch_epoch=self.effective_switch_epoch,
                          detach_background_view=self.detach_background_view, **weights)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=seed,
                           crop_min=self.crop_min)

    def learner_options(self, method: Method) -> dict:
        if method.learner != "coop":
            return {}
        return {"ctx_init": self.coop_ctx_init, **({"class_specific": True} if self.coop_class_specific else {})}

    def attention_key(self, metric: str, cam_method: str) -> str:
        """The record key of an attention metric of one map (:func:`~dapt_core.metric_units.map_metric_key`)."""
        return map_metric_key(self.cam_methods, metric, cam_method)


QUICK_SHOTS = (4,)
FULL_SHOTS = (1, 4, 16)
FULL_N_SEEDS = 3


def quick_config(seed: int = 1, **overrides) -> BenchConfig:
    """One shot count (4) and one seed: the ``--quick`` run."""
    return BenchConfig(**{"shots": QUICK_SHOTS, "seeds": (seed,), **overrides})


def full_config(seed: int = 1, n_seeds: int = FULL_N_SEEDS, **overrides) -> BenchConfig:
    """1, 4 and 16 shots over ``n_seeds`` consecutive seeds from ``seed``."""
    return BenchConfig(**{"shots": FULL_SHOTS, "seeds": tuple(range(seed, seed + n_seeds)), **overrides})


def build_task(cfg: BenchConfig, seed: int, shots: int) -> SpuriousTask:
    """The synth world's spurious task of one (seed, shots): all 11 classes, or the first `n_classes` with as many
    backgrounds, so that every background in the conflicting split is another class's training background."""
    objects, backgrounds = task_names(cfg)
    config = DEFAULT_SCENE_CONFIG
    if cfg.object_radius is not None:
        low, high = cfg.object_radius
        config = replace(config, pose=replace(config.pose, min_radius=low, max_radius=high))
    return make_task(seed, shots, n_test=cfg.n_test, objects=objects, backgrounds=backgrounds, config=config)


def task_names(cfg: BenchConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The object and background classes of the configured synth tasks."""
    n = cfg.n_classes or len(OBJECT_CLASSES)
    return OBJECT_CLASSES[:n], BACKGROUND_CLASSES[:n] if cfg.n_classes else BACKGROUND_CLASSES


def bench_task(cfg: BenchConfig, seed: int, shots: int) -> DownstreamTask:
    """The task of one (seed, shots) in the configured world: the synth world's :func:`build_task`, or the web
    world's task of :func:`dapt_core.experiments.bias_worlds.build_task` in ``cfg.task_variant``."""
    if cfg.world == "synth":
        return from_spurious(build_task(cfg, seed, shots),
                             f"dapt_core.world.make_task(seed={seed}, shots={shots}, n_test={cfg.n_test}): every "
                             "training object on its paired background")
    return bias_worlds.build_task(cfg.world, seed, shots, cfg.n_test, TASK_IMAGE_SIZE[cfg.world], cfg.n_classes,
                                  cfg.task_variant)


def train_method(method: Method, backbone: Backbone, data: TaskData, cfg: BenchConfig,
                 seed: int) -> tuple[PromptLearner, list[dict]]:
    """Build the method's learner (seeded) and, unless it is zero-shot, train it on the task's training split."""
    seed_everything(seed)
    learner = build_learner(method.learner, backbone, list(data.task.classnames), **cfg.learner_options(method))
    if not method.trained:
        learner.eval()
        return learner, []
    masks = data.masks["train"] if method.cue == "mask" else None
    history = train_prompts(learner, data.samples["train"], cfg.train_config(seed), cfg.dapt(method.cue),
                            masks=masks, progress=False)
    return learner, history


def evaluate_method(learner: PromptLearner, data: TaskData, cfg: BenchConfig) -> tuple[dict[str, float], dict]:
    """Accuracies (percent) on the three test splits, the worst group's accuracy and the shortcut rate (percent),
    attention on the object for each of ``cfg.cam_methods`` and the cue diagnostics.

    Returns:
        ``(metrics, per_scene)``: the metrics, floats; per conflicting scene (lists in the split's order), its
        ``label``, ``background``, ``prediction`` and each attention metric under its record key.
    """
    result: dict[str, float] = {}
    predictions = {}
    for split in TEST_SPLITS:
        preds, labels = predict(learner, data.samples[split])
        predictions[split] = (preds, labels)
        result[split.replace("test_", "") + "_acc"] = round(100.0 * float(np.mean(preds == labels)), 4)
    conflicting = data.scenes["test_conflicting"]
    result["shortcut_rate"] = round(100.0 * shortcut_rate(predictions["test_conflicting"][0], conflicting.backgrounds,
                                                          data.task.classnames, data.task.homes), 4)
    per_scene: dict = {"label": conflicting.labels.tolist(), "background": list(conflicting.backgrounds),
                       "prediction": predictions["test_conflicting"][0].tolist()}
    for cam_method in cfg.cam_methods:
        scenes = object_attention_per_scene(learner, data.samples["test_conflicting"], data.masks["test_conflicting"],
                                            method=cam_method)
        result.update({cfg.attention_key(k, cam_method): v for k, v in mean_attention(scenes).items()})
        per_scene.update({cfg.attention_key(k, cam_method): [round(float(v), 6) for v in values]
                          for k, values in scenes.items()})
    dapt = cfg.dapt("gradcam")
    cue = attention_on_object(learner, data.samples["train"], data.masks["train"], method="gradcam",
                              cue_threshold=dapt.cam_threshold)
    result["train_cue_iou"] = cue["cue_iou"]
    result["bg_pseudo_label_acc"] = background_pseudo_label_accuracy(
        learner, data.samples["train"], data.masks["train"], data.scenes["train"].backgrounds, dapt)
    result["worst_group_acc"] = round(worst_group_accuracy(
        {split: predictions[split] for split in ("test_aligned", "test_conflicting")}), 4)
    return result, per_scene


def bias_suite(cfg: BenchConfig, backbone: Backbone, seed: int) -> BiasSuite | None:
    """The world's bias suite for the tasks of `seed` (the synth world's homes: that seed's pairing); None when
    ``cfg.suite_per_class`` is 0."""
    if cfg.suite_per_class == 0:
        return None
    return BiasSuite.build(bias_worlds.build(cfg.world, seed, cfg.n_classes), cfg.suite_per_class, seed,
                           backbone.image_size)


Reporter = Callable[[dict], None]
# called with (method, learner, metrics, history, task data) after each method of a task, e.g. to save it
TrainedHook = Callable[[Method, PromptLearner, dict, list[dict], TaskData], None]


def run_task_methods(backbone: Backbone, cfg: BenchConfig, seed: int, shots: int, *,
                     on_trained: TrainedHook | None = None, report: Reporter | None = None,
                     suite: BiasSuite | None = None) -> list[dict]:
    """Train and evaluate every configured method on the task of one (seed, shots).

    Args:
        on_trained: called after each method, e.g. to save it.
        report: called with each finished run record (progress output).
        suite: the seed's bias suite (:func:`bias_suite`); None builds it here when the config asks for one.

    Returns:
        One record per method: shots, seed, method, seconds, the metrics of `evaluate_method`, ``bg_gap`` with a
        bias suite, and ``per_scene`` (the conflicting scenes' own values).
    """
    suite = suite or bias_suite(cfg, backbone, seed)
    records = []
    with tempfile.TemporaryDirectory(prefix="dapt-synth-bench-") as tmp:
        data = load_task(bench_task(cfg, seed, shots), Path(tmp) / "task")
        # a CAM spread evenly over the image puts this share on the object: the chance level of both
        # attention metrics
        area = float(np.mean([mask.mean() for mask in data.scenes["test_conflicting"].masks]))
        for name in cfg.methods:
            method = METHODS[name]
            started = time.perf_counter()
            learner, history = train_method(method, backbone, data, cfg, seed)
            trained = time.perf_counter() - started
            metrics, per_scene = evaluate_method(learner, data, cfg)
            if suite is not None:
                metrics["bg_gap"] = suite.bg_gap(learner)
            record = {"shots": shots, "seed": seed, "method": name, "train_seconds": round(trained, 2),
                      "seconds": round(time.perf_counter() - started, 2), **metrics, "object_area": area,
                      "history": [{k: round(v, 6) for k, v in epoch.items() if k != "seconds"}
                                  for epoch in history], "per_scene": per_scene}
            if on_trained is not None:
                on_trained(method, learner, metrics, history, data)
            if report is not None:
                report(record)
            records.append(record)
    return records


def run_bench(cfg: BenchConfig, *, backbone: Backbone | None = None, report: Reporter | None = None,
              on_task_done: Reporter | None = None,
              on_trained: Mapping[tuple[int, int], TrainedHook] | None = None) -> dict:
    """Run every (shots, seed, method) of `cfg`: seed by seed, each over all shot counts, so a stopped run
    has every shot count at its first seeds.

    Args:
        report: called with each finished run record.
        on_task_done: called with the result so far after every (shots, seed) task, e.g. to write a partial
            report that a long run leaves behind even when it is stopped.
        on_trained: (seed, shots) -> the hook called after each method of that task (e.g. saving its prompts).

    Returns:
        ``{"config", "settings", "runs", "summary", "tasks_done", "tasks_total", "seconds"}``; ``summary`` is
        :func:`~dapt_core.experiments.background_shift_results.aggregate`'s output.
    """
    hooks = dict(on_trained or {})
    missing = [key for key in hooks if key[0] not in cfg.seeds or key[1] not in cfg.shots]
    if missing:
        raise ValueError(f"on_trained: no (seed, shots) task {missing} in this run (seeds {list(cfg.seeds)}, "
                         f"shots {list(cfg.shots)})")
    started = time.perf_counter()
    backbone = backbone or load_backbone(cfg.backbone, weights_path=cfg.weights, device=cfg.device)
    records: list[dict] = []
    result: dict = {"config": asdict(cfg), "settings": settings(cfg, backbone),
                    "tasks_total": len(cfg.shots) * len(cfg.seeds)}
    for seed in cfg.seeds:
        suite = bias_suite(cfg, backbone, seed)
        for shots in cfg.shots:
            records += run_task_methods(backbone, cfg, seed, shots, report=report, suite=suite,
                                        on_trained=hooks.get((seed, shots)))
            result.update(runs=records, summary=aggregate(records), tasks_done=result.get("tasks_done", 0) + 1,
                          seconds=round(time.perf_counter() - started, 1))
            if on_task_done is not None:
                on_task_done(result)
    return result


def settings(cfg: BenchConfig, backbone: Backbone) -> dict:
    """Every setting a run used, for the report: training, DAPT per cue, learner options, backbone, task, suite."""
    example_seed = cfg.seeds[0]
    task = {"n_classes": cfg.n_classes or len(WORLD_CLASSES[cfg.world]), "n_test_per_class": cfg.n_test}
    if cfg.world != "synth":
        task.update(world=cfg.world, variant=cfg.task_variant)
    attention = {"cam": cfg.cam_methods[0], "target": "true class", "split": "test_conflicting"}
    if len(cfg.cam_methods) > 1:
        attention["more_cams"] = {m: f"<metric>{MAP_SEPARATOR}{m}" for m in cfg.cam_methods[1:]}
    out = {
        "backbone": backbone.describe(),
        "train": asdict(cfg.train_config(example_seed)) | {"seed": "= the task seed"},
        "dapt": {cue: asdict(cfg.dapt(cue)) for cue in ("mask", "gradcam")},
        "learners": {name: {"learner": m.learner, "options": cfg.learner_options(m), "trained": m.trained}
                     for name, m in METHODS.items() if name in cfg.methods},
        "task": task,
        "attention": attention,
    }
    if cfg.suite_per_class:
        homes = (bias_worlds.build(cfg.world, example_seed, cfg.n_classes).same_rule if cfg.world != "synth" else
                 "a class's home background is its training background in the spurious task of the task seed")
        out["bias_suite"] = {"per_class": cfg.suite_per_class, "seed": "= the task seed", "homes": homes,
                             "metric": "bg_gap = Mixed-Same - Mixed-Rand accuracy of the tuned model, points"}
    return out
