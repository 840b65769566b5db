"""Few-shot training and evaluation of prompt learners, with or without the DAPT objective.

Defaults follow the official release (METHOD.md): SGD lr 0.0035, cosine schedule after one warm-up epoch at
a constant 1e-5, 10 epochs, batch 4, the epoch of best validation accuracy kept (``best_val``). fp32 on the
CPU, bf16 autocast on a GPU. An interrupted run resumes from its state file, and only the same run does.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dapt_core.data.dataset import AugmentConfig, PromptDataset
from dapt_core.data.folders import few_shot
from dapt_core.data.records import DataError, Sample
from dapt_core.learners.base import PromptLearner
from dapt_core.data.masks import InMemoryMasks, MaskProvider
from dapt_core.constants import OFFICIAL_EPOCHS
from dapt_core.objective import DaptConfig, dapt_losses, needs_views, warn_unreached_terms
from dapt_core.preflight import check_images, check_masks
from dapt_core.run_state import TrainState, load_state, run_fingerprint, save_state

log = logging.getLogger(__name__)


SELECTIONS = ("best_val", "last")  # which epoch's prompts a run keeps (see model_selection)
FEW_SHOT_VAL_CAP = 4  # CoOp's data sets: a few-shot run draws min(shots, 4) validation images per class


@dataclass
class TrainConfig:
    epochs: int = OFFICIAL_EPOCHS  # passes over the few-shot set
    batch_size: int = 4  # images per step
    lr: float = 0.0035  # SGD learning rate after warm-up
    momentum: float = 0.9  # SGD momentum (Dassl default)
    weight_decay: float = 5e-4  # SGD weight decay (Dassl default)
    warmup_epochs: int = 1  # epochs at the constant warm-up rate
    warmup_lr: float = 1e-5  # the constant warm-up rate
    seed: int = 1  # seeds the prompt initialisation, the shuffling and the augmentation
    crop_min: float = 0.08  # smallest area share of the random-resized training crop (CLIP/CoOp: 0.08)
    eval_batch_size: int = 32  # images per evaluation step
    num_workers: int = 0  # DataLoader worker processes
    shots: int | None = None  # images per class the training set was drawn with (0 = all); None = not stated
    selection: str = "best_val"  # best_val: keep the epoch of best validation accuracy (official); last

    def __post_init__(self) -> None:
        """Checks every field; a bad value raises ValueError naming it, before anything heavy loads."""
        for name, low in (("epochs", 1), ("batch_size", 1), ("eval_batch_size", 1), ("warmup_epochs", 0),
                          ("num_workers", 0)):
            _check_int(name, getattr(self, name), low)
        if self.shots is not None:
            _check_int("shots", self.shots, 0, " (0 = every image)")
        _check_int("seed", self.seed, None)
        _check_number("lr", self.lr, low=0.0, low_open=True)
        _check_number("warmup_lr", self.warmup_lr, low=0.0)
        _check_number("weight_decay", self.weight_decay, low=0.0)
        _check_number("momentum", self.momentum, low=0.0, high=1.0)
        _check_number("crop_min", self.crop_min, low=0.0, low_open=True, high=1.0, high_closed=True)
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown model selection {self.selection!r}; choose from {', '.join(SELECTIONS)}")


def _check_int(name: str, value: object, low: int | None, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        raise ValueError(f"{name} must be an integer{bound}{note}, got {value!r}")


def _check_number(name: str, value: object, *, low: float, low_open: bool = False, high: float | None = None,
                  high_closed: bool = False) -> None:
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
          and (value > low if low_open else value >= low)
          and (high is None or (value <= high if high_closed else value < high)))
    if not ok:
        left, right = "(" if low_open else "[", "]" if high_closed else ")"
        span = f"{left}{low}, {high}{right}" if high is not None else (f"> {low}" if low_open else f">= {low}")
        raise ValueError(f"{name} must be a finite number {'in ' if high is not None else ''}{span}, "
                         f"got {value!r}")


class TrainingCancelled(RuntimeError):
    """Raised when the cancel event is set; the last finished epoch is kept in the state file."""


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """Learning rate of a (0-based) epoch: constant warm-up, then cosine decay over ``epochs`` epochs."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / cfg.epochs))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@dataclass
class StepReport:
    """What a progress callback receives after every step."""

    epoch: int
    step: int
    steps_per_epoch: int
    lr: float
    losses: dict[str, float]


