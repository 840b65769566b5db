"""The caption mix of mini-CLIP pre-training: rendered scenes, one caption each, and what each caption states.

Backgrounds are drawn independently of objects (no spurious pairing), so the model has to learn both facts.
Besides the world's own captions (object, often colour and background), a share of captions name only the
object and a share only the background, so each fact has captions of its own. A caption whose text is
already in the batch has its template redrawn, so a batch rarely holds two copies of one text (duplicates
made the objects much slower to learn in the issue's trial runs). :func:`true_of` tells which captions are
also true of other images (known false negatives); :func:`class_captions` gives one caption per class for the
class-caption term.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dapt_core.minclip.config import PretrainConfig
from dapt_core.world.scenes import CAPTION_TEMPLATES, make_caption, render_scene
from dapt_core.world.shapes import OBJECT_CLASSES
from dapt_core.world.task import cycled
from dapt_core.world.textures import BACKGROUND_CLASSES

# Captions that state one fact only; the evaluation prompts are among them.
OBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {object}.",
    "a {object}.",
    "a picture of a {object}.",
    "a drawing of a {object}.",
    "a {colour} {object}.",
    "a photo of a {colour} {object}.",
)
BACKGROUND_TEMPLATES: tuple[str, ...] = (
    "a photo of {background}.",
    "{background}.",
    "a picture of {background}.",
    "a view of {background}.",
    "nothing but {background}.",
)
FACTS = ("object", "colour", "background")  # what a caption can state about a scene


@dataclass
class PairBatch:
    """Rendered images with one caption each and the facts each caption states."""

    images: np.ndarray  # (B, S, S, 3) uint8
    captions: list[str]  # B captions
    facts: list[dict[str, str]]  # per scene, all three facts: object, colour, background
    stated: list[dict[str, str]]  # per caption, the facts it states (a subset of FACTS)


def template_facts(template: str) -> tuple[str, ...]:
    """The facts a caption template states, e.g. ("object", "colour")."""
    return tuple(fact for fact in FACTS if "{" + fact + "}" in template)


def sample_batch(rng: np.random.Generator, n: int, size: int, cfg: PretrainConfig) -> PairBatch:
    """Render `n` scenes and caption each from the caption mix (distinct texts if `cfg.distinct_captions`).

    Scenes come in groups of `cfg.group_size` distinct objects that share one background and one
    colour, so within a group only the shape tells the captions apart (hard negatives for the
    object); with the default group size 1 every scene is drawn on its own. Backgrounds are cycled
    evenly over the groups independently of the objects; a group's colour is the one the world picks
    for its first scene.
    """
    group = min(cfg.group_size, len(OBJECT_CLASSES))
    n_groups = -(-n // group)
    backgrounds = cycled(rng, BACKGROUND_CLASSES, n_groups)
    kinds = rng.random(n)
    images, captions, facts, stated = [], [], [], []
    seen: set[str] = set()
    for g, bg in enumerate(backgrounds):
        colour = None
        for obj in cycled(rng, OBJECT_CLASSES, group)[:n - g * group]:
            scene = render_scene(obj, bg, size, rng, colour=colour)
            colour = scene.colour
            u = kinds[len(images)]
            if u < cfg.object_only_share:
                pool = OBJECT_TEMPLATES
            elif u < cfg.object_only_share + cfg.background_only_share:
                pool = BACKGROUND_TEMPLATES
            else:
                pool = CAPTION_TEMPLATES
            template = pool[rng.integers(len(pool))]
            caption = make_caption(obj, colour, bg, template)
            for _ in range(cfg.caption_redraws if cfg.distinct_captions else 0):
                if caption not in seen:
                    break
                # a caption already in the batch would be a second copy of the same text: try the world's
                # templates, whose object-colour-background combinations rarely repeat
                template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
                caption = make_caption(obj, colour, bg, template)
            seen.add(caption)
            scene_facts = {"object": obj, "colour": colour, "background": bg}
            images.append(scene.image)
            captions.append(caption)
            facts.append(scene_facts)
            stated.append({fact: scene_facts[fact] for fact in template_facts(template)})
    return PairBatch(np.stack(images), captions, facts, stated)


def true_of(batch: PairBatch) -> torch.Tensor:
    """(B, B) bool: entry [i, j] says caption j is true of image i (every fact it states holds)."""
    ok = torch.ones(len(batch.facts), len(batch.stated), dtype=torch.bool)
    for fact in FACTS:
        names = sorted({f[fact] for f in batch.facts})
        code = {name: k for k, name in enumerate(names)}
        scene = torch.tensor([code[f[fact]] for f in batch.facts])  # (B,)
        # -1: the caption is silent on this fact, so any scene satisfies it
        claim = torch.tensor([code.get(s[fact], -2) if fact in s else -1 for s in batch.stated])  # (B,)
        ok &= (claim[None, :] == -1) | (scene[:, None] == claim[None, :])
    return ok


def class_captions(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """One caption per object class and one per background class, each set in one randomly drawn template.

    The object templates are the object-only ones without a colour, the background templates all of
    `BACKGROUND_TEMPLATES`; both evaluation prompts are among them.
    """
    plain = [t for t in OBJECT_TEMPLATES if template_facts(t) == ("object",)]
    obj_template = plain[rng.integers(len(plain))]
    bg_template = BACKGROUND_TEMPLATES[rng.integers(len(BACKGROUND_TEMPLATES))]
    objects = [make_caption(name, "", BACKGROUND_CLASSES[0], obj_template) for name in OBJECT_CLASSES]
    backgrounds = [make_caption(OBJECT_CLASSES[0], "", name, bg_template) for name in BACKGROUND_CLASSES]
    return objects, backgrounds
