"""Few-shot training and evaluation of prompt learners, with or without the DAPT objective.

Defaults follow the official release (METHOD.md): SGD lr 0.0035, cosine schedule after one warm-up epoch at
a constant 1e-5, 10 epochs, batch 4. fp32 on the CPU, bf16 autocast on a GPU. An interrupted run resumes from
its state file.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dapt_core.fileio import atomic_path
from dapt_core.attention.metrics import binarize
from dapt_core.attention.cam import compute_cams
from dapt_core.data.dataset import AugmentConfig, PromptDataset
from dapt_core.data.records import Sample
from dapt_core.learners.base import PromptLearner
from dapt_core.data.masks import InMemoryMasks, MaskProvider
from dapt_core.objective import DaptConfig, dapt_losses, loss_weights

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over the few-shot set
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
                          threshold: float, batch_size: int = 16) -> None:
    """DAPT's coarse cue: the learner's own Grad-CAM for the true class over each whole training image,
    binarised at ``threshold`` and stored at the image's original size."""
    with torch.no_grad():
        text_features = learner.text_features()
    for start in range(0, len(dataset), batch_size):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        views = [dataset.full_view(i) for i in idx]
        images = torch.stack([v[0] for v in views]).to(learner.device)
        labels = [dataset.samples[i].label for i in idx]
        cams = compute_cams(learner, images, labels, text_features=text_features)
        for i, cam, (_, (h, w)) in zip(idx, cams, views):
            full = cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
            store.set(i, binarize(full, threshold).astype(np.float32))


def _save_state(path: Path, learner: PromptLearner, optimizer: torch.optim.Optimizer, epoch: int,
                history: list[dict]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"learner": learner.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                    "history": history, "rng": torch.get_rng_state()}, tmp)


def train_prompts(learner: PromptLearner, samples: list[Sample], cfg: TrainConfig, dapt: DaptConfig, *,
                  masks: MaskProvider | None = None, state_path: str | Path | None = None,
                  on_step: Callable[[StepReport], None] | None = None,
                  cancel: threading.Event | None = None, progress: bool = True) -> list[dict]:
    """Trains the learner's prompts in place.

    Args:
        samples: the (few-shot) training images.
        masks: foreground masks for the ``mask`` cue; the ``gradcam`` cue makes its own every epoch.
        state_path: where to keep a resumable state after every epoch; an existing one is resumed.
        on_step: called after every step (the app's live progress).
        cancel: set it to stop after the current step (raises :class:`TrainingCancelled`).

    Returns:
        One dict per epoch: mean of each loss term, the learning rate and the epoch's seconds.
    """
    if dapt.cue == "mask" and masks is None:
        raise ValueError("the mask cue needs a mask for every training image (a mask folder or a segmenter)")
    seed_everything(cfg.seed)
    backbone = learner.backbone
    device = backbone.device
    if dapt.cue == "gradcam":
        masks = InMemoryMasks()
    dataset = PromptDataset(samples, image_size=backbone.image_size, mean=backbone.mean, std=backbone.std,
                            train=True, masks=masks if dapt.enabled else None, seed=cfg.seed,
                            augment=AugmentConfig(crop_scale=(cfg.crop_min, 1.0)))
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                        num_workers=cfg.num_workers, drop_last=False)
    params = [p for p in learner.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    history: list[dict] = []
    start_epoch = 0
    state_path = Path(state_path) if state_path else None
    if state_path and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        learner.load_state_dict(state["learner"])
        optimizer.load_state_dict(state["optimizer"])
        history, start_epoch = state["history"], state["epoch"] + 1
        torch.set_rng_state(state["rng"])
        log.info("resumed from %s after epoch %d", state_path, state["epoch"])

    learner.train()
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        lr = lr_at(epoch, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        dataset.set_epoch(epoch)
        generator.manual_seed(cfg.seed * 1000 + epoch)
        if dapt.cue == "gradcam" and any(loss_weights(epoch, dapt).values()):
            refresh_gradcam_masks(learner, dataset, masks, dapt.cam_threshold)
        sums: dict[str, float] = {}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for step, batch in enumerate(bar):
            if cancel is not None and cancel.is_set():
                raise TrainingCancelled(f"cancelled during epoch {epoch + 1}")
            images, labels = batch["image"].to(device), batch["label"].to(device)
            with backbone.lock, backbone.autocast():
                terms = dapt_losses(learner, images, batch["mask"].to(device), labels, epoch, dapt)
                optimizer.zero_grad(set_to_none=True)
                terms["total"].backward()
                optimizer.step()
            values = {k: float(v.detach()) for k, v in terms.items()}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{values['total']:.3f}")
            if on_step is not None:
                on_step(StepReport(epoch, step, len(loader), lr, values))
        record = {"epoch": epoch, "lr": lr, "seconds": round(time.perf_counter() - started, 3),
                  **{k: v / max(len(loader), 1) for k, v in sums.items()}}
        history.append(record)
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in record.items()})
        if state_path:
            _save_state(state_path, learner, optimizer, epoch, history)
    learner.eval()
    return history


@torch.no_grad()
def predict(learner: PromptLearner, samples: list[Sample], batch_size: int = 32,
            progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true labels of the samples (evaluation view: resize + centre crop)."""
    backbone = learner.backbone
    dataset = PromptDataset(samples, image_size=backbone.image_size, mean=backbone.mean, std=backbone.std,
                            train=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    learner.eval()
    with backbone.lock:
        text_features = learner.text_features()
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
