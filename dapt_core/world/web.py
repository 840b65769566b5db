"""The web-like world: objects that sit on their usual backgrounds, captioned like alt-text, with exact masks.

Pre-training on this world gives a CLIP the context bias of web data (issue 14): every object class has two
home backgrounds it appears on with probability `WebWorldConfig.p_home` (else on one of the other classes'
backgrounds), and captions name the object and only rarely the background. Nothing else about the object
carries its class: its colour is drawn independently of the class, its fill is often textured or close to
the background in tone, its area is 2-25% of the image (log-uniform), it is sometimes cut by the border,
and the whole picture gets pixel noise and blur.

A scene is described by a :class:`WebSpec` (every random choice already made), so its parts can be rendered
apart and recombined: :func:`render_object_layer` (the object's pixels and exact mask),
:func:`render_background_layer` (the background alone), :func:`composite` and :func:`finish` (noise and
blur), which :func:`render_web_scene` chains. :func:`scene_spec` draws the spec of scene ``index`` of stream
``seed``, so any scene can be remade from two integers; :func:`with_background` swaps the background of a
spec (for Mixed-Same / Mixed-Rand suites). See /work/notes/world-api.md for the suite's use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import cv2
import numpy as np

from dapt_core.world.shapes import ObjectPose, UnknownClassError
from dapt_core.world.textures import BACKGROUND_CLASSES, render_background
from dapt_core.world.web_shapes import (
    EXTRA_TEXTURES,
    FILLS,
    UNIT_AREAS,
    WEB_COLOURS,
    WEB_OBJECT_CLASSES,
    check_web_object,
    render_fill,
    web_object_mask,
)

WEB_BACKGROUND_CLASSES: tuple[str, ...] = BACKGROUND_CLASSES + tuple(EXTRA_TEXTURES)

# Two home backgrounds per class, three classes per background; no two classes of a look-alike group
# (web_shapes.LOOKALIKE_GROUPS) share a home, so the background tells look-alikes apart.
HOME_BACKGROUNDS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "circle": ("railway", "tiles"),
        "oval": ("road", "snow"),
        "octagon": ("sky", "wood"),
        "hexagon": ("tree", "wall"),
        "pentagon": ("ground", "sand"),
        "square": ("water", "rock"),
        "diamond": ("cloud", "building"),
        "kite": ("grass", "carpet"),
        "triangle": ("building", "cloud"),
        "ring": ("carpet", "sand"),
        "frame": ("ground", "tree"),
        "crescent": ("wall", "water"),
        "dome": ("tiles", "road"),
        "drop": ("sky", "railway"),
        "heart": ("grass", "wood"),
        "star": ("snow", "rock"),
        "sparkle": ("tiles", "carpet"),
        "cross": ("sand", "cloud"),
        "tee": ("sky", "building"),
        "ell": ("grass", "ground"),
        "arrow": ("road", "wood"),
        "chevron": ("tree", "railway"),
        "bowtie": ("water", "wall"),
        "keyhole": ("snow", "rock"),
    }
)

WEB_BACKGROUND_PHRASES: Mapping[str, str] = MappingProxyType(
    {"grass": "grass", "sky": "the sky", "water": "water", "road": "a road", "wall": "a brick wall",
     "tree": "a tree", "rock": "rock", "cloud": "clouds", "ground": "the ground", "building": "a building",
     "railway": "a railway", "snow": "snow", "sand": "sand", "wood": "wooden planks", "tiles": "tiles",
     "carpet": "a carpet"}
)

# Alt-text-like captions. Most name the object only (sometimes its colour); a few also name the background.
OBJECT_CAPTIONS: tuple[str, ...] = (
    "a photo of a {object}.", "a {object}.", "{object}.", "a picture of a {object}.", "a {colour} {object}.",
    "a close-up of a {object}.", "a small {object}.", "my {object}.", "a {object} for sale.",
    "a photo of a {colour} {object}.", "the {object}.", "an image of a {object}.",
)
BACKGROUND_CAPTIONS: tuple[str, ...] = (
    "a {object} on {background}.", "a photo of a {object} on {background}.",
    "a {colour} {object} in front of {background}.", "a {object} and {background}.",
)
_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")
WEB_STREAM = 301  # spawn key of `scene_spec`'s streams, apart from every synth-mini stream


@dataclass(frozen=True)
class WebWorldConfig:
    """The knobs of the web-like corpus (the defaults are the `synth-web` pre-training corpus)."""

    size: int = 64  # image side in pixels
    p_home: float = 0.85  # probability that a scene's background is one of its object's home backgrounds
    min_area: float = 0.02  # smallest object area, fraction of the image (before cropping at the border)
    max_area: float = 0.25  # largest object area, fraction of the image; areas are log-uniform in between
    p_crop: float = 0.2  # probability that the object is placed across the border (partly cut off)
    p_background_caption: float = 0.1  # share of captions that also name the background
    p_flat: float = 0.3  # share of flat fills; the rest are textured (stripes, spots, noise, gradient)
    max_fill_strength: float = 0.6  # a textured fill's amplitude is uniform in [0.15, this] (x 110 RGB levels)
    max_noise: float = 12.0  # pixel noise sigma, uniform in [0, this] RGB levels
    p_blur: float = 0.5  # probability of a Gaussian blur
    max_blur: float = 1.2  # its sigma, uniform in [0.3, this] pixels

    def __post_init__(self) -> None:
        for name in ("p_home", "p_crop", "p_background_caption", "p_flat"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 < self.min_area <= self.max_area < 1.0:
            raise ValueError(f"min_area, max_area: expected 0 < min_area <= max_area < 1, got "
                             f"{self.min_area}, {self.max_area}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 16:
            raise ValueError(f"size: expected an integer image side >= 16, got {self.size!r}")


DEFAULT_WEB_CONFIG = WebWorldConfig()


@dataclass(frozen=True)
class WebSpec:
    """Every random choice of one scene; the render functions are pure functions of it."""

    object: str  # entry of WEB_OBJECT_CLASSES
    background: str  # entry of WEB_BACKGROUND_CLASSES
    size: int  # image side, pixels
    pose: ObjectPose  # centre, radius (of the outline's unit disk) and angle, pixels
    colour: str  # key of WEB_COLOURS
    fill: str  # entry of FILLS
    fill_strength: float  # the fill pattern's amplitude (0 for "flat")
    object_seed: int  # seeds the fill pattern
    background_seed: int  # seeds the background texture
    noise_sigma: float  # pixel noise, RGB levels
    blur_sigma: float  # Gaussian blur, pixels (0 = none)
    finish_seed: int  # seeds the pixel noise
    caption: str = ""  # the alt-text of the scene as drawn (it may name the original background)
    stated: tuple[str, ...] = field(default=("object",))  # facts the caption states: object, colour, background

    @property
    def home(self) -> bool:
        """Whether the background is one of the object's home backgrounds."""
        return self.background in HOME_BACKGROUNDS[self.object]


