"""How much a CLIP leans on backgrounds: an ImageNet-9-style suite built from exact masks.

After Xiao et al., "Noise or Signal: The Role of Image Backgrounds in Object Recognition" (ICLR 2021), every
base scene (an object on one of its class's *home* backgrounds) is shown in six variants:

- ``original``: the scene as rendered;
- ``only_fg``: the object alone, every other pixel hidden (:func:`dapt_core.preprocess.hide`: the data set's
  mean colour);
- ``only_bg``: the background alone, *rendered without the object*, the pixels under the object included (a
  rendered world needs no inpainting, where ImageNet-9 blacks out or tiles over the object's box);
- ``no_fg``: the object's pixels hidden (mean colour), so its silhouette stays, as in ImageNet-9;
- ``mixed_same``: the same object pixels on a fresh background drawn from its own class's home set;
- ``mixed_rand``: the same object pixels on a fresh background of a random *other* class's home set, never one
  of the object's own home backgrounds.

The classifier is zero-shot through the text tower with :mod:`dapt_core.minclip.zeroshot`'s prompts ("a photo of
a {object}."), or any prompt learner. ``bg_gap = mixed_same - mixed_rand`` in points, with a paired 95% interval
(the two variants share their objects scene by scene). A world is reached through a :class:`SuiteWorld`: its
classes, each class's home backgrounds (with a sentence that says what "same" means there) and how it renders.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from dapt_core.minclip.zeroshot import object_prompts
from dapt_core.preprocess import hide, normalize_pixels

log = logging.getLogger(__name__)

VARIANTS = ("original", "only_fg", "only_bg", "no_fg", "mixed_same", "mixed_rand")
SUITE_STREAM = 221  # spawn key of the suite's scenes (task streams 1-5, pre-training 101, zero-shot 201, attention 211)
Z95 = 1.959964  # two-sided 95% normal quantile
DIGITS = 2  # decimals of the percentages in the result


@dataclass(eq=False)
class SceneParts:
    """One rendered scene with what the variants are cut from."""

    image: np.ndarray  # (H, W, 3) uint8, the scene
    mask: np.ndarray  # (H, W) bool, exactly the object's pixels
    background: np.ndarray  # (H, W, 3) uint8, the same background rendered without the object
    state: object = None  # whatever the world needs to put this object on another background (e.g. its spec)


Renderer = Callable[[str, str, int, np.random.Generator], SceneParts]  # (object, background, size, rng)
Rebackground = Callable[[SceneParts, str, np.random.Generator], np.ndarray]  # (scene, background, rng) -> image


def paste_exact(parts: SceneParts, background: np.ndarray) -> np.ndarray:
    """The scene's object pixels, copied through its exact mask onto ``background`` (same shape)."""
    if background.shape != parts.image.shape:
        raise ValueError(f"background: expected shape {parts.image.shape}, got {background.shape}")
    return np.where(parts.mask[..., None], parts.image, background)


@dataclass(frozen=True)
class SuiteWorld:
    """What the suite needs of a world (:mod:`dapt_core.experiments.bias_worlds` builds them)."""

    name: str  # shown in the report
    classnames: tuple[str, ...]  # object classes, in label order
    home: Mapping[str, tuple[str, ...]]  # class -> its home backgrounds (where its objects usually sit)
    same_rule: str  # one sentence for the report: what "its own class's background" means in this world
    render: Renderer  # one scene: object on background, with the background alone
    rebackground: Rebackground  # the scene's object on a fresh instance of another background
    prompts: Callable[[Sequence[str]], list[str]] = object_prompts  # one zero-shot prompt per class

    def __post_init__(self) -> None:
        missing = [c for c in self.classnames if not self.home.get(c)]
        if missing:
            raise ValueError(f"world {self.name!r}: no home background for {', '.join(missing)}")
        if not any(self.rand_options(c) for c in self.classnames):
            raise ValueError(f"world {self.name!r}: every class shares every home background, so Mixed-Rand has "
                             "no background to draw from")

    @property
    def backgrounds(self) -> tuple[str, ...]:
        """Every home background of the world, in order of first appearance."""
        return tuple(dict.fromkeys(b for c in self.classnames for b in self.home[c]))

    def rand_options(self, name: str) -> list[tuple[str, tuple[str, ...]]]:
        """(other class, its home backgrounds that are not ``name``'s) for each class Mixed-Rand may draw from."""
        own = set(self.home[name])
        options = [(other, tuple(b for b in self.home[other] if b not in own)) for other in self.classnames
                   if other != name]
        return [(other, bgs) for other, bgs in options if bgs]


