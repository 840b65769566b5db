"""CLIP's score of a candidate mask: the class probability of the image with only the mask kept.

SAM's object choice in the app, in ``analyze`` and in bulk ``masks`` all score candidates with this one
function, so the same image and mask get the same score everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from dapt_core.preprocess import hide, mask_to_input

if TYPE_CHECKING:
    from dapt_core.learners.base import PromptLearner

SCORE_BATCH = 16  # masked images per forward


def mask_scorer(learner: PromptLearner, text_features: torch.Tensor, batch: torch.Tensor,
                target: int) -> Callable[[list[np.ndarray]], list[float]]:
    """``score_masks`` for a segmenter.

    Args:
        learner: the prompt set that scores.
        text_features: its class features, (C, E), computed once by the caller.
        batch: the image as model input, (1, 3, S, S) normalised, on the learner's device.
        target: the class whose probability is the score.

    Returns:
        ``[(H, W) masks in [0, 1]] -> [softmax probability of target]``; pixels outside a mask are hidden
        the way DAPT's foreground view hides them (:func:`dapt_core.preprocess.hide`).
    """
    size = batch.shape[-1]
    backbone = learner.backbone

    def score_masks(masks: list[np.ndarray]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(masks), SCORE_BATCH):
            small = np.stack([mask_to_input(m, size) for m in masks[start:start + SCORE_BATCH]])
            keep = torch.from_numpy(small)[:, None].to(batch.device)  # (N, 1, S, S)
            with backbone.lock, torch.no_grad(), backbone.autocast():
                logits = learner(hide(batch, keep), text_features)
            scores.extend(float(p) for p in logits.float().softmax(dim=-1)[:, target].cpu())
        return scores

    return score_masks
