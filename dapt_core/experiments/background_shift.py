"""The background-shift benchmark: prompt learners with and without DAPT on the spurious synthetic task.

Every object class is trained on its own background only (`dapt_core.world.make_task`), so a learner can
score perfectly by reading the background. Each method is then tested on three splits: ``aligned`` (the
pairing holds), ``balanced`` (backgrounds independent of the object) and ``conflicting`` (every object on
a background other than its own). On the conflicting images it also measures where the model looks: the
share of Grad-CAM energy on the true object mask and the pointing-game hit rate, both from the CAM of the
TRUE class. The seven methods are in :data:`METHODS`; ``zero-shot`` is CoOp with its context initialised
from "a photo of a" and never trained, which is zero-shot CLIP exactly.

The task is exported to a temporary image folder and read back through the same loaders a user's data
takes (`load_imagefolder`, `MaskFolder`); labels are mapped by class NAME, since `load_imagefolder`
numbers folders in sorted order.

This module holds the configuration, the tasks and the runs; the attention measurements are in
:mod:`~dapt_core.experiments.background_shift_metrics`, the means over seeds, the summary line and the merging
of per-seed runs in :mod:`~dapt_core.experiments.background_shift_results`, and what is written to disk in
:mod:`~dapt_core.experiments.background_shift_report`.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from dapt_core.backbones import Backbone, load_backbone
from dapt_core.constants import ZERO_SHOT_CONTEXT
from dapt_core.data.folders import load_imagefolder
from dapt_core.data.masks import MaskFolder
from dapt_core.data.records import Sample
from dapt_core.experiments.background_shift_metrics import attention_on_object, background_pseudo_label_accuracy
from dapt_core.experiments.background_shift_results import aggregate
from dapt_core.learners import build_learner
from dapt_core.learners.base import PromptLearner
from dapt_core.objective import DaptConfig, scaled_switch_epoch
from dapt_core.train import TrainConfig, predict, seed_everything, train_prompts
from dapt_core.world.export import TASK_SPLITS, default_mask_root, export_task
from dapt_core.world.scenes import DEFAULT_SCENE_CONFIG, Scene
from dapt_core.world.shapes import OBJECT_CLASSES, PoseConfig
from dapt_core.world.task import SpuriousTask, make_task
from dapt_core.world.textures import BACKGROUND_CLASSES

log = logging.getLogger(__name__)

TEST_SPLITS = ("test_aligned", "test_balanced", "test_conflicting")


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


@dataclass
class BenchConfig:
    backbone: str = "synth-mini"  # backbone registry name
    weights: str | None = None  # explicit backbone weight file; None = the registry's
    shots: tuple[int, ...] = (1, 4, 16)  # training images per class; one task per (shots, seed)
    seeds: tuple[int, ...] = (1, 2, 3)  # each seeds the task (pairing, images) and the training
    epochs: int = 10  # official few-shot epochs
    batch_size: int = 4  # official batch size
    lr: float = 0.0035  # official SGD learning rate
    schedule: str = "official"  # DAPT loss schedule: "official" (triplet, then alignment) or "joint"
    switch_epoch: int | None = None  # official schedule's switch; None = round(0.7 * epochs), 7 at 10 epochs
    n_test: int = 10  # images per class in each test split
    n_classes: int | None = None  # use the first n object classes (and n backgrounds); None = all 11
    coop_ctx_init: str = ZERO_SHOT_CONTEXT  # CoOp's context init (4 tokens); the zero-shot method uses it too
    cam_method: str = "gradcam"  # CAM for the attention metrics (a key of dapt_core.attention.cam.CAM_METHODS)
    methods: tuple[str, ...] = tuple(METHODS)  # which of METHODS to run
    # Smallest area share of the random-resized training crop. CoOp's 0.08 suits 224 px photos of a CLIP
    # pre-trained on crops; synth-mini never saw a crop, and on its 64 px scenes crops (with their 3:4-4:3
    # aspect jitter) cut or stretch the shape. Quick runs, conflicting accuracy: synth-v2, CoOp (zero-shot
    # 77.3 %) 43.6 % with 0.08, 44.5 % with 0.5, 77.3 % with 1.0; synth-v3, MaPLe 88.2 % with 0.08 and 100 %
    # with 1.0 (docs/results/synth_bench_quick*.md). 1.0 = no crop, flips only.
    crop_min: float = 1.0
    # Object radius range, as fractions of the image side, for every split of the task; None = the world's own
    # (PoseConfig: 0.25-0.42, the sizes synth-mini was pre-trained on). Smaller objects make the object the
    # harder cue to read and the background the easier one.
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
        if self.object_radius is not None:
            self.object_radius = radius = tuple(float(r) for r in self.object_radius)
            if len(radius) != 2 or not 0.0 < radius[0] <= radius[1] <= MAX_OBJECT_RADIUS:
                raise ValueError(f"object_radius: expected 0 < min <= max <= {MAX_OBJECT_RADIUS} (fractions of the "
                                 f"image side), got {self.object_radius}")
        if self.n_classes is not None and not 2 <= self.n_classes <= len(OBJECT_CLASSES):
            raise ValueError(f"n_classes: must lie in [2, {len(OBJECT_CLASSES)}], got {self.n_classes}")
        self.shots, self.seeds, self.methods = tuple(self.shots), tuple(self.seeds), tuple(self.methods)
        # the training and DAPT settings are checked by their own config classes, before any task is built
        self.train_config(self.seeds[0])
        self.dapt("mask")

    @property
    def effective_switch_epoch(self) -> int:
        if self.switch_epoch is not None:
            return self.switch_epoch
        return scaled_switch_epoch(self.epochs)  # the official 7-of-10 switch kept in proportion

    def dapt(self, cue: str) -> DaptConfig:
        return DaptConfig(cue=cue, schedule=self.schedule, switch_epoch=self.effective_switch_epoch)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=seed,
                           crop_min=self.crop_min)

    def learner_options(self, method: Method) -> dict:
        return {"ctx_init": self.coop_ctx_init} if method.learner == "coop" else {}


QUICK_SHOTS = (4,)
FULL_SHOTS = (1, 4, 16)
FULL_N_SEEDS = 3


def quick_config(seed: int = 1, **overrides) -> BenchConfig:
    """One shot count (4) and one seed: the ``--quick`` run."""
    return BenchConfig(**{"shots": QUICK_SHOTS, "seeds": (seed,), **overrides})


def full_config(seed: int = 1, n_seeds: int = FULL_N_SEEDS, **overrides) -> BenchConfig:
    """1, 4 and 16 shots over ``n_seeds`` consecutive seeds from ``seed``."""
    return BenchConfig(**{"shots": FULL_SHOTS, "seeds": tuple(range(seed, seed + n_seeds)), **overrides})


@dataclass
class TaskData:
    """An exported task as the loaders see it; samples of a split are in the task's scene order."""

    task: SpuriousTask
    samples: dict[str, list[Sample]]  # split -> samples, labels indexing task.classnames
    masks: dict[str, MaskFolder]  # split -> its ground-truth masks
    scenes: dict[str, list[Scene]] = field(repr=False)  # split -> scenes, parallel to samples


