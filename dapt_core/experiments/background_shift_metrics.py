"""What the background-shift benchmark measures on one prompt learner beyond plain accuracy.

Where it looks: both attention metrics take the CAM of the TRUE class against the ground-truth object mask, the
share of CAM energy on the object and the pointing-game hit rate, per scene and averaged. Whether it reads the
background: the worst group's accuracy (groups: each class's scenes of the aligned split and of the conflicting
split) and the shortcut rate (a conflicting scene named after a class whose training home its background is).
Two diagnostics say how right DAPT's own targets are: the IoU of the Grad-CAM cue with the mask, and how often the
background pseudo-label names the true background.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from dapt_core.attention.cam import compute_cams
from dapt_core.attention.metrics import binarize, mask_iou, object_share, pointing_game
from dapt_core.data.dataset import PromptDataset
from dapt_core.data.masks import MaskFolder
from dapt_core.data.records import Sample
from dapt_core.experiments.bias_suite import SuiteScenes, SuiteWorld, run_suite, suite_scenes
from dapt_core.learners.base import PromptLearner
from dapt_core.objective import DaptConfig, background_text_features


def _eval_batches(learner: PromptLearner, samples: list[Sample],
                  batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices, normalised evaluation views) in batches."""
    backbone = learner.backbone
    dataset = PromptDataset(samples, image_size=backbone.image_size, mean=backbone.mean, std=backbone.std,
                            train=False)
    for start in range(0, len(samples), batch_size):
        idx = list(range(start, min(start + batch_size, len(samples))))
        yield idx, torch.stack([dataset[i]["image"] for i in idx]).to(backbone.device)


def object_attention_per_scene(learner: PromptLearner, samples: list[Sample], masks: MaskFolder, *, method: str,
                               batch_size: int = 32, cue_threshold: float | None = None) -> dict[str, np.ndarray]:
    """CAM of the TRUE class against the ground-truth object mask, scene by scene.

    Returns:
        (N,) float arrays: ``object_attention``, the share of CAM energy inside the mask, in [0, 1] (NaN for an
        all-zero CAM); ``pointing_game``, 1.0 where the CAM's peak is on the object, else 0.0; with
        `cue_threshold`, ``cue_iou``, the IoU of the CAM binarised at that fraction of its peak (the DAPT
        Grad-CAM cue) with the mask.
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
    result = {"object_attention": np.asarray(shares, dtype=np.float64),
              "pointing_game": np.asarray(hits, dtype=np.float64)}
    if cue_threshold is not None:
        result["cue_iou"] = np.asarray(ious, dtype=np.float64)
    return result


def mean_attention(per_scene: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The means of :func:`object_attention_per_scene`'s arrays; all-zero CAMs (NaN) are left out."""
    return {k: _nanmean(v) for k, v in per_scene.items()}


def attention_on_object(learner: PromptLearner, samples: list[Sample], masks: MaskFolder, *, method: str,
                        batch_size: int = 32, cue_threshold: float | None = None) -> dict[str, float]:
    """:func:`mean_attention` of :func:`object_attention_per_scene`: ``object_attention`` and ``pointing_game`` in
    [0, 1], ``cue_iou`` with `cue_threshold`."""
    return mean_attention(object_attention_per_scene(learner, samples, masks, method=method, batch_size=batch_size,
                                                     cue_threshold=cue_threshold))


def worst_group_accuracy(groups: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """The lowest accuracy, in percent, over the groups (split, class): the scenes of one class in one split.

    Args:
        groups: split -> (predicted labels, true labels), two (N,) int arrays; a class absent from a split's true
            labels makes no group there.
    """
    accuracies = [float(np.mean(preds[labels == c] == c)) for preds, labels in groups.values()
                  for c in np.unique(labels)]
    if not accuracies:
        raise ValueError("worst_group_accuracy: no scenes in any group")
    return 100.0 * min(accuracies)


def shortcut_rate(preds: np.ndarray, backgrounds: Sequence[str], classnames: Sequence[str],
                  homes: Mapping[str, Sequence[str]]) -> float:
    """Share of scenes predicted as a class whose training home backgrounds include the scene's background.

    Only scenes whose background is some class's home count (elsewhere no prediction is a shortcut); NaN when
    there is none. Returns a value in [0, 1].
    """
    if len(preds) != len(backgrounds):
        raise ValueError(f"preds and backgrounds differ in length: {len(preds)} != {len(backgrounds)}")
    housed = {b for c in classnames for b in homes[c]}
    hits = [bg in homes[classnames[int(p)]] for p, bg in zip(preds, backgrounds) if bg in housed]
    return float(np.mean(hits)) if hits else math.nan


def background_pseudo_label_accuracy(learner: PromptLearner, samples: list[Sample], masks: MaskFolder,
                                     backgrounds: Sequence[str], dapt: DaptConfig, batch_size: int = 32) -> float:
    """Share of background views (true mask removed) whose DAPT pseudo-label is their true background word
    (``backgrounds``: each sample's background name).

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
            hits += [words[p] == backgrounds[it["index"]] for p, it in zip(picks, items)]
    return float(np.mean(hits))


def _resize(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if cam.shape == shape:
        return cam
    return np.maximum(cv2.resize(cam.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR), 0)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


@dataclass(frozen=True)
class BiasSuite:
    """A world's bias suite (:mod:`dapt_core.experiments.bias_suite`) with its scenes made once, so that every
    method of a seed's tasks is measured on the same scenes."""

    world: SuiteWorld
    scenes: SuiteScenes
    per_class: int
    seed: int

    @classmethod
    def build(cls, world: SuiteWorld, per_class: int, seed: int, size: int) -> "BiasSuite":
        """``per_class`` base scenes per class of ``world``, seeded by ``seed``, ``size`` pixels a side."""
        return cls(world, suite_scenes(world, per_class, seed, size), per_class, seed)

    def bg_gap(self, learner: PromptLearner) -> float:
        """The learner's BG-Gap (Mixed-Same minus Mixed-Rand accuracy on the same objects), in points."""
        return run_suite(learner.backbone, self.world, self.per_class, self.seed, learner=learner,
                         scenes=self.scenes)["bg_gap"]
