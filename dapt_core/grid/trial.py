"""One grid cell, run in this process through the library (no CLI subprocess): draw, train, evaluate, write.

The same function runs a cell on a Ray worker and in the sequential mode, so both give the same numbers.
Training resumes from the cell's ``state.pt`` (:func:`dapt_core.train.train_prompts` keeps it after every
epoch and refuses a state of another run), so a killed trial that Ray runs again continues where it stopped.
A worker keeps the last backbone it loaded for its next cell.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dapt_core.fileio import atomic_path
from dapt_core.grid.cells import (
    CELL_FILE,
    CELL_FORMAT,
    CELL_VERSION,
    METRICS_FILE,
    PROMPTS_FILE,
    STATE_FILE,
    Cell,
)
from dapt_core.grid.methods import get_method

if TYPE_CHECKING:
    from dapt_core.backbones import Backbone
    from dapt_core.data.records import DatasetSplits, Sample
    from dapt_core.learners.base import PromptLearner
    from dapt_core.train import StepReport

log = logging.getLogger(__name__)

VAL_SHOTS_CAP = 4  # CoOp/Dassl draw min(shots, 4) validation images per class for best_val model selection
_BACKBONE_CACHE: dict[tuple, Backbone] = {}


def write_json(path: Path, content: dict) -> None:
    """Writes ``content`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def cached_backbone(name: str, weights: str | None, device: str | None) -> Backbone:
    """The backbone, loaded once per process (the last one only: a worker holds one model at a time)."""
    from dapt_core.backbones import load_backbone

    key = (name, weights, device)
    if key not in _BACKBONE_CACHE:
        _BACKBONE_CACHE.clear()
        _BACKBONE_CACHE[key] = load_backbone(name, weights_path=weights, device=device)
    return _BACKBONE_CACHE[key]


def with_threads(fn: Callable[[Any], Any], num_threads: int, payload: Any) -> Any:
    """``fn(payload)`` with torch computing on ``num_threads`` threads (the trial's CPU share), as it was after.

    Ray starts a worker with OMP_NUM_THREADS = the task's CPUs, but a reused worker, the sequential mode and
    a caller's own thread setting would otherwise each compute with another count (and the sequential mode
    on a shared machine would oversubscribe it); one count per trial in both modes.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(num_threads)))
    try:
        return fn(payload)
    finally:
        torch.set_num_threads(previous)


def training_images(cell: Cell, part: DatasetSplits,
                    learner: PromptLearner) -> tuple[list[Sample], list[Sample], dict | None]:
    """(train, val, selection record) of the cell: the few-shot draw (then the data-efficient selection and
    its record) and the validation draw of ``min(shots, 4)`` per class that model selection scores (CoOp's
    protocol)."""
    from dapt_core.data.folders import few_shot

    train = few_shot(part.train, cell.shots, cell.seed)
    record = None
    if cell.setting == "data_efficient":
        from dapt_core.grid.selection import select_training

        train, record = select_training(train, cell.fraction, cell.selection, cell.seed, cell.selection_options,
                                        learner)
    val_shots = min(cell.shots, VAL_SHOTS_CAP) if cell.shots > 0 else 0
    return train, few_shot(part.val, val_shots, cell.seed), record


def evaluate_cell(learner: PromptLearner, splits: DatasetSplits, cell: Cell, batch_size: int) -> dict:
    """The cell's test metrics: accuracy and macro-F1 on every class, or base, novel and their harmonic mean."""
    from dapt_core.data.folders import subsample_classes
    from dapt_core.train import evaluate, harmonic_mean

    if cell.setting != "base_to_novel":
        return evaluate(learner, splits.test, batch_size)
    trained = learner.classnames
    result = {}
    for half in ("base", "novel"):
        part = subsample_classes(splits, half)
        learner.set_classnames(part.classnames)
        result[half] = evaluate(learner, part.test, batch_size)
    learner.set_classnames(trained)
    result["hm"] = round(harmonic_mean(result["base"]["accuracy"], result["novel"]["accuracy"]), 4)
    return result


def run_cell(cell: Cell, on_step: Callable[[StepReport], None] | None = None) -> dict:
    """Runs one cell and writes its prompt set and metrics record into its folder.

    Args:
        cell: the cell (its folder is created when missing).
        on_step: called after every training step (progress, tests).

    Returns:
        The metrics record, as written to ``metrics.json``.

    Raises:
        whatever the data, the library or the training raises (a bad spec, a missing mask, a state file of
        another run); nothing is written but ``cell.json`` and the training state.
    """
    from dapt_core.checkpoint import save_prompt_set
    from dapt_core.data.folders import image_root, parse_data_spec, subsample_classes
    from dapt_core.data.masks import MaskFolder
    from dapt_core.learners import build_learner
    from dapt_core.objective import DaptConfig
    from dapt_core.train import TrainConfig, seed_everything, train_prompts

    started = time.perf_counter()
    folder = Path(cell.folder)
    write_json(folder / CELL_FILE, {"format": CELL_FORMAT, "version": CELL_VERSION, "identity": cell.identity(),
                                    "data": cell.data})
    method = get_method(cell.method)
    splits = parse_data_spec(cell.data)
    part = subsample_classes(splits, "base" if cell.setting == "base_to_novel" else "all")
    dapt = DaptConfig(cue=method.cue, **cell.dapt)
    masks = MaskFolder(cell.mask_dir, image_root(splits)) if method.cue == "mask" else None
    cfg = TrainConfig(seed=cell.seed, shots=cell.shots, **cell.train)
    backbone = cached_backbone(cell.backbone, cell.weights, cell.device)
    seed_everything(cell.seed)
    learner = build_learner(method.learner, backbone, part.classnames, **cell.learner_options)
    train, val, selection = training_images(cell, part, learner)
    state = folder / STATE_FILE
    resumed = state.exists()
    log.info("cell %s: %s on %d images of %d classes%s", cell.key, cell.method, len(train), len(part.classnames),
             " (resuming)" if resumed else "")
    history = train_prompts(learner, train, cfg, dapt, masks=masks, val_samples=val, state_path=state,
                            run_info={"grid_cell": cell.key}, on_step=on_step, progress=False)
    metrics = evaluate_cell(learner, splits, cell, cfg.eval_batch_size)
    record = {"format": CELL_FORMAT, "version": CELL_VERSION, "identity": cell.identity(), "data": cell.data,
              "metrics": metrics, "train_images": len(train), "val_images": len(val), "selection": selection,
              "history": history,
              "resumed": resumed, "seconds": round(time.perf_counter() - started, 3),
              "host": platform.node(), "device": str(backbone.device)}
    save_prompt_set(learner, folder / PROMPTS_FILE, dapt=dapt if dapt.enabled else None, metrics=metrics,
                    train_config={**cell.identity(), "data_selection": selection, "history": history}, name=cell.key.replace("/", "_"))
    write_json(folder / METRICS_FILE, record)  # last: its presence marks the cell finished
    state.unlink(missing_ok=True)
    return record