@dataclass(eq=False)
class WebScene:
    """A rendered web-world scene."""

    image: np.ndarray  # (S, S, 3) uint8 RGB, after noise and blur
    mask: np.ndarray  # (S, S) bool, True exactly on the object's pixels (the geometry, before blur)
    spec: WebSpec


def check_web_background(name: str) -> str:
    """Return `name` if it is a web-world background, else raise `UnknownClassError` listing them."""
    if name not in WEB_BACKGROUND_CLASSES:
        raise UnknownClassError(f"background: unknown web-world background {name!r}; known: "
                                f"{', '.join(WEB_BACKGROUND_CLASSES)}")
    return name


def other_backgrounds(object: str) -> tuple[str, ...]:
    """The backgrounds that are not `object`'s home (each is the home of some other class)."""
    return tuple(b for b in WEB_BACKGROUND_CLASSES if b not in HOME_BACKGROUNDS[check_web_object(object)])


def web_caption(object: str, colour: str, background: str, template: str) -> str:
    """Fill one caption template, "a" turned into "an" before a vowel."""
    text = template.format(object=object, colour=colour, background=WEB_BACKGROUND_PHRASES[background])
    return _ARTICLE.sub(r"\1n ", text)


def _sample_pose(object: str, rng: np.random.Generator, cfg: WebWorldConfig) -> ObjectPose:
    """Radius from a log-uniform area; centre inside the image, or across one border with `p_crop`.

    The radius is that of the outline's unit disk, so the drawn area is the sampled one up to rasterising
    (a few percent at 64 px); an uncropped object keeps its disk inside the image.
    """
    s = cfg.size
    area = np.exp(rng.uniform(np.log(cfg.min_area), np.log(cfg.max_area))) * s * s
    radius = float(np.sqrt(area / UNIT_AREAS[object]))
    crop, side, depth, u, v, angle = rng.random() < cfg.p_crop, rng.integers(4), rng.uniform(0.05, 0.5), *rng.random(3)
    if crop:
        along, across = u * (s - 1), depth * radius
        cx, cy = [(across, along), (s - 1 - across, along), (along, across), (along, s - 1 - across)][side]
    else:
        radius = min(radius, (s - 3) / 2)  # an outline whose disk outgrows the image is shrunk to fit
        lo, hi = radius + 1.0, s - 2.0 - radius
        cx, cy = lo + u * (hi - lo), lo + v * (hi - lo)
    return ObjectPose(cx=float(cx), cy=float(cy), radius=radius, angle=float(2 * np.pi * angle))


