"""Class activation maps of several prompt sets on one image, sharing the frozen image forward where it can.

An :func:`image_forward` runs a learner's image tower once with a forward hook on the target layer (the last
vision block's ``ln_1``) that turns the layer's (B, L, W) output into a fresh gradient root. Every prompt set
served by that forward then adds only its own logits and one backward from its target logit to the root,
which stops there instead of running down the tower to the input. The CAM maths is the ``grad-cam``
package's own (``get_cam_image``, then the ReLU and scaling of ``compute_cam_per_layer`` and
``aggregate_multi_layers``), so a map equals :func:`dapt_core.attention.cam.compute_cams`'s.

Prompt sets without visual prompts (CoOp-kind, ``n_visual_prompts == 0``) all see the frozen
``backbone.visual``, so one forward serves them all; a set with its own visual prompts (MaPLe) gets a forward
of its own. Callers hold ``backbone.lock``; no hook outlives a function.
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from dapt_core.attention.attribution import ATTENTION_METHODS, attention_set_cams
from dapt_core.attention.cam import CAM_METHODS, GRADCAM_METHODS, PromptClassifier, default_target_layer, vit_reshape
from dapt_core.learners.base import PromptLearner


# class text features per learner, reused while its class list and learned tensors stay the same: on a CPU the
# text tower costs more than everything else in an analysis
_TEXT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TEXT_CACHE_LOCK = threading.Lock()


def class_text_features(learner: PromptLearner) -> torch.Tensor:
    """(C, E) detached class text features, cached per learner, class list and learned tensors."""
    key = (tuple(learner.classnames), _tensor_digest(learner))
    with _TEXT_CACHE_LOCK:
        hit = _TEXT_CACHE.get(learner)
    if hit is not None and hit[0] == key:
        return hit[1]
    features = learner.frozen_text_features()  # chunked: a class list of any length in bounded memory
    with _TEXT_CACHE_LOCK:
        _TEXT_CACHE[learner] = (key, features)
    return features


def _tensor_digest(learner: PromptLearner) -> str:
    digest = hashlib.sha256()
    for name, tensor in learner.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class SetCam:
    """One prompt set's answer for one image."""

    logits: torch.Tensor  # (C,) detached class logits
    target: int  # class index the CAM explains
    cam: np.ndarray  # (S, S) float32 in [0, 1], at the model's input resolution


@dataclass
class ImageForward:
    """One image forward, kept for the backward of every prompt set it serves."""

    learner: PromptLearner  # whose image path ran
    layer: nn.Module  # the target layer (last vision block's ln_1)
    root: torch.Tensor  # (B, L, W) the layer's output as a gradient root (a leaf)
    image_features: torch.Tensor  # (B, E) normalised image features, with graph back to ``root``
    activations: np.ndarray  # (B, W, g, g) the root's patch tokens as the package reshapes them

    def serves(self, learner: PromptLearner) -> bool:
        """Whether ``learner``'s image features are the ones of this forward."""
        if learner is self.learner:
            return True
        return (can_share_forward(learner) and can_share_forward(self.learner)
                and learner.backbone is self.learner.backbone)