def refresh_gradcam_masks(learner: PromptLearner, dataset: PromptDataset, store: InMemoryMasks,
                          threshold: float, batch_size: int = 16, *, method: str = "gradcam",
                          fast: bool = True) -> None:
    """DAPT's coarse cue: the learner's own attribution map for the true class over each whole training image,
    binarised at ``threshold`` and stored at the image's original size.

    ``method`` is a key of :data:`~dapt_core.attention.cam.CAM_METHODS` (:attr:`DaptConfig.cam_method`; the
    official cue is ``gradcam``). For the single-layer CAMs ``fast`` computes each batch's maps from one
    forward whose backward stops at the CAM's layer (:func:`~dapt_core.attention.shared.batch_cams`); False,
    and every attention method, runs :func:`~dapt_core.attention.cam.compute_cams`. The maps are the same.
    """
    # imported here: the grad-cam package costs seconds that a run without the coarse cue, or a Ray worker
    # starting up, should not pay
    import cv2

    from dapt_core.attention.cam import GRADCAM_METHODS, compute_cams
    from dapt_core.attention.metrics import binarize
    from dapt_core.attention.shared import batch_cams

    text_features = learner.frozen_text_features()
    for start in range(0, len(dataset), batch_size):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        views = [dataset.full_view(i) for i in idx]
        images = torch.stack([v[0] for v in views]).to(learner.device)
        labels = [dataset.samples[i].label for i in idx]
        if fast and method in GRADCAM_METHODS:
            with learner.backbone.lock:
                cams = batch_cams(learner, text_features, images, labels, method)
        else:
            cams = compute_cams(learner, images, labels, method=method, text_features=text_features)
        for i, cam, (_, (h, w)) in zip(idx, cams, views):
            full = cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
            store.set(i, binarize(full, threshold).astype(np.float32))


def model_selection(history: list[dict], rule: str) -> dict:
    """Which epoch's prompts a run keeps, from its history; recorded in the prompt set's metadata.

    ``best_val`` keeps the first epoch of highest ``val_accuracy`` (the official ``TEST.FINAL_MODEL:
    best_val``: a later epoch replaces it only when strictly better). Without validation scores it falls
    back to the last epoch and says so (``requested`` and ``reason``).
    """
    scored = [h for h in history if "val_accuracy" in h]
    if rule == "best_val" and scored:
        best = max(scored, key=lambda h: h["val_accuracy"])  # max keeps the first of equal scores
        return {"rule": "best_val", "epoch": best["epoch"], "val_accuracy": best["val_accuracy"]}
    selected = {"rule": "last", "epoch": history[-1]["epoch"] if history else None}
    if rule == "best_val":
        selected.update(requested="best_val", reason="no validation images")
    return selected


def few_shot_validation(samples: list[Sample], shots: int | None, seed: int) -> list[Sample]:
    """The validation images best_val scores: ``min(shots, 4)`` per class, as CoOp's data sets draw them
    for few-shot runs (every image when ``shots`` is 0 or None)."""
    if not shots:
        return list(samples)
    return few_shot(samples, min(shots, FEW_SHOT_VAL_CAP), seed)


def _validation_accuracy(learner: PromptLearner, samples: list[Sample], cfg: TrainConfig) -> float:
    """Accuracy (percent) on the validation images, leaving torch's CPU random stream as it was."""
    with torch.random.fork_rng(devices=[]):
        accuracy = classification_metrics(*predict(learner, samples, cfg.eval_batch_size))["accuracy"]
    learner.train()
    return accuracy


def _train_epoch(learner: PromptLearner, loader: DataLoader, optimizer: torch.optim.Optimizer, epoch: int,
                 cfg: TrainConfig, dapt: DaptConfig, on_step: Callable[[StepReport], None] | None,
                 cancel: threading.Event | None, progress: bool) -> dict:
    """One pass over the loader; returns the epoch's record (mean of each loss term, lr, seconds)."""
    started = time.perf_counter()
    backbone, device = learner.backbone, learner.device
    lr = lr_at(epoch, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    sums: dict[str, float] = {}
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
    for step, batch in enumerate(bar):
        if cancel is not None and cancel.is_set():
            raise TrainingCancelled(f"cancelled during epoch {epoch + 1}")
        images, labels = batch["image"].to(device), batch["label"].to(device)
        with backbone.lock, backbone.autocast():
            terms = dapt_losses(learner, images, batch["mask"].to(device), labels, epoch, dapt, cfg.epochs)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
        values = {k: float(v.detach()) for k, v in terms.items()}
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.set_postfix(loss=f"{values['total']:.3f}")
        if on_step is not None:
            on_step(StepReport(epoch, step, len(loader), lr, values))
    return {"epoch": epoch, "lr": lr, "seconds": round(time.perf_counter() - started, 3),
            **{k: v / max(len(loader), 1) for k, v in sums.items()}}


def _training_loader(learner: PromptLearner, samples: list[Sample], cfg: TrainConfig,
                     masks: MaskProvider | None) -> tuple[PromptDataset, DataLoader, torch.Generator]:
    """The augmented training set, its shuffling loader and the generator that seeds each epoch's order."""
    backbone = learner.backbone
    dataset = PromptDataset(samples, image_size=backbone.image_size, mean=backbone.mean, std=backbone.std,
                            train=True, masks=masks, seed=cfg.seed,
                            augment=AugmentConfig(crop_scale=(cfg.crop_min, 1.0)))
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                        num_workers=cfg.num_workers, drop_last=False)
    return dataset, loader, generator