@dataclass(eq=False)
class SuiteScenes:
    """The six variants' raw material for ``len(labels)`` base scenes, parallel arrays."""

    labels: np.ndarray  # (N,) int64 into the world's classnames
    images: np.ndarray  # (N, S, S, 3) uint8, original scenes
    masks: np.ndarray  # (N, S, S) bool
    only_bg: np.ndarray  # (N, S, S, 3) uint8, each scene's background without its object
    mixed_same: np.ndarray  # (N, S, S, 3) uint8
    mixed_rand: np.ndarray  # (N, S, S, 3) uint8
    backgrounds: dict[str, list[str]] = field(default_factory=dict)  # variant -> background name per scene


def _pick(rng: np.random.Generator, options: Sequence) -> object:
    return options[int(rng.integers(len(options)))]


def suite_scenes(world: SuiteWorld, per_class: int, seed: int, size: int) -> SuiteScenes:
    """``per_class`` base scenes per class, each on a home background, with their variants' backgrounds.

    Classes without any Mixed-Rand option (every other class's home is inside theirs) are left out, and logged.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class: expected an integer >= 1, got {per_class!r}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SUITE_STREAM,)))
    rows: dict[str, list] = {k: [] for k in ("labels", "images", "masks", "only_bg", "mixed_same", "mixed_rand")}
    names: dict[str, list[str]] = {"original": [], "mixed_same": [], "mixed_rand": []}
    for label, name in enumerate(world.classnames):
        options = world.rand_options(name)
        if not options:
            log.warning("class %r left out: every other class's home backgrounds are among its own", name)
            continue
        for _ in range(per_class):
            bg = _pick(rng, world.home[name])
            parts = world.render(name, bg, size, rng)
            same = _pick(rng, world.home[name])
            _, others = _pick(rng, options)
            rand = _pick(rng, others)
            rows["mixed_same"].append(world.rebackground(parts, same, rng))
            rows["mixed_rand"].append(world.rebackground(parts, rand, rng))
            rows["labels"].append(label)
            rows["images"].append(parts.image)
            rows["masks"].append(parts.mask)
            rows["only_bg"].append(parts.background)
            for key, value in (("original", bg), ("mixed_same", same), ("mixed_rand", rand)):
                names[key].append(value)
    arrays = {k: np.stack(v) for k, v in rows.items()}
    return SuiteScenes(labels=arrays["labels"].astype(np.int64), images=arrays["images"], masks=arrays["masks"],
                       only_bg=arrays["only_bg"], mixed_same=arrays["mixed_same"], mixed_rand=arrays["mixed_rand"],
                       backgrounds=names)


def variant_input(scenes: SuiteScenes, variant: str, mean: Sequence[float], std: Sequence[float],
                  index: slice | None = None) -> torch.Tensor:
    """The model input of one variant: (n, 3, S, S) float32, normalised, with hidden pixels at 0 (the mean)."""
    index = slice(None) if index is None else index
    if variant in ("original", "only_fg", "no_fg"):
        x = normalize_pixels(scenes.images[index], mean, std)
        if variant == "original":
            return x
        keep = torch.from_numpy(scenes.masks[index]).float().unsqueeze(1)  # (n, 1, S, S)
        return hide(x, keep if variant == "only_fg" else 1.0 - keep)
    if variant in ("only_bg", "mixed_same", "mixed_rand"):
        return normalize_pixels(getattr(scenes, variant)[index], mean, std)
    raise ValueError(f"variant: unknown {variant!r}; choose from {', '.join(VARIANTS)}")


class ZeroShotClassifier(nn.Module):
    """Zero-shot CLIP over the world's class prompts: images -> (B, C) cosine logits."""

    def __init__(self, backbone, prompts: list[str]) -> None:
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            tokens = backbone.tokenizer(prompts).to(backbone.device)
            self.text = nn.functional.normalize(backbone.model.encode_text(tokens), dim=-1)  # (C, E)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.backbone.model.encode_image(images), dim=-1) @ self.text.T


def learner_classifier(learner) -> Callable[[torch.Tensor], torch.Tensor]:
    """A prompt learner's class logits with its text features computed once (a tuned model in the suite)."""
    with torch.no_grad():
        text = learner.frozen_text_features()
    return lambda images: learner(images, text)


@torch.no_grad()
def classified_correctly(classify: Callable[[torch.Tensor], torch.Tensor],
                         inputs: Callable[[slice], torch.Tensor], labels: np.ndarray,
                         batch_size: int = 256) -> np.ndarray:
    """(N,) bool: whether the argmax of ``classify`` on each input is its label; ``inputs(index)`` gives the model
    input of the rows ``index`` (a slice), batch by batch."""
    hits = []
    for start in range(0, len(labels), batch_size):
        index = slice(start, start + batch_size)
        hits.append(classify(inputs(index)).argmax(-1).cpu().numpy() == labels[index])
    return np.concatenate(hits)