def check_method(method: str) -> None:
    """Raises ValueError for a CAM method the package does not provide here."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}")


def can_share_forward(learner: PromptLearner) -> bool:
    """Whether the learner's image features are the frozen tower's alone (no visual prompts)."""
    return not learner.learns_image_side


def image_forward(learner: PromptLearner, images: torch.Tensor) -> ImageForward:
    """Runs the learner's image path once with a hook at the target layer (removed before returning).

    Args:
        learner: any prompt learner; MaPLe's visual prompt tokens are dropped from the activations.
        images: (B, 3, S, S) normalised images (one image when prompt sets share the forward).
    """
    layer = default_target_layer(learner)
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        # a fresh leaf: a frozen tower tracks no gradients, and every backward should stop here anyway
        root = output.detach().requires_grad_(True)
        captured.append(root)
        return root

    handle = layer.register_forward_hook(capture)
    try:
        with torch.enable_grad():
            image_features = learner.encode_image(images)
    finally:
        handle.remove()
    root = captured[0]
    reshape = vit_reshape(learner.backbone.visual.grid_size, learner.n_visual_prompts)
    return ImageForward(learner, layer, root, image_features, reshape(root.detach()).cpu().numpy())


def cams_from_forward(forward: ImageForward, learners: list[PromptLearner], text_features: list[torch.Tensor],
                      images: torch.Tensor, targets: list[int | None], method: str) -> list[SetCam]:
    """CAMs of the prompt sets one :func:`image_forward` serves: per set, its logits and one backward.

    Args:
        forward: the forward of ``images``.
        learners: the forward's own learner, or learners without visual prompts on its backbone.
        text_features: (C, E) class text features per set, detached.
        images: (1, 3, S, S) the normalised image of the forward (sets the map's size).
        targets: class index per set, or None for the set's predicted class.
        method: a key of :data:`dapt_core.attention.cam.CAM_METHODS`.

    Returns:
        One :class:`SetCam` per set, in order.
    """
    check_method(method)
    if method not in GRADCAM_METHODS:
        raise ValueError(f"{method} is not a single-layer CAM; use prompt_set_cams, which runs it")
    refused = [learner.kind for learner in learners if not forward.serves(learner)]
    if refused:
        raise ValueError(f"this image forward ({forward.learner.kind}) does not serve {', '.join(refused)} "
                         "prompt sets: only sets without visual prompts share one")
    reshape = vit_reshape(forward.learner.backbone.visual.grid_size, forward.learner.n_visual_prompts)
    results = []
    with torch.enable_grad():
        for learner, features, target in zip(learners, text_features, targets):
            logits = learner.logits(forward.image_features, features)[0]  # (C,)
            index = int(logits.argmax()) if target is None else int(target)
            cam_object = GRADCAM_METHODS[method](model=PromptClassifier(learner, features),
                                             target_layers=[forward.layer], reshape_transform=reshape)
            # only the package's maths is wanted: no hook may stay on the shared model
            cam_object.activations_and_grads.release()
            grads = None
            if cam_object.uses_gradients:
                # the graph is kept for the next set; it goes with ``forward``
                (grad,) = torch.autograd.grad(logits[index], forward.root, retain_graph=True)
                grads = reshape(grad).cpu().numpy()
            cam = _package_maths(cam_object, forward.layer, images, [index], forward.activations, grads)[0]
            results.append(SetCam(logits.detach(), index, cam))
    return results


def batch_cams(learner: PromptLearner, text_features: torch.Tensor, images: torch.Tensor, targets: list[int],
               method: str = "gradcam") -> np.ndarray:
    """Maps of a ``grad-cam`` method for a batch, each image's for its own target class, from ONE forward
    whose backward stops at the target layer (the package's own call runs it down to the input pixels).
    Rows of a ViT batch do not interact, so one backward of the summed target logits gives every image its
    own gradient; the maps equal :func:`dapt_core.attention.cam.compute_cams`'s. DAPT's coarse cue refresh.

    Args:
        text_features: (C, E) class text features, detached.
        images: (B, 3, S, S) normalised images.
        targets: B class indices.
        method: a key of :data:`dapt_core.attention.cam.GRADCAM_METHODS`.

    Returns:
        (B, S, S) float32 maps in [0, 1].
    """
    if method not in GRADCAM_METHODS:
        raise ValueError(f"batch_cams runs the single-layer CAMs ({', '.join(GRADCAM_METHODS)}), not {method!r}")
    if len(targets) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images need as many targets, got {len(targets)}")
    forward = image_forward(learner, images)
    reshape = vit_reshape(learner.backbone.visual.grid_size, learner.n_visual_prompts)
    cam_object = GRADCAM_METHODS[method](model=PromptClassifier(learner, text_features),
                                         target_layers=[forward.layer], reshape_transform=reshape)
    cam_object.activations_and_grads.release()  # no hook may stay on the shared model
    grads = None
    if cam_object.uses_gradients:
        with torch.enable_grad():
            logits = learner.logits(forward.image_features, text_features)  # (B, C)
            picked = logits[torch.arange(len(targets), device=logits.device),
                            torch.as_tensor(targets, device=logits.device)]
            (grad,) = torch.autograd.grad(picked.sum(), forward.root)
        grads = reshape(grad).cpu().numpy()
    return _package_maths(cam_object, forward.layer, images, list(targets), forward.activations, grads)


def _package_maths(cam_object: BaseCAM, layer: nn.Module, images: torch.Tensor, targets: list[int],
                   activations: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
    """The package's per-method maths on given (B, W, g, g) activations and gradients -> (B, S, S) in [0, 1]."""
    raw = cam_object.get_cam_image(images, layer, [ClassifierOutputTarget(t) for t in targets], activations,
                                   grads, eigen_smooth=False)
    # the same ReLU, scaling and upsampling as BaseCAM.compute_cam_per_layer, then its layer aggregation
    scaled = scale_cam_image(np.maximum(raw, 0), cam_object.get_target_width_height(images))
    return cam_object.aggregate_multi_layers([scaled[:, None, :]])


def prompt_set_cams(learners: list[PromptLearner], text_features: list[torch.Tensor], images: torch.Tensor,
                    targets: list[int | None], method: str, *, share: bool = True,
                    timings: dict[str, float] | None = None) -> tuple[list[SetCam], int]:
    """CAMs of every prompt set on one image, with as few image forwards as the sets allow.

    Args:
        learners: prompt sets on one backbone.
        text_features: (C, E) class text features per set, detached.
        images: (1, 3, S, S) normalised image.
        targets: class index per set, or None for the set's predicted class.
        method: a key of :data:`dapt_core.attention.cam.CAM_METHODS`.
        share: let sets without visual prompts share one forward; False gives every set its own.
        timings: if given, seconds of the image forwards and of the per-set CAMs are added to its
            ``"forward"`` and ``"cam"`` entries.

    Returns:
        One :class:`SetCam` per set, in order, and the number of image forwards run.
    """
    check_method(method)
    if method in ATTENTION_METHODS:  # LeGrad, relevance: every block's attention, not one layer's CAM
        answers, forwards = attention_set_cams(learners, text_features, images, targets, method, share=share,
                                               timings=timings)
        return [SetCam(logits, target, cam) for logits, target, cam in answers], forwards
    found: list[SetCam | None] = [None] * len(learners)
    shared = [i for i, learner in enumerate(learners) if share and can_share_forward(learner)]
    groups = ([shared] if shared else []) + [[i] for i in range(len(learners)) if i not in shared]
    spent = {"forward": 0.0, "cam": 0.0}
    for group in groups:
        tick = time.perf_counter()
        forward = image_forward(learners[group[0]], images)
        spent["forward"] += time.perf_counter() - tick
        tick = time.perf_counter()
        cams = cams_from_forward(forward, [learners[i] for i in group], [text_features[i] for i in group],
                                 images, [targets[i] for i in group], method)
        spent["cam"] += time.perf_counter() - tick
        for i, set_cam in zip(group, cams):
            found[i] = set_cam
    if timings is not None:
        for stage, seconds in spent.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    return found, len(groups)