def _resume(state_path: Path | None, restart: bool, fingerprint: dict, learner: PromptLearner,
            optimizer: torch.optim.Optimizer) -> TrainState | None:
    """The state to continue from: None for a fresh run (no file, or ``restart``)."""
    if state_path is None or not state_path.exists():
        return None
    if restart:
        log.info("restart: discarding the training state %s", state_path)
        state_path.unlink()
        return None
    state = load_state(state_path, fingerprint, learner.device)
    learner.load_state_dict(state.learner)
    optimizer.load_state_dict(state.optimizer)
    torch.set_rng_state(state.rng)
    log.info("resumed from %s after epoch %d", state_path, state.epoch + 1)
    return state


def train_prompts(learner: PromptLearner, samples: list[Sample], cfg: TrainConfig, dapt: DaptConfig, *,
                  masks: MaskProvider | None = None, val_samples: list[Sample] | None = None,
                  state_path: str | Path | None = None, restart: bool = False, run_info: dict | None = None,
                  on_step: Callable[[StepReport], None] | None = None,
                  cancel: threading.Event | None = None, progress: bool = True) -> list[dict]:
    """Trains the learner's prompts in place and leaves it holding the selected epoch's prompts.

    Args:
        samples: the (few-shot) training images.
        masks: foreground masks for the ``mask`` cue; the ``gradcam`` cue makes its own every epoch.
        val_samples: validation images for ``cfg.selection == "best_val"``; without any, the last epoch is
            kept (a logged warning; :func:`model_selection` records it).
        state_path: where to keep a resumable state after every epoch; an existing one is resumed when it
            belongs to this very run (see :mod:`dapt_core.run_state`), refused otherwise.
        restart: discard an existing state file and start over.
        run_info: the caller's facts that identify the run beyond the arguments (data spec, shots, ...).
        on_step: called after every step (the app's live progress).
        cancel: set it to stop after the current step (raises :class:`TrainingCancelled`).

    Returns:
        One dict per epoch: mean of each loss term, the learning rate, the epoch's seconds and, with
        best_val selection, ``val_accuracy``.

    Raises:
        RunMismatchError: the state file belongs to another run.
    """
    val_samples = list(val_samples or [])
    _check_run(learner, samples, val_samples, cfg, dapt, masks)
    fingerprint = run_fingerprint(learner, samples, cfg, dapt, val_samples=val_samples, masks=masks,
                                  run_info=run_info)
    seed_everything(cfg.seed)
    cue_masks = InMemoryMasks() if dapt.cue == "gradcam" else masks
    dataset, loader, generator = _training_loader(learner, samples, cfg, cue_masks if dapt.enabled else None)
    optimizer = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=cfg.lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    state_path = Path(state_path) if state_path else None
    state = _resume(state_path, restart, fingerprint, learner, optimizer)
    history, best = (state.history, state.best) if state else ([], None)
    validate = cfg.selection == "best_val" and bool(val_samples)
    learner.train()
    for epoch in range(state.epoch + 1 if state else 0, cfg.epochs):
        dataset.set_epoch(epoch)
        generator.manual_seed(cfg.seed * 1000 + epoch)
        dataset.use_masks = dapt.enabled and needs_views(learner, epoch, dapt, cfg.epochs)
        if dapt.cue == "gradcam" and dataset.use_masks:
            refresh_gradcam_masks(learner, dataset, cue_masks, dapt.cam_threshold, method=dapt.cam_method)
        record = _train_epoch(learner, loader, optimizer, epoch, cfg, dapt, on_step, cancel, progress)
        if validate:
            best = _score_epoch(learner, record, best, val_samples, cfg)
        history.append(record)
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in record.items()})
        if state_path:
            save_state(state_path, TrainState(fingerprint, learner.state_dict(), optimizer.state_dict(), epoch,
                                              history, torch.get_rng_state(), best))
    learner.eval()
    _keep_selected(learner, history, best, cfg.selection)
    return history


