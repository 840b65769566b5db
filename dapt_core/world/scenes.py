"""The synthetic world: one flat-coloured object on one textured background, with its exact mask.

A scene is made in four steps, each drawing from the same `numpy.random.Generator` in this order:
the background (`render_background`), the object's pose (`sample_pose`), the object's colour (from
the colours that stand out against the background pixels the object covers) and the caption
template. The object is first rasterised into a boolean mask and its colour is then copied into the
image through that same mask, so the mask is exact by construction and the pixels outside it are
the background exactly as `render_background` drew it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from dapt_core.world.shapes import OBJECT_CLASSES, PoseConfig, check_object, render_object_mask, sample_pose
from dapt_core.world.textures import BACKGROUND_CLASSES, check_background, render_background

# Object colours, RGB. Every one is a plain colour word, so a caption can name it.
COLOURS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (220, 30, 30),
        "green": (30, 175, 60),
        "blue": (30, 70, 225),
        "yellow": (250, 220, 30),
        "orange": (250, 135, 20),
        "purple": (135, 45, 180),
        "pink": (250, 120, 190),
        "white": (250, 250, 250),
        "black": (15, 15, 15),
        "cyan": (40, 220, 230),
    }
)
_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)  # (C, 3)

# How each background is spoken of in a caption; every phrase contains the vocabulary word itself.
BACKGROUND_PHRASES: Mapping[str, str] = MappingProxyType(
    {
        "grass": "grass",
        "sky": "the sky",
        "water": "water",
        "road": "a road",
        "wall": "a brick wall",
        "tree": "a tree",
        "rock": "rock",
        "cloud": "clouds",
        "ground": "the ground",
        "building": "a building",
        "railway": "a railway",
    }
)

# Caption templates; fields {colour}, {object}, {background} (the latter as in BACKGROUND_PHRASES).
# "a" before a vowel is turned into "an" after filling in.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {colour} {object} on {background}.",
    "a {object} in front of {background}.",
    "{background} behind a {colour} {object}.",
    "a photo of a {object}.",
    "a {colour} {object}.",
    "a picture of a {object} with {background} in the background.",
    "a {colour} {object} against {background}.",
    "a drawing of a {colour} {object} over {background}.",
    "a {object} surrounded by {background}.",
    "a close-up of a {colour} {object}.",
    "a photo of a {object} and {background}.",
)
_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")

# Pixels compared per colour when checking contrast; enough for a stable low quantile.
_CONTRAST_SAMPLES = 256
# Textures shrink to mush below this side length.
MIN_SIZE = 16


@dataclass(frozen=True)
class SceneConfig:
    """How objects are placed and coloured."""

    pose: PoseConfig = field(default_factory=PoseConfig)  # object size and placement ranges
    min_contrast: float = 80.0  # least RGB distance (0..441) a colour must keep from the covered pixels
    contrast_quantile: float = 0.1  # ... at this quantile of those pixels, so a few look-alikes are tolerated


DEFAULT_SCENE_CONFIG = SceneConfig()


@dataclass(eq=False)
class Scene:
    """One rendered sample of the synthetic world."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) bool, True exactly on the object's pixels
    object: str  # entry of OBJECT_CLASSES
    background: str  # entry of BACKGROUND_CLASSES
    colour: str  # key of COLOURS; the object's RGB is COLOURS[colour]
    caption: str  # text naming the object (always), and often its colour and the background


