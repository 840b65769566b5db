"""What the background-shift benchmark measures on one prompt learner, beyond accuracy: where it looks.

Both attention metrics take the CAM of the TRUE class against the ground-truth object mask: the share of CAM
energy on the object and the pointing-game hit rate. Two diagnostics say how right DAPT's own targets are: the
IoU of the Grad-CAM cue with the mask, and how often the background pseudo-label names the true background.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import torch

from dapt_core.attention.cam import compute_cams
from dapt_core.attention.metrics import binarize, mask_iou, object_share, pointing_game
from dapt_core.data.dataset import PromptDataset
from dapt_core.data.masks import MaskFolder
from dapt_core.data.records import Sample
from dapt_core.learners.base import PromptLearner
from dapt_core.objective import DaptConfig, background_text_features
from dapt_core.world.scenes import Scene


def _eval_batches(learner: PromptLearner, samples: list[Sample],
                  batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices, normalised evaluation views) in batches."""
    backbone = learner.backbone
    dataset = PromptDataset(samples, image_size=backbone.image_size, mean=backbone.mean, std=backbone.std,
                            train=False)
    for start in range(0, len(samples), batch_size):
        idx = list(range(start, min(start + batch_size, len(samples))))
        yield idx, torch.stack([dataset[i]["image"] for i in idx]).to(backbone.device)


def attention_on_object(learner: PromptLearner, samples: list[Sample], masks: MaskFolder, *, method: str,
                        batch_size: int = 32, cue_threshold: float | None = None) -> dict[str, float]:
    """CAM of the TRUE class against the ground-truth object mask.

    Returns:
        ``object_attention``: mean share of CAM energy inside the mask, in [0, 1] (all-zero CAMs skipped);
        ``pointing_game``: share of images whose CAM peak is on the object, in [0, 1];
        ``cue_iou`` (with `cue_threshold`): mean IoU of the CAM binarised at that fraction of its peak (the
        DAPT Grad-CAM cue) with the mask.
    """
    with learner.backbone.lock, torch.no_grad():
        text_features = learner.text_features()
    shares, hits, ious = [], [], []
    for idx, images in _eval_batches(learner, samples, batch_size):
        cams = compute_cams(learner, images, [samples[i].label for i in idx], method=method,
                            text_features=text_features)
        for i, cam in zip(idx, cams):
            mask = masks.get(i, samples[i])
            shares.append(object_share(cam, mask))
            hits.append(pointing_game(cam, mask))
            if cue_threshold is not None:
                ious.append(mask_iou(binarize(_resize(cam, mask.shape), cue_threshold), mask))
    result = {"object_attention": _nanmean(shares), "pointing_game": float(np.mean(hits))}
    if cue_threshold is not None:
        result["cue_iou"] = _nanmean(ious)
    return result


def background_pseudo_label_accuracy(learner: PromptLearner, samples: list[Sample], masks: MaskFolder,
                                     scenes: list[Scene], dapt: DaptConfig, batch_size: int = 32) -> float:
    """Share of background views (true mask removed) whose DAPT pseudo-label is their true background word.

    This is how right the background-alignment term's targets are; words outside the vocabulary count as
    wrong. Returns a value in [0, 1].
    """
    backbone = learner.backbone
    dataset = PromptDataset(samples, image_size=backbone.image_size, mean=backbone.mean, std=backbone.std,
                            train=False, masks=masks)
    words = list(dapt.background_words)
    hits = []
    with backbone.lock, torch.no_grad():
        bg_text = background_text_features(learner, dapt)
        for start in range(0, len(samples), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(samples)))]
            images = torch.stack([it["image"] for it in items]).to(backbone.device)
            keep = torch.stack([it["mask"] for it in items]).to(backbone.device)
            picks = (learner.encode_image(images * (1.0 - keep)) @ bg_text.t()).argmax(dim=1).tolist()
            hits += [words[p] == scenes[it["index"]].background for p, it in zip(picks, items)]
    return float(np.mean(hits))


def _resize(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if cam.shape == shape:
        return cam
    return np.maximum(cv2.resize(cam.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR), 0)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan
