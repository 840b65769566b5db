"""Zero-shot object and background accuracy of a CLIP on a fresh, balanced set of synthetic scenes.

A CLIP that has learned the synthetic world must name both halves of a scene: the object (11 shapes)
and the background (11 textures). Each is scored as open-vocabulary classification with one prompt per
class, `OBJECT_PROMPT` and `BACKGROUND_PROMPT`, against images whose background is drawn independently
of the object, so neither fact can be read off the other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dapt_core.minclip.config import DEFAULT_EVAL_SEED
from dapt_core.preprocess import normalize_pixels
from dapt_core.world.shapes import OBJECT_CLASSES
from dapt_core.world.textures import BACKGROUND_CLASSES
from dapt_core.world.scenes import BACKGROUND_PHRASES, Scene, check_count, make_caption
from dapt_core.world.task import cycled

log = logging.getLogger(__name__)

# Prompts of the evaluation; {object} is a class name, {background} a phrase of BACKGROUND_PHRASES.
OBJECT_PROMPT = "a photo of a {object}."
BACKGROUND_PROMPT = "a photo of {background}."
# Spawn key of the evaluation stream, apart from the pre-training stream and from make_task's streams.
EVAL_STREAM = 201


@dataclass(frozen=True)
class ZeroShotResult:
    """Zero-shot accuracies on one set of scenes."""

    object_acc: float  # percent of scenes whose object prompt scores highest, 0..100
    background_acc: float  # percent of scenes whose background prompt scores highest, 0..100
    n: int  # number of scenes

    def as_dict(self) -> dict:
        return {"object_acc": self.object_acc, "background_acc": self.background_acc, "n": self.n}


def object_prompts(objects: Sequence[str] = OBJECT_CLASSES) -> list[str]:
    """One prompt per object class, in the order of `objects`."""
    return [make_caption(name, "", BACKGROUND_CLASSES[0], OBJECT_PROMPT) for name in objects]


def background_prompts(backgrounds: Sequence[str] = BACKGROUND_CLASSES) -> list[str]:
    """One prompt per background class, in the order of `backgrounds`."""
    return [BACKGROUND_PROMPT.format(background=BACKGROUND_PHRASES[name]) for name in backgrounds]


def balanced_scenes(n: int, seed: int, size: int) -> list[Scene]:
    """`n` scenes with objects and backgrounds each cycled evenly and paired at random.

    Object counts differ by at most one, and so do background counts; the two are shuffled
    independently, so the background says nothing about the object.

    Args:
        n: number of scenes, >= 1.
        seed: non-negative seed; its stream is apart from every pre-training and task stream.
        size: image side in pixels.
    """
    from dapt_core.world.scenes import render_scene  # a late import keeps this module light for the CLI

    n = check_count(n, "n", 1)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(EVAL_STREAM,)))
    objects = cycled(rng, OBJECT_CLASSES, n)
    backgrounds = cycled(rng, BACKGROUND_CLASSES, n)
    return [render_scene(obj, bg, size, rng) for obj, bg in zip(objects, backgrounds)]


def images_to_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB scenes at the model's size -> (B, 3, H, W) model input (no resize needed)."""
    return normalize_pixels(images, mean, std)


@torch.no_grad()
def zeroshot_accuracy(
    model: nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    scenes: Sequence[Scene],
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
) -> ZeroShotResult:
    """Object and background zero-shot accuracy of an open_clip CLIP on `scenes`.

    Args:
        model: an open_clip CLIP (with `encode_image` and `encode_text`); its mode is restored after.
        tokenizer: the model's tokenizer, list of N strings -> (N, L) token ids.
        scenes: scenes whose image side equals the model's input size; at least one.
        mean, std: the per-channel normalisation the model was trained with.
        batch_size: images per forward.

    Returns:
        Accuracies in percent, rounded to two decimals.
    """
    if not scenes:
        raise ValueError("scenes: expected at least one scene to evaluate, got none")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        obj_text = nn.functional.normalize(model.encode_text(tokenizer(object_prompts()).to(device)), dim=-1)
        bg_text = nn.functional.normalize(model.encode_text(tokenizer(background_prompts()).to(device)), dim=-1)
        obj_index = {name: i for i, name in enumerate(OBJECT_CLASSES)}
        bg_index = {name: i for i, name in enumerate(BACKGROUND_CLASSES)}
        obj_hits = bg_hits = 0
        for start in range(0, len(scenes), batch_size):
            chunk = scenes[start:start + batch_size]
            images = images_to_tensor(np.stack([s.image for s in chunk]), mean, std).to(device)
            feats = nn.functional.normalize(model.encode_image(images), dim=-1)  # (B, E)
            obj_true = torch.tensor([obj_index[s.object] for s in chunk], device=device)
            bg_true = torch.tensor([bg_index[s.background] for s in chunk], device=device)
            obj_hits += int(((feats @ obj_text.T).argmax(-1) == obj_true).sum())
            bg_hits += int(((feats @ bg_text.T).argmax(-1) == bg_true).sum())
    finally:
        model.train(was_training)
    n = len(scenes)
    return ZeroShotResult(round(100.0 * obj_hits / n, 2), round(100.0 * bg_hits / n, 2), n)


def evaluate_backbone(backbone, n: int = 2000, seed: int = DEFAULT_EVAL_SEED) -> ZeroShotResult:
    """Zero-shot accuracies of a loaded `dapt_core.backbones.Backbone` on `n` fresh balanced scenes."""
    scenes = balanced_scenes(n, seed, backbone.image_size)
    with backbone.lock:
        return zeroshot_accuracy(backbone.model, backbone.tokenizer, scenes, backbone.mean, backbone.std)