def correct_per_scene(classify: Callable[[torch.Tensor], torch.Tensor], scenes: SuiteScenes, variant: str,
                      mean: Sequence[float], std: Sequence[float], device: torch.device,
                      batch_size: int = 256) -> np.ndarray:
    """(N,) bool: whether each scene's variant is classified as its object's class."""
    return classified_correctly(classify, lambda index: variant_input(scenes, variant, mean, std, index).to(device),
                                scenes.labels, batch_size)


def wilson_interval(hits: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion, in percent."""
    if n <= 0:
        raise ValueError("wilson_interval: n must be >= 1")
    p = hits / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return 100.0 * (centre - half), 100.0 * (centre + half)


def paired_interval(differences: np.ndarray) -> tuple[float, float, float]:
    """Mean of paired per-scene differences and its 95% normal interval: (mean, low, high), NaNs left out."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[~np.isnan(d)]
    if len(d) < 2:
        raise ValueError(f"paired_interval: need at least two paired values, got {len(d)}")
    mean = float(d.mean())
    half = Z95 * float(d.std(ddof=1)) / math.sqrt(len(d))
    return mean, mean - half, mean + half


def summarise(correct: Mapping[str, np.ndarray], n_classes: int) -> dict:
    """Accuracies with Wilson intervals, BG-Gap with its paired interval, chance and Only-BG over chance.

    Args:
        correct: variant -> (N,) bool per scene, every variant over the same scenes in the same order.
        n_classes: classes the classifier chooses among (chance = 1 / n_classes).
    """
    out: dict = {"units": "percent", "n": int(len(correct["original"])),
                 "chance": round(100.0 / n_classes, DIGITS)}
    for variant in VARIANTS:
        hits = correct[variant]
        low, high = wilson_interval(int(hits.sum()), len(hits))
        out[variant] = round(100.0 * float(hits.mean()), DIGITS)
        out[f"{variant}_ci"] = [round(low, DIGITS), round(high, DIGITS)]
    gap, low, high = paired_interval(100.0 * (correct["mixed_same"].astype(float) - correct["mixed_rand"]))
    out["bg_gap"] = round(gap, DIGITS)
    out["bg_gap_ci"] = [round(low, DIGITS), round(high, DIGITS)]
    out["only_bg_over_chance"] = round(float(correct["only_bg"].mean()) * n_classes, 3)
    return out


def run_suite(backbone, world: SuiteWorld, per_class: int, seed: int, *, learner=None,
              scenes: SuiteScenes | None = None) -> dict:
    """The six accuracies of one model on ``per_class`` fresh base scenes per class.

    Args:
        backbone: a loaded :class:`dapt_core.backbones.Backbone`; scenes are rendered at its input size.
        world: the world and its home backgrounds.
        per_class: base scenes per class.
        seed: seeds the scenes (spawn key :data:`SUITE_STREAM`).
        learner: a prompt learner over ``world.classnames`` to measure instead of zero-shot CLIP.
        scenes: the scenes, when the caller already made them with :func:`suite_scenes` (same arguments).

    Returns:
        :func:`summarise`'s dict plus ``backbone``, ``pretrained``, ``classifier``, ``world``, ``same_rule``,
        ``seed`` and ``per_class``.
    """
    if learner is not None and list(learner.classnames) != list(world.classnames):
        raise ValueError("learner: its classes differ from the world's; the suite labels scenes by the world's")
    scenes = scenes if scenes is not None else suite_scenes(world, per_class, seed, backbone.image_size)
    with backbone.lock:
        if learner is None:
            classify = ZeroShotClassifier(backbone, world.prompts(world.classnames))
            classifier = f"zero-shot, one prompt per class (\"{world.prompts(world.classnames[:1])[0]}\", ...)"
        else:
            learner.eval()
            classify, classifier = learner_classifier(learner), f"prompt learner ({learner.kind})"
        correct = {v: correct_per_scene(classify, scenes, v, backbone.mean, backbone.std, backbone.device)
                   for v in VARIANTS}
    return {"backbone": backbone.name, "pretrained": backbone.pretrained, "classifier": classifier,
            "world": world.name, "same_rule": world.same_rule, "seed": seed, "per_class": per_class,
            **summarise(correct, len(world.classnames)),
            "only_bg_ceiling": round(only_bg_ceiling(world, scenes.backgrounds["original"]), DIGITS)}


def only_bg_ceiling(world: SuiteWorld, backgrounds: Sequence[str]) -> float:
    """The best Only-BG accuracy (percent) a reader of the background class alone can expect on these scenes.

    A background that is home to k classes names the right one of them at best 1/k of the time (the classes'
    scenes are equally many), so the ceiling is the mean of 1/k over the scenes' backgrounds.
    """
    sharing = {b: sum(b in world.home[c] for c in world.classnames) for b in world.backgrounds}
    return 100.0 * float(np.mean([1.0 / sharing[b] for b in backgrounds]))
