"""Attention-based attribution methods (LeGrad, relevance) behind the CAM family's interface.

:func:`attention_cams` is a batch of maps for one prompt set, as :func:`dapt_core.attention.cam.compute_cams`
gives for the ``grad-cam`` methods; :func:`attention_set_cams` serves several prompt sets on one image with
as few image forwards as they allow (CoOp-kind sets share one, as in :mod:`dapt_core.attention.shared`).
Callers hold ``backbone.lock``; every hook is gone when a function returns.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from dapt_core.attention.capture import AttentionForward, attention_forward, patch_maps_to_images
from dapt_core.attention.legrad import legrad_scores
from dapt_core.attention.relevance import relevance_scores
from dapt_core.learners.base import PromptLearner

# (learner, forward, text features, targets) -> (B, g*g) patch scores, (B, C) logits, classes explained
PatchScorer = Callable[[PromptLearner, AttentionForward, torch.Tensor, "list[int] | None"],
                       "tuple[torch.Tensor, torch.Tensor, list[int]]"]

ATTENTION_METHODS: dict[str, PatchScorer] = {
    "legrad": legrad_scores,
    "relevance": relevance_scores,
}


def _scorer(method: str) -> PatchScorer:
    if method not in ATTENTION_METHODS:
        raise ValueError(f"unknown attention method {method!r}; choose from {', '.join(ATTENTION_METHODS)}")
    return ATTENTION_METHODS[method]


def attention_cams(method: str, learner: PromptLearner, images: torch.Tensor, targets: list[int] | None,
                   text_features: torch.Tensor) -> np.ndarray:
    """Maps of one prompt set over a batch.

    Args:
        method: a key of :data:`ATTENTION_METHODS`.
        learner: CoOp or MaPLe on an open_clip ViT.
        images: (B, 3, S, S) normalised images.
        targets: class index per image; None = each image's predicted class.
        text_features: (C, E) detached class text features.

    Returns:
        (B, S, S) float32 maps in [0, 1] (each scaled by its range, then bilinearly resized).
    """
    scorer = _scorer(method)
    try:
        forward = attention_forward(learner, images)
        with torch.enable_grad():  # a caller under no_grad still gets its maps
            scores, _, _ = scorer(learner, forward, text_features, targets)
        return patch_maps_to_images(scores, forward.layout.grid, tuple(images.shape[-2:]))
    finally:
        learner.zero_grad(set_to_none=True)


def attention_set_cams(learners: list[PromptLearner], text_features: list[torch.Tensor], images: torch.Tensor,
                       targets: list[int | None], method: str, *, share: bool = True,
                       timings: dict[str, float] | None = None
                       ) -> tuple[list[tuple[torch.Tensor, int, np.ndarray]], int]:
    """Maps of several prompt sets on one image.

    Args:
        learners: prompt sets on one backbone.
        text_features: (C, E) class text features per set, detached.
        images: (1, 3, S, S) normalised image.
        targets: class index per set, or None for the set's predicted class.
        method: a key of :data:`ATTENTION_METHODS`.
        share: let sets without visual prompts share one forward; False gives every set its own.
        timings: if given, seconds of the image forwards and of the maps are added to its ``"forward"`` and
            ``"cam"`` entries.

    Returns:
        Per set, in order, its (C,) detached logits, the class explained and its (S, S) map; and the number of
        image forwards run.
    """
    scorer = _scorer(method)
    size = tuple(images.shape[-2:])
    shared = [i for i, learner in enumerate(learners) if share and not learner.learns_image_side]
    groups = ([shared] if shared else []) + [[i] for i in range(len(learners)) if i not in shared]
    found: list[tuple[torch.Tensor, int, np.ndarray] | None] = [None] * len(learners)
    spent = {"forward": 0.0, "cam": 0.0}
    for group in groups:
        tick = time.perf_counter()
        forward = attention_forward(learners[group[0]], images)
        spent["forward"] += time.perf_counter() - tick
        tick = time.perf_counter()
        for i in group:
            target = None if targets[i] is None else [int(targets[i])]
            with torch.enable_grad():
                scores, logits, chosen = scorer(learners[i], forward, text_features[i], target)
            found[i] = (logits[0], chosen[0], patch_maps_to_images(scores, forward.layout.grid, size)[0])
            learners[i].zero_grad(set_to_none=True)
        spent["cam"] += time.perf_counter() - tick
    if timings is not None:
        for stage, seconds in spent.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    return found, len(groups)