def check_size(size: int) -> int:
    """Return `size` if it is a usable image side, else raise ValueError."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"size: expected an integer image side >= {MIN_SIZE}, got {size!r}")
    return int(size)


def check_colour(name: str) -> str:
    """Return `name` if it is a key of `COLOURS`, else raise ValueError listing the colours."""
    if name not in COLOURS:
        raise ValueError(f"colour: unknown colour {name!r}; known: {', '.join(COLOURS)}")
    return name


def colour_contrast(pixels: np.ndarray, quantile: float = DEFAULT_SCENE_CONFIG.contrast_quantile) -> np.ndarray:
    """How far each palette colour stands from a set of background pixels.

    Args:
        pixels: (N, 3) RGB values in [0, 255], N >= 1. Large sets are thinned to every k-th pixel
            (at most `_CONTRAST_SAMPLES`), which keeps the cost flat at any image size.
        quantile: which quantile of the per-pixel distances to report, in [0, 1] (the lower
            order statistic, no interpolation).

    Returns:
        (len(COLOURS),) float32, the `quantile` of the Euclidean RGB distances (0..441) between each
        colour, in the order of `COLOURS`, and the pixels.
    """
    if len(pixels) == 0:
        raise ValueError("pixels: expected at least one background pixel to compare colours with, got none")
    step = -(-len(pixels) // _CONTRAST_SAMPLES)
    sample = pixels[::step].astype(np.float32)  # (N', 3)
    diff = _PALETTE[:, None, :] - sample[None, :, :]  # (C, N', 3)
    squared = np.einsum("cnk,cnk->cn", diff, diff)
    k = int(quantile * (squared.shape[1] - 1))
    return np.sqrt(np.partition(squared, k, axis=1)[:, k])


def choose_colour(pixels: np.ndarray, rng: np.random.Generator, config: SceneConfig = DEFAULT_SCENE_CONFIG) -> str:
    """Pick a colour uniformly among those that stand out against `pixels`.

    Takes exactly one draw from `rng`. If no colour reaches `config.min_contrast`, the one with the
    highest contrast is returned, still after one draw, so the stream stays aligned.

    Args:
        pixels: (N, 3) RGB background pixels the object will cover, N >= 1.
        rng: the random stream.
        config: contrast threshold and quantile.

    Returns:
        A key of `COLOURS`.
    """
    contrast = colour_contrast(pixels, config.contrast_quantile)
    allowed = np.flatnonzero(contrast >= config.min_contrast)
    pick = rng.integers(max(len(allowed), 1))
    index = allowed[pick] if len(allowed) else int(np.argmax(contrast))
    return tuple(COLOURS)[index]


def make_caption(object: str, colour: str, background: str, template: str) -> str:
    """Fill one caption template, with "a" turned into "an" before a vowel."""
    text = template.format(object=object, colour=colour, background=BACKGROUND_PHRASES[background])
    return _ARTICLE.sub(r"\1n ", text)


def render_scene(
    object: str,
    background: str,
    size: int,
    rng: np.random.Generator,
    colour: str | None = None,
    config: SceneConfig = DEFAULT_SCENE_CONFIG,
) -> Scene:
    """Render one object of a random pose and colour on one background.

    Args:
        object: an entry of `OBJECT_CLASSES`.
        background: an entry of `BACKGROUND_CLASSES`.
        size: image side in pixels, >= `MIN_SIZE`.
        rng: the random stream; the same stream state gives the same scene.
        colour: a key of `COLOURS` to force; None picks one that contrasts with the background (the
            colour draw is taken from `rng` either way).
        config: placement and contrast settings.

    Returns:
        The scene; ``image[mask]`` is all ``COLOURS[colour]``.
    """
    check_object(object)
    size = check_size(size)
    if colour is not None:
        check_colour(colour)
    image = render_background(background, size, rng)
    mask = render_object_mask(object, size, sample_pose(size, rng, config.pose))
    chosen = choose_colour(image[mask], rng, config)
    colour = chosen if colour is None else colour
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    image[mask] = COLOURS[colour]
    return Scene(image, mask, object, background, colour, make_caption(object, colour, background, template))


def check_names(
    names: Sequence[str] | None, default: tuple[str, ...], check: Callable[[str], str], argument: str
) -> tuple[str, ...]:
    """Validate a list of class names (`default` when None): non-empty, no repeats, each known to `check`."""
    if names is None:
        return default
    names = tuple(names)
    if not names:
        raise ValueError(f"{argument}: expected at least one name, got none")
    if len(set(names)) != len(names):
        raise ValueError(f"{argument}: names repeat in {names}")
    for name in names:
        check(name)
    return names


def check_count(value: int, argument: str, minimum: int = 0) -> int:
    """Return `value` as an int if it is an integer >= `minimum`, else raise ValueError naming `argument`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{argument}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def iter_scenes(
    n: int,
    seed: int,
    size: int = 64,
    objects: Sequence[str] | None = None,
    backgrounds: Sequence[str] | None = None,
    pairing: Mapping[str, str] | None = None,
    config: SceneConfig = DEFAULT_SCENE_CONFIG,
) -> Iterator[Scene]:
    """Yield `n` scenes from one random stream seeded by `seed`.

    Objects take turns (scene i shows ``objects[i % len(objects)]``), so classes stay balanced.
    Without `pairing` each scene's background is drawn uniformly from `backgrounds`; with it, every
    object is always shown on ``pairing[object]``.

    Args:
        n: number of scenes, >= 0.
        seed: seed of the stream; the same arguments always give the same scenes.
        size: image side in pixels.
        objects: object classes to use; default all of `OBJECT_CLASSES` (or the keys of `pairing`).
        backgrounds: background classes to draw from; default all of `BACKGROUND_CLASSES`. Not
            allowed together with `pairing`.
        pairing: object -> background; every object in use must have an entry.
        config: placement and contrast settings.

    Yields:
        Scene objects.
    """
    n = check_count(n, "n")
    size = check_size(size)
    if pairing is not None and backgrounds is not None:
        raise ValueError("backgrounds: pass either backgrounds or pairing, not both")
    default_objects = tuple(pairing) if pairing is not None else OBJECT_CLASSES
    objects = check_names(objects, default_objects, check_object, "objects")
    backgrounds = check_names(backgrounds, BACKGROUND_CLASSES, check_background, "backgrounds")
    if pairing is not None:
        missing = [name for name in objects if name not in pairing]
        if missing:
            raise ValueError(f"pairing: no background given for objects {missing}")
        for name in objects:
            check_background(pairing[name])
    rng = np.random.default_rng(seed)
    for i in range(n):
        obj = objects[i % len(objects)]
        bg = pairing[obj] if pairing is not None else backgrounds[rng.integers(len(backgrounds))]
        yield render_scene(obj, bg, size, rng, config=config)


def generate(
    n: int,
    seed: int,
    size: int = 64,
    objects: Sequence[str] | None = None,
    backgrounds: Sequence[str] | None = None,
    pairing: Mapping[str, str] | None = None,
    config: SceneConfig = DEFAULT_SCENE_CONFIG,
) -> list[Scene]:
    """The scenes of `iter_scenes` as a list; see there for the arguments."""
    return list(iter_scenes(n, seed, size, objects, backgrounds, pairing, config))