def build_task(cfg: BenchConfig, seed: int, shots: int) -> SpuriousTask:
    """The spurious task of one (seed, shots): all 11 classes, or the first `n_classes` with as many backgrounds,
    so that every background in the conflicting split is another class's training background."""
    objects, backgrounds = task_names(cfg)
    config = DEFAULT_SCENE_CONFIG
    if cfg.object_radius is not None:
        low, high = cfg.object_radius
        config = replace(config, pose=replace(config.pose, min_radius=low, max_radius=high))
    return make_task(seed, shots, n_test=cfg.n_test, objects=objects, backgrounds=backgrounds, config=config)


def task_names(cfg: BenchConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The object and background classes of the configured tasks."""
    n = cfg.n_classes or len(OBJECT_CLASSES)
    return OBJECT_CLASSES[:n], BACKGROUND_CLASSES[:n] if cfg.n_classes else BACKGROUND_CLASSES


def load_task(task: SpuriousTask, root: str | Path) -> TaskData:
    """Export `task` under `root` (which must be empty) and read every split back with the standard loaders."""
    root = Path(root)
    export_task(task, root)
    mask_root = default_mask_root(root)
    index = {name: i for i, name in enumerate(task.classnames)}
    samples, masks, scenes = {}, {}, {}
    for split in TASK_SPLITS:
        read = load_imagefolder(root / split, test_fraction=0.0)
        # file stems are scene indices; folder labels are in sorted-name order, the task's are not
        ordered = sorted(read.train, key=lambda s: int(s.path.stem))
        samples[split] = [replace(s, label=index[s.classname]) for s in ordered]
        masks[split] = MaskFolder(mask_root / split, root / split)
        scenes[split] = [getattr(task, split)[int(s.path.stem)] for s in ordered]
        if len(ordered) != len(scenes[split]):
            raise ValueError(f"{root / split}: read {len(ordered)} images, the task has {len(scenes[split])}")
    return TaskData(task, samples, masks, scenes)


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


def evaluate_method(learner: PromptLearner, data: TaskData, cfg: BenchConfig) -> dict[str, float]:
    """Accuracies (percent) on the three test splits, the shortcut rate, attention and cue diagnostics."""
    result: dict[str, float] = {}
    for split in TEST_SPLITS:
        preds, labels = predict(learner, data.samples[split])
        result[split.replace("test_", "") + "_acc"] = round(100.0 * float(np.mean(preds == labels)), 4)
        if split == "test_conflicting":
            result["shortcut_rate"] = round(100.0 * _shortcut_rate(preds, data, split), 4)
    dapt = cfg.dapt("gradcam")
    attention = attention_on_object(learner, data.samples["test_conflicting"], data.masks["test_conflicting"],
                                    method=cfg.cam_method)
    cue = attention_on_object(learner, data.samples["train"], data.masks["train"], method="gradcam",
                              cue_threshold=dapt.cam_threshold)
    result.update(attention)
    result["train_cue_iou"] = cue["cue_iou"]
    result["bg_pseudo_label_acc"] = background_pseudo_label_accuracy(
        learner, data.samples["train"], data.masks["train"], data.scenes["train"], dapt)
    return result


def _shortcut_rate(preds: np.ndarray, data: TaskData, split: str) -> float:
    """Share of images predicted as the class whose training background they show (NaN if none is paired)."""
    owner = {bg: data.task.classnames.index(obj) for obj, bg in data.task.pairing.items()}
    pairs = [(p, owner[s.background]) for p, s in zip(preds, data.scenes[split]) if s.background in owner]
    return float(np.mean([p == o for p, o in pairs])) if pairs else math.nan


Reporter = Callable[[dict], None]


def run_task_methods(backbone: Backbone, cfg: BenchConfig, seed: int, shots: int, *,
                     on_trained: Callable[[Method, PromptLearner, dict, list[dict]], None] | None = None,
                     report: Reporter | None = None) -> list[dict]:
    """Train and evaluate every configured method on the task of one (seed, shots).

    Args:
        on_trained: called with (method, learner, metrics, history) after each method, e.g. to save it.
        report: called with each finished run record (progress output).

    Returns:
        One record per method: shots, seed, method, seconds and the metrics of `evaluate_method`.
    """
    records = []
    with tempfile.TemporaryDirectory(prefix="dapt-synth-bench-") as tmp:
        data = load_task(build_task(cfg, seed, shots), Path(tmp) / "task")
        # a CAM spread evenly over the image puts this share on the object: the chance level of both
        # attention metrics
        area = float(np.mean([scene.mask.mean() for scene in data.scenes["test_conflicting"]]))
        for name in cfg.methods:
            method = METHODS[name]
            started = time.perf_counter()
            learner, history = train_method(method, backbone, data, cfg, seed)
            trained = time.perf_counter() - started
            metrics = evaluate_method(learner, data, cfg)
            record = {"shots": shots, "seed": seed, "method": name, "train_seconds": round(trained, 2),
                      "seconds": round(time.perf_counter() - started, 2), **metrics, "object_area": area,
                      "history": [{k: round(v, 6) for k, v in epoch.items() if k != "seconds"}
                                  for epoch in history]}
            if on_trained is not None:
                on_trained(method, learner, metrics, history)
            if report is not None:
                report(record)
            records.append(record)
    return records


def run_bench(cfg: BenchConfig, *, backbone: Backbone | None = None, report: Reporter | None = None,
              on_task_done: Reporter | None = None) -> dict:
    """Run every (shots, seed, method) of `cfg`: seed by seed, each over all shot counts, so a stopped run
    has every shot count at its first seeds.

    Args:
        report: called with each finished run record.
        on_task_done: called with the result so far after every (shots, seed) task, e.g. to write a partial
            report that a long run leaves behind even when it is stopped.

    Returns:
        ``{"config", "settings", "runs", "summary", "tasks_done", "tasks_total", "seconds"}``; ``summary`` is
        :func:`~dapt_core.experiments.background_shift_results.aggregate`'s output.
    """
    started = time.perf_counter()
    backbone = backbone or load_backbone(cfg.backbone, weights_path=cfg.weights, device=cfg.device)
    records: list[dict] = []
    result: dict = {"config": asdict(cfg), "settings": settings(cfg, backbone),
                    "tasks_total": len(cfg.shots) * len(cfg.seeds)}
    for task_no, (shots, seed) in enumerate([(n, s) for s in cfg.seeds for n in cfg.shots], start=1):
        records += run_task_methods(backbone, cfg, seed, shots, report=report)
        result.update(runs=records, summary=aggregate(records), tasks_done=task_no,
                      seconds=round(time.perf_counter() - started, 1))
        if on_task_done is not None:
            on_task_done(result)
    return result


def settings(cfg: BenchConfig, backbone: Backbone) -> dict:
    """Every setting a run used, for the report: training, DAPT per cue, learner options, backbone."""
    example_seed = cfg.seeds[0]
    return {
        "backbone": backbone.describe(),
        "train": asdict(cfg.train_config(example_seed)) | {"seed": "= the task seed"},
        "dapt": {cue: asdict(cfg.dapt(cue)) for cue in ("mask", "gradcam")},
        "learners": {name: {"learner": m.learner, "options": cfg.learner_options(m), "trained": m.trained}
                     for name, m in METHODS.items() if name in cfg.methods},
        "task": {"n_classes": cfg.n_classes or len(OBJECT_CLASSES), "n_test_per_class": cfg.n_test},
        "attention": {"cam": cfg.cam_method, "target": "true class", "split": "test_conflicting"},
    }
