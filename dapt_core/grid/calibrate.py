"""The dry run: how many runs a grid holds, and how long they should take from a short calibration.

The calibration trains each method for three epochs on one batch of synthetic images on the configured
backbone and device, with the trial's thread count (the fastest epoch after the first is taken, so start-up
costs and a busy machine's hiccups are left out), and times an evaluation of them, at the
smallest and the largest class count of the grid (the text side's cost grows with the classes; between the
two it is interpolated linearly). A cell's estimate is then ``epochs x training images x training time per
image`` plus its validation and test images at the evaluation time per image; the wall time divides the sum
by the number of trials the cluster runs at once. It is an estimate: data loading from disk, stragglers,
the start of each worker and the DAPT-S mask jobs are not in it.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from dapt_core.grid.cells import Cell
from dapt_core.grid.config import GridConfig
from dapt_core.grid.engine import TrialResources, resolve_resources
from dapt_core.grid.methods import get_method

log = logging.getLogger(__name__)

CALIBRATION_EPOCHS = 3  # the first warms up (allocations, kernels); the fastest of the others is taken
EVAL_REPEATS = 3  # evaluations timed after a warm-up one; the fastest is taken


@dataclass(frozen=True)
class Timing:
    n_classes: int
    train_seconds: float  # one training image through one epoch (its share of a step, and of the cue's refresh)
    eval_seconds: float  # one evaluation image


@dataclass(frozen=True)
class CellSize:
    n_classes: int  # classes the cell trains on
    train: int  # training images
    val: int  # validation images scored every epoch (best_val)
    tests: tuple[tuple[int, int], ...]  # (test images, classes) of each evaluation


@dataclass
class Estimate:
    seconds: dict[str, float] = field(default_factory=dict)  # cell key -> estimated trial seconds
    parallel: int = 1  # trials the cluster runs at once
    timings: dict[str, list[Timing]] = field(default_factory=dict)  # method -> calibration points

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    @property
    def wall_seconds(self) -> float:
        return self.total_seconds / self.parallel


def cell_sizes(cells: list[Cell]) -> dict[str, CellSize]:
    """The image and class counts of every cell (each data set is read once; no image is opened)."""
    from dapt_core.data.folders import few_shot, parse_data_spec, subsample_classes
    from dapt_core.grid.trial import VAL_SHOTS_CAP

    loaded: dict[str, tuple] = {}
    sizes = {}
    for cell in cells:
        if cell.data not in loaded:
            splits = parse_data_spec(cell.data)
            loaded[cell.data] = (splits, subsample_classes(splits, "base"), subsample_classes(splits, "novel"))
        splits, base, novel = loaded[cell.data]
        part = base if cell.setting == "base_to_novel" else splits
        draw = few_shot(part.train, cell.shots, cell.seed)
        train = len(draw)
        if cell.fraction is not None:
            from dapt_core.grid.selection import selected_count

            train = selected_count([s.label for s in draw], cell.fraction, cell.selection_options)
        val = len(few_shot(part.val, min(cell.shots, VAL_SHOTS_CAP) if cell.shots else 0, cell.seed))
        tests = (((len(base.test), base.num_classes), (len(novel.test), novel.num_classes))
                 if cell.setting == "base_to_novel" else ((len(splits.test), splits.num_classes),))
        sizes[cell.key] = CellSize(part.num_classes, train, val if cell.train.get("selection", "best_val") ==
                                   "best_val" else 0, tests)
    return sizes


def _synthetic_samples(folder: Path, count: int, n_classes: int, size: int):
    import numpy as np
    from PIL import Image

    from dapt_core.data.records import Sample

    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(path, i % n_classes, f"class {i % n_classes}"))
    return samples


def time_method(cfg: GridConfig, method: str, n_classes: int) -> Timing:
    """Trains ``method`` for a few epochs on one batch of synthetic images of ``n_classes`` classes and times
    its fastest epoch after the first, and the fastest of a few evaluations of the batch."""
    import numpy as np

    from dapt_core.data.masks import InMemoryMasks
    from dapt_core.grid.trial import cached_backbone
    from dapt_core.learners import build_learner
    from dapt_core.objective import DaptConfig
    from dapt_core.train import TrainConfig, evaluate, train_prompts

    spec = get_method(method)
    backbone = cached_backbone(cfg.backbone, cfg.weights, cfg.device)
    train_cfg = TrainConfig(**{**cfg.train, "epochs": CALIBRATION_EPOCHS, "selection": "last"})
    learner = build_learner(spec.learner, backbone, [f"class {i}" for i in range(n_classes)],
                            **cfg.learner_options.get(spec.learner, {}))
    with tempfile.TemporaryDirectory() as tmp:
        samples = _synthetic_samples(Path(tmp), train_cfg.batch_size, n_classes, backbone.image_size)
        masks = InMemoryMasks()
        for i in range(len(samples)):
            half = np.zeros((backbone.image_size, backbone.image_size), dtype=np.float32)
            half[:, : backbone.image_size // 2] = 1.0
            masks.set(i, half)
        history = train_prompts(learner, samples, train_cfg, DaptConfig(cue=spec.cue, **cfg.dapt),
                                masks=masks if spec.cue == "mask" else None, progress=False)
        evaluate(learner, samples, train_cfg.eval_batch_size)
        evals = []
        for _ in range(EVAL_REPEATS):
            started = time.perf_counter()
            evaluate(learner, samples, train_cfg.eval_batch_size)
            evals.append(time.perf_counter() - started)
    train_seconds = min(epoch["seconds"] for epoch in history[1:])
    return Timing(n_classes, train_seconds / len(samples), min(evals) / len(samples))


def calibrate(cfg: GridConfig, class_counts: list[int], threads: int = 1) -> dict[str, list[Timing]]:
    """Per method, timings at the smallest and the largest of ``class_counts``, on ``threads`` threads."""
    from dapt_core.grid.trial import with_threads

    points = sorted({min(class_counts), max(class_counts)})
    timings = {}
    for method in cfg.methods:
        timings[method] = [with_threads(lambda n: time_method(cfg, method, n), threads, n) for n in points]
        log.info("calibration %s: %s", method, timings[method])
    return timings


def interpolate(timings: list[Timing], n_classes: int) -> tuple[float, float]:
    """(train, eval) seconds per image at ``n_classes``, linear between the calibration points."""
    if len(timings) == 1 or timings[0].n_classes == timings[-1].n_classes:
        return timings[0].train_seconds, timings[0].eval_seconds
    lo, hi = timings[0], timings[-1]
    w = (n_classes - lo.n_classes) / (hi.n_classes - lo.n_classes)
    return (lo.train_seconds + w * (hi.train_seconds - lo.train_seconds),
            lo.eval_seconds + w * (hi.eval_seconds - lo.eval_seconds))


def cell_seconds(size: CellSize, epochs: int, timings: list[Timing]) -> float:
    """The estimated seconds of one cell."""
    train, val_eval = interpolate(timings, size.n_classes)
    seconds = epochs * (size.train * train + size.val * val_eval)
    return seconds + sum(n * interpolate(timings, k)[1] for n, k in size.tests)


def parallel_trials(resources: TrialResources, total: Mapping[str, float]) -> int:
    """How many trials with ``resources`` fit on a cluster of ``total`` CPUs and GPUs at once (at least 1)."""
    resources = resolve_resources(resources, total)
    fits = [math.floor(total.get("CPU", 0) / resources.num_cpus)]
    if resources.num_gpus:
        fits.append(math.floor(total.get("GPU", 0) / resources.num_gpus))
    return max(1, min(fits))


def local_resources() -> dict[str, float]:
    """The CPUs and GPUs a local Ray instance would have on this machine."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def estimate(cfg: GridConfig, cells: list[Cell], resources: TrialResources,
             total: Mapping[str, float]) -> Estimate:
    """Calibrates on this machine and estimates every cell of ``cells``."""
    from dapt_core.train import TrainConfig

    sizes = cell_sizes(cells)
    counts = [s.n_classes for s in sizes.values()] + [k for s in sizes.values() for _, k in s.tests]
    timings = calibrate(cfg, counts, max(1, int(resources.num_cpus))) if cells else {}
    epochs = TrainConfig(**cfg.train).epochs
    seconds = {c.key: cell_seconds(sizes[c.key], epochs, timings[c.method]) for c in cells}
    return Estimate(seconds, parallel_trials(resources, total), timings)
