"""Attribution maps of a prompted CLIP: the Grad-CAM family through the ``grad-cam`` package, and the
attention-based methods (LeGrad, relevance) of :mod:`dapt_core.attention.attribution`, behind one registry.

A prompted CLIP becomes a classifier over the current class prompts (:class:`PromptClassifier`); the CAM is
taken at the last vision block's first LayerNorm, whose (B, L, W) tokens :func:`vit_reshape` turns into a
(B, W, g, g) map, dropping the class token and any MaPLe visual prompt tokens. No hook outlives a call.
One-line descriptions of the methods are in :mod:`dapt_core.attention.descriptions`.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from dapt_core.attention.attribution import ATTENTION_METHODS, attention_cams
from dapt_core.learners.base import PromptLearner

# the package's methods, at one target layer
GRADCAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "eigencam": EigenCAM,
    "layercam": LayerCAM,
}

# (learner, images (B, 3, S, S), targets or None, text features (C, E), target layer or None) -> (B, S, S)
CamFunction = Callable[[PromptLearner, torch.Tensor, "list[int] | None", torch.Tensor, "nn.Module | None"],
                       np.ndarray]


class PromptClassifier(nn.Module):
    """Images -> class logits (B, C) of a prompt learner against fixed class text features."""

    def __init__(self, learner: PromptLearner, text_features: torch.Tensor) -> None:
        super().__init__()
        self.learner = learner
        self.register_buffer("text_features", text_features.detach(), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.learner.logits(self.learner.encode_image(images), self.text_features)


def vit_reshape(grid: tuple[int, int], n_prompts: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Token layout ``[CLS, g*g patches, P prompts]`` (B, L, W) -> (B, W, g, g) patch map."""

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, 1:tokens.shape[1] - n_prompts]
        if patches.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"expected {grid[0] * grid[1]} patch tokens, got {patches.shape[1]}")
        return patches.reshape(tokens.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2)

    return reshape


def default_target_layer(learner: PromptLearner) -> nn.Module:
    """The last vision block's first LayerNorm (DAPT's choice)."""
    return learner.backbone.visual.transformer.resblocks[-1].ln_1


def _package_cams(cam_class: type[BaseCAM], learner: PromptLearner, images: torch.Tensor,
                  targets: list[int] | None, text_features: torch.Tensor,
                  target_layer: nn.Module | None) -> np.ndarray:
    """A ``grad-cam`` method's maps; the package's hooks are released before returning."""
    classifier = PromptClassifier(learner, text_features)
    cam = cam_class(model=classifier, target_layers=[target_layer or default_target_layer(learner)],
                    reshape_transform=vit_reshape(learner.backbone.visual.grid_size, learner.n_visual_prompts))
    try:
        # a leaf that needs a gradient, so a frozen tower (CoOp) still carries gradients to the layer
        leaf = images.detach().clone().requires_grad_(True)
        cam_targets = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
        with torch.enable_grad():
            return cam(input_tensor=leaf, targets=cam_targets)
    finally:
        cam.activations_and_grads.release()
        learner.zero_grad(set_to_none=True)


def _attention_method(method: str) -> CamFunction:
    def run(learner: PromptLearner, images: torch.Tensor, targets: list[int] | None, text_features: torch.Tensor,
            target_layer: nn.Module | None) -> np.ndarray:
        if target_layer is not None:
            raise ValueError(f"{method} reads the attention of every vision block; target_layer is for the "
                             f"grad-cam methods ({', '.join(GRADCAM_METHODS)})")
        return attention_cams(method, learner, images, targets, text_features)

    return run


# every attribution method by name: what ``analyze --cam``, the app and DAPT's coarse cue can use
CAM_METHODS: dict[str, CamFunction] = {
    **{name: partial(_package_cams, cam_class) for name, cam_class in GRADCAM_METHODS.items()},
    **{name: _attention_method(name) for name in ATTENTION_METHODS},
}


def compute_cams(learner: PromptLearner, images: torch.Tensor, targets: list[int] | None = None, *,
                 method: str = "gradcam", text_features: torch.Tensor | None = None,
                 target_layer: nn.Module | None = None) -> np.ndarray:
    """Attribution maps of a batch.

    Args:
        images: (B, 3, H, W) normalised images.
        targets: class index per image; None = each image's predicted class.
        method: a key of :data:`CAM_METHODS`.
        text_features: (C, E) class text features; computed from the learner when None.
        target_layer: the layer of a ``grad-cam`` method (default: the last block's ``ln_1``); attention
            methods read every block and refuse one.

    Returns:
        (B, H, W) float32 maps in [0, 1] (each map scaled by its range).
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}")
    with learner.backbone.lock:
        if text_features is None:
            with torch.no_grad():
                text_features = learner.text_features()
        return CAM_METHODS[method](learner, images, targets, text_features.detach(), target_layer)
