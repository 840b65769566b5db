"""The `synth-web` pre-training corpus and its probes: batches of web-like scenes, zero-shot accuracy by context.

:func:`sample_web_batch` renders a batch of :mod:`dapt_core.world.web` scenes with their alt-text captions,
in the :class:`~dapt_core.minclip.captions.PairBatch` form the losses read (so
:func:`~dapt_core.minclip.captions.true_of` finds the repeated captions, which web data has many of).
:func:`probe_sets` and :func:`web_probe` measure, during and after training, how the model names objects
on their home backgrounds, on other classes' backgrounds, and from the background alone: the context bias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from dapt_core.minclip.captions import PairBatch
from dapt_core.minclip.config import WebPretrainConfig
from dapt_core.minclip.zeroshot import images_to_tensor
from dapt_core.world.web import (
    OBJECT_CAPTIONS,
    WEB_BACKGROUND_CLASSES,
    WebWorldConfig,
    finish,
    render_background_layer,
    render_web_scene,
    sample_spec,
    scene_spec,
    web_caption,
)
from dapt_core.world.web_shapes import WEB_OBJECT_CLASSES

WEB_OBJECT_PROMPT = "a photo of a {object}."  # the zero-shot prompt of the probes (one of OBJECT_CAPTIONS)
PROBE_SETS = ("home", "other", "only_bg")  # object on a home background, on another's, background alone


def world_config(cfg: WebPretrainConfig) -> WebWorldConfig:
    """The corpus knobs a recipe sets (the others keep `WebWorldConfig`'s defaults)."""
    return WebWorldConfig(p_home=cfg.p_home, p_background_caption=cfg.p_background_caption)


def sample_web_batch(rng: np.random.Generator, n: int, world: WebWorldConfig) -> PairBatch:
    """`n` scenes drawn from `rng` with their captions and facts (what each caption states is in `stated`)."""
    specs = [sample_spec(rng, world) for _ in range(n)]
    facts = [{"object": s.object, "colour": s.colour, "background": s.background} for s in specs]
    return PairBatch(np.stack([render_web_scene(s).image for s in specs]), [s.caption for s in specs], facts,
                     [{fact: f[fact] for fact in s.stated} for s, f in zip(specs, facts)])


def object_class_captions(rng: np.random.Generator) -> list[str]:
    """One caption per object class in a template drawn per step among the object-only ones without colour."""
    plain = [t for t in OBJECT_CAPTIONS if "{colour}" not in t]
    template = plain[rng.integers(len(plain))]
    return [web_caption(name, "", WEB_BACKGROUND_CLASSES[0], template) for name in WEB_OBJECT_CLASSES]


def object_prompts() -> list[str]:
    """The probes' zero-shot prompt for each class, in the order of `WEB_OBJECT_CLASSES`."""
    return [web_caption(name, "", WEB_BACKGROUND_CLASSES[0], WEB_OBJECT_PROMPT) for name in WEB_OBJECT_CLASSES]


def probe_sets(n: int, seed: int, world: WebWorldConfig = WebWorldConfig()) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Images and object labels of the three probe sets, `n` scenes each, classes taking turns.

    "home": each object on one of its home backgrounds; "other": on a background of another class;
    "only_bg": the "home" scenes' backgrounds alone (same camera noise and blur), labelled with the
    object that was on them. Scene i of "home" and "only_bg" is spec i of stream `seed`; "other" uses
    indices n..2n-1.
    """
    classes = WEB_OBJECT_CLASSES
    home = [scene_spec(seed, i, world, object=classes[i % len(classes)], home=True) for i in range(n)]
    other = [scene_spec(seed, n + i, world, object=classes[i % len(classes)], home=False) for i in range(n)]
    labels = [i % len(classes) for i in range(n)]
    return {
        "home": (np.stack([render_web_scene(s).image for s in home]), labels),
        "other": (np.stack([render_web_scene(s).image for s in other]), labels),
        "only_bg": (np.stack([finish(render_background_layer(s), s) for s in home]), labels),
    }


@torch.no_grad()
def object_accuracy(model: nn.Module, tokenizer: Callable, images: np.ndarray, labels: Sequence[int],
                    mean: Sequence[float], std: Sequence[float], batch_size: int = 256) -> float:
    """Percent of `images` whose highest-scoring `object_prompts()` prompt is their label (mode restored)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        text = nn.functional.normalize(model.encode_text(tokenizer(object_prompts()).to(device)), dim=-1)
        hits = 0
        for start in range(0, len(images), batch_size):
            x = images_to_tensor(images[start:start + batch_size], mean, std).to(device)
            pred = (nn.functional.normalize(model.encode_image(x), dim=-1) @ text.T).argmax(-1).cpu()
            hits += int((pred == torch.tensor(labels[start:start + batch_size])).sum())
    finally:
        model.train(was_training)
    return round(100.0 * hits / len(images), 2)


def web_probe(model: nn.Module, tokenizer: Callable, sets: dict[str, tuple[np.ndarray, list[int]]],
              mean: Sequence[float], std: Sequence[float]) -> dict[str, float]:
    """Object accuracy on each probe set and the context gap ``home - other`` (percentage points)."""
    result = {f"{name}_acc": object_accuracy(model, tokenizer, *sets[name], mean, std) for name in PROBE_SETS}
    result["context_gap"] = round(result["home_acc"] - result["other_acc"], 2)
    return result