def _check_run(learner: PromptLearner, samples: list[Sample], val_samples: list[Sample], cfg: TrainConfig,
               dapt: DaptConfig, masks: MaskProvider | None) -> None:
    """Refuses a run that cannot finish (no images, a broken file, a missing mask) before its first step, and
    warns of what it will not do (best_val without validation images, a term the schedule never reaches)."""
    if dapt.cue == "mask" and masks is None:
        raise ValueError("the mask cue needs a mask for every training image (a mask folder or a segmenter)")
    if not samples:
        raise ValueError("no training images")
    check_images(samples, "training")  # a broken file is found now, not in the middle of an epoch
    check_images(val_samples, "validation")
    if dapt.cue == "mask":
        check_masks(samples, masks)
    if cfg.selection == "best_val" and not val_samples:
        log.warning("model selection best_val has no validation images: the last epoch's prompts are kept")
    warn_unreached_terms(dapt, cfg.epochs)
    plain = [e + 1 for e in range(cfg.epochs) if dapt.enabled and not needs_views(learner, e, dapt, cfg.epochs)]
    if plain:
        log.info("DAPT over %s: its image side is frozen, so the triplet term's gradient is zero; epoch(s) %s, where "
                 "it is the only term, run as plain %s", learner.kind, ", ".join(map(str, plain)), learner.kind)


def _score_epoch(learner: PromptLearner, record: dict, best: dict | None, val_samples: list[Sample],
                 cfg: TrainConfig) -> dict | None:
    """Adds the epoch's ``val_accuracy`` to its record; returns the best epoch so far (its prompts copied),
    which a later epoch replaces only when strictly better."""
    record["val_accuracy"] = _validation_accuracy(learner, val_samples, cfg)
    if best is None or record["val_accuracy"] > best["val_accuracy"]:
        return {"epoch": record["epoch"], "val_accuracy": record["val_accuracy"],
                "learner": {k: v.detach().clone() for k, v in learner.state_dict().items()}}
    return best


def _keep_selected(learner: PromptLearner, history: list[dict], best: dict | None, rule: str) -> None:
    """Leaves the learner holding the prompts :func:`model_selection` keeps (best_val: the best epoch's)."""
    selected = model_selection(history, rule)
    if selected["rule"] == "best_val":
        learner.load_state_dict(best["learner"])
        log.info("model selection: kept epoch %d (validation accuracy %.2f%%)", selected["epoch"] + 1,
                 selected["val_accuracy"])


@torch.no_grad()
def predict(learner: PromptLearner, samples: list[Sample], batch_size: int = 32,
            progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true labels of the samples (evaluation view: resize + centre crop)."""
    if not samples:
        raise DataError("no images to evaluate")
    backbone = learner.backbone
    dataset = PromptDataset(samples, image_size=backbone.image_size, mean=backbone.mean, std=backbone.std,
                            train=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    learner.eval()
    with backbone.lock:
        text_features = learner.frozen_text_features()
    preds, labels = [], []
    for batch in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        with backbone.lock, backbone.autocast():
            logits = learner(batch["image"].to(backbone.device), text_features)
        preds.append(logits.argmax(dim=1).cpu())
        labels.append(batch["label"])
    return torch.cat(preds).numpy(), torch.cat(labels).numpy()


def classification_metrics(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 (over the classes that occur in labels or predictions), in percent."""
    if len(labels) == 0:
        raise ValueError("no images to evaluate")
    f1s = []
    for c in np.union1d(preds, labels):
        tp = np.sum((preds == c) & (labels == c))
        fp, fn = np.sum((preds == c) & (labels != c)), np.sum((preds != c) & (labels == c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": round(100.0 * float(np.mean(preds == labels)), 4),
            "macro_f1": round(100.0 * float(np.mean(f1s)), 4), "n": int(len(labels))}


def evaluate(learner: PromptLearner, samples: list[Sample], batch_size: int = 32,
             progress: bool = False) -> dict[str, float]:
    """Accuracy and macro-F1 of the learner on the samples, with its current class list."""
    return classification_metrics(*predict(learner, samples, batch_size, progress))


def harmonic_mean(base: float, novel: float) -> float:
    """The base-to-novel summary: 2 * base * novel / (base + novel)."""
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