def sample_spec(rng: np.random.Generator, cfg: WebWorldConfig = DEFAULT_WEB_CONFIG, object: str | None = None,
                home: bool | None = None) -> WebSpec:
    """Draw one scene's spec from `rng` (a fixed number of draws whatever the arguments).

    Args:
        rng: the random stream.
        cfg: the corpus knobs.
        object: force the class (None: uniform over `WEB_OBJECT_CLASSES`).
        home: force a home background (True) or another class's background (False); None: home with
            probability ``cfg.p_home``. Within either set the background is uniform.
    """
    drawn = WEB_OBJECT_CLASSES[rng.integers(len(WEB_OBJECT_CLASSES))]
    object = drawn if object is None else check_web_object(object)
    at_home = rng.random() < cfg.p_home
    at_home = at_home if home is None else bool(home)
    pool = HOME_BACKGROUNDS[object] if at_home else other_backgrounds(object)
    background = pool[rng.integers(len(pool))]
    pose = _sample_pose(object, rng, cfg)
    colour = tuple(WEB_COLOURS)[rng.integers(len(WEB_COLOURS))]
    flat = rng.random() < cfg.p_flat
    fill = "flat" if flat else FILLS[1 + rng.integers(len(FILLS) - 1)]
    strength = 0.0 if flat else float(rng.uniform(0.15, cfg.max_fill_strength))
    seeds = rng.integers(2**31, size=3)
    noise = float(rng.uniform(0.0, cfg.max_noise))
    blur = float(rng.uniform(0.3, cfg.max_blur)) if rng.random() < cfg.p_blur else 0.0
    with_bg = rng.random() < cfg.p_background_caption
    pool = BACKGROUND_CAPTIONS if with_bg else OBJECT_CAPTIONS
    template = pool[rng.integers(len(pool))]
    stated = tuple(f for f in ("object", "colour", "background") if "{" + f + "}" in template)
    return WebSpec(object, background, cfg.size, pose, colour, fill, strength, int(seeds[0]), int(seeds[1]),
                   noise, blur, int(seeds[2]), web_caption(object, colour, background, template), stated)


def scene_spec(seed: int, index: int, cfg: WebWorldConfig = DEFAULT_WEB_CONFIG, object: str | None = None,
               home: bool | None = None) -> WebSpec:
    """The spec of scene `index` of stream `seed`: the same integers always give the same scene.

    Each (seed, index) has its own stream (``SeedSequence(seed, spawn_key=(WEB_STREAM, index))``), so
    scenes can be made in any order or in parallel. See `sample_spec` for `object` and `home`.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(WEB_STREAM, index)))
    return sample_spec(rng, cfg, object, home)


def with_background(spec: WebSpec, background: str, background_seed: int | None = None) -> WebSpec:
    """`spec` with another background (and texture seed; None keeps the seed). The object is unchanged."""
    check_web_background(background)
    seed = spec.background_seed if background_seed is None else int(background_seed)
    return replace(spec, background=background, background_seed=seed)


def render_object_layer(spec: WebSpec) -> tuple[np.ndarray, np.ndarray]:
    """The object alone: (S, S, 3) uint8 RGB (zero outside the mask) and its exact (S, S) bool mask.

    Depends only on the object fields of `spec` (class, pose, colour, fill, object_seed), never on the
    background, so the same object can be pasted on any background.
    """
    mask = web_object_mask(spec.object, spec.size, spec.pose)
    canvas = render_fill(spec.fill, spec.colour, spec.size, spec.fill_strength, np.random.default_rng(spec.object_seed))
    rgb = np.zeros_like(canvas)
    rgb[mask] = canvas[mask]
    return rgb, mask


def render_background_layer(spec: WebSpec) -> np.ndarray:
    """The background alone, (S, S, 3) uint8 RGB, from `spec.background` and `spec.background_seed`."""
    rng = np.random.default_rng(spec.background_seed)
    name = check_web_background(spec.background)
    if name in EXTRA_TEXTURES:
        return EXTRA_TEXTURES[name](spec.size, rng)
    return render_background(name, spec.size, rng)


def composite(background: np.ndarray, object_rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`background` with the object's pixels copied in through `mask` (a new array)."""
    image = background.copy()
    image[mask] = object_rgb[mask]
    return image


def finish(image: np.ndarray, spec: WebSpec) -> np.ndarray:
    """The camera's part: Gaussian blur (`spec.blur_sigma`), then pixel noise (`spec.noise_sigma`); uint8."""
    out = image.astype(np.float32)
    if spec.blur_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), spec.blur_sigma)
    if spec.noise_sigma > 0:
        out += np.random.default_rng(spec.finish_seed).normal(0.0, spec.noise_sigma, out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_web_scene(spec: WebSpec) -> WebScene:
    """Render a spec: background, object pasted through its exact mask, then blur and noise."""
    rgb, mask = render_object_layer(spec)
    return WebScene(finish(composite(render_background_layer(spec), rgb, mask), spec), mask, spec)
