"""Objects and extra backgrounds of the web-like world (`dapt_core.world.web`): outlines, fills, textures.

24 object classes, several in look-alike groups whose members differ by a small detail (a square and a
square frame, a pentagon and a hexagon, a tee and an ell). Outlines are polygon layers in unit coordinates,
drawn and cut like `dapt_core.world.shapes` does (the same rasteriser: ``cv2.fillPoly`` without
anti-aliasing, so masks are exact); the 11 shapes of the synth-mini world keep their own module unchanged.
Every outline is told apart from the others by its shape alone under any rotation.

Fills are textured (stripes, spots, noise, a gradient) or flat, in a colour drawn independently of the
class. Five extra background textures (snow, sand, wood, tiles, carpet) join the 11 of
`dapt_core.world.textures`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import cv2
import numpy as np

from dapt_core.world.shapes import (
    _ROUND_VERTICES,
    _SUBPIXEL_BITS,
    _SUBPIXEL_SCALE,
    ObjectPose,
    ShapeLayer,
    UnknownClassError,
    _arrow,
    _cross,
    _heart,
    _polygon,
    _regular,
    _star,
)
from dapt_core.world.textures import _grid, _mix, _rgb, _smooth, _to_uint8


def _layers(*polys: np.ndarray, cuts: tuple[np.ndarray, ...] = ()) -> tuple[ShapeLayer, ...]:
    return tuple(ShapeLayer(p) for p in polys) + tuple(ShapeLayer(c, cut=True) for c in cuts)


def _ellipse(aspect: float) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, _ROUND_VERTICES, endpoint=False)
    return np.stack([np.cos(t), aspect * np.sin(t)], axis=1)


def _dome() -> np.ndarray:
    t = np.linspace(np.pi, 2.0 * np.pi, _ROUND_VERTICES // 2 + 1)
    return _polygon(np.stack([np.cos(t), np.sin(t)], axis=1))


def _drop() -> np.ndarray:
    # a circle whose top is pulled into a point
    t = np.linspace(0.0, 2.0 * np.pi, _ROUND_VERTICES, endpoint=False)
    x, y = np.cos(t), np.sin(t)
    pull = np.clip(-y, 0.0, 1.0) ** 3
    return _polygon(np.stack([x * (1.0 - pull), y - 0.9 * pull], axis=1))


def _keyhole() -> tuple[ShapeLayer, ...]:
    head = _regular(_ROUND_VERTICES, radius=0.45, centre=(0.0, -0.45))
    foot = np.array([(-0.18, -0.3), (0.18, -0.3), (0.38, 0.9), (-0.38, 0.9)])
    return _layers(head, foot)


_SQ = _regular(4, phase=np.pi / 4)
# Outlines by class. Look-alikes (see LOOKALIKE_GROUPS) differ by one detail: a hole, a corner, a point.
_WEB_SHAPES: dict[str, tuple[ShapeLayer, ...]] = {
    "circle": _layers(_regular(_ROUND_VERTICES)),
    "oval": _layers(_ellipse(0.72)),
    "octagon": _layers(_regular(8)),
    "hexagon": _layers(_regular(6)),
    "pentagon": _layers(_polygon(_regular(5))),
    "square": _layers(_SQ),
    "diamond": _layers(_polygon([(0, -1), (0.5, 0), (0, 1), (-0.5, 0)])),
    "kite": _layers(_polygon([(0, -1), (0.55, -0.35), (0, 1), (-0.55, -0.35)])),
    "triangle": _layers(_polygon(_regular(3))),
    "ring": _layers(_regular(_ROUND_VERTICES), cuts=(_regular(_ROUND_VERTICES, radius=0.55),)),
    "frame": _layers(_SQ, cuts=(_regular(4, radius=0.55, phase=np.pi / 4),)),
    "crescent": _layers(_regular(_ROUND_VERTICES),
                        cuts=(_regular(_ROUND_VERTICES, radius=0.85, centre=(0.45, -0.1)),)),
    "dome": _layers(_dome()),
    "drop": _layers(_drop()),
    "heart": _layers(_heart()),
    "star": _layers(_star()),
    "sparkle": _layers(_star(points=4, inner=0.35)),
    "cross": _layers(_cross()),
    "tee": _layers(_polygon([(-1, -1), (1, -1), (1, -0.45), (0.28, -0.45), (0.28, 1), (-0.28, 1),
                             (-0.28, -0.45), (-1, -0.45)])),
    "ell": _layers(_polygon([(-0.6, -1), (-0.05, -1), (-0.05, 0.45), (0.6, 0.45), (0.6, 1), (-0.6, 1)])),
    "arrow": _layers(_arrow()),
    "chevron": _layers(_polygon([(-0.7, -1), (0.7, 0), (-0.7, 1), (-0.7, 0.45), (0.0, 0), (-0.7, -0.45)])),
    "bowtie": _layers(_polygon([(-1, -0.6), (0, -0.1), (1, -0.6), (1, 0.6), (0, 0.1), (-1, 0.6)])),
    "keyhole": _keyhole(),
}

WEB_OBJECT_CLASSES: tuple[str, ...] = tuple(_WEB_SHAPES)

# Classes that differ by a small detail; the home-background map gives no two of a group the same home.
LOOKALIKE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("circle", "oval", "octagon", "ring"),
    ("pentagon", "hexagon", "octagon"),
    ("square", "frame", "diamond", "kite"),
    ("triangle", "kite", "arrow", "chevron"),
    ("crescent", "dome", "drop", "heart"),
    ("star", "sparkle", "cross"),
    ("cross", "tee", "ell"),
    ("bowtie", "keyhole", "drop"),
)


def check_web_object(name: str) -> str:
    """Return `name` if it is a web-world object class, else raise `UnknownClassError` listing the classes."""
    if name not in _WEB_SHAPES:
        raise UnknownClassError(f"object: unknown web-world object class {name!r}; known: "
                                f"{', '.join(WEB_OBJECT_CLASSES)}")
    return name


def _rasterised_unit_area(name: str, side: int = 256) -> float:
    """Area of the outline at radius 1, measured by rasterising it large (exact for any layer layout)."""
    pose = ObjectPose(cx=side / 2, cy=side / 2, radius=side / 2 - 2, angle=0.0)
    return float(web_object_mask(name, side, pose).sum()) / (side / 2 - 2) ** 2


def web_object_mask(name: str, size: int, pose: ObjectPose) -> np.ndarray:
    """Rasterise a web-world object without anti-aliasing; (size, size) bool, True exactly on the object."""
    c, s = np.cos(pose.angle), np.sin(pose.angle)
    rotation = np.array([[c, s], [-s, c]])
    centre = np.array([pose.cx, pose.cy])
    canvas = np.zeros((size, size), dtype=np.uint8)
    for layer in _WEB_SHAPES[check_web_object(name)]:
        fixed = np.round((layer.points @ rotation.T * pose.radius + centre) * _SUBPIXEL_SCALE).astype(np.int32)
        cv2.fillPoly(canvas, [fixed], 0 if layer.cut else 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return canvas.view(bool)


# Mask area of each outline at radius 1 (in squared radii), for drawing objects by their area.
UNIT_AREAS: Mapping[str, float] = MappingProxyType({name: _rasterised_unit_area(name) for name in WEB_OBJECT_CLASSES})

# Object colours: bright ones and muted ones close to the textures' own colours, so that an object is
# often low in contrast with its background. Drawn uniformly, whatever the class and the background.
WEB_COLOURS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (210, 40, 35),
        "green": (45, 160, 60),
        "blue": (40, 75, 210),
        "yellow": (240, 210, 40),
        "orange": (235, 130, 30),
        "purple": (130, 55, 170),
        "pink": (240, 130, 185),
        "white": (240, 240, 240),
        "black": (20, 20, 20),
        "grey": (125, 125, 125),
        "brown": (120, 80, 45),
        "olive": (110, 120, 50),
        "navy": (30, 45, 100),
        "beige": (200, 185, 150),
    }
)
FILLS: tuple[str, ...] = ("flat", "stripes", "spots", "noise", "gradient")


def render_fill(fill: str, colour: str, size: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) uint8 canvas of `colour` with a `fill` pattern of relative amplitude `strength`.

    The pattern darkens and lightens the colour by up to ``strength * 110`` RGB levels; "flat" is the
    plain colour. The caller copies the canvas into the image through the object's mask.
    """
    if fill not in FILLS:
        raise ValueError(f"fill: expected one of {', '.join(FILLS)}, got {fill!r}")
    base = np.array(WEB_COLOURS[colour], dtype=np.float32)
    rows, cols = _grid(size)
    if fill == "flat":
        t = np.zeros((size, size), np.float32)
    elif fill == "stripes":
        angle, period = rng.uniform(0.0, np.pi), rng.uniform(3.0, 8.0)
        along = cols * np.float32(np.cos(angle)) + rows * np.float32(np.sin(angle))
        t = np.sin(along * np.float32(2 * np.pi / period))
    elif fill == "spots":
        t = np.where(_smooth(rng, size, max(2, size // 5)) > 0.6, 1.0, -0.3).astype(np.float32)
    elif fill == "noise":
        t = 2.0 * rng.random((size, size), dtype=np.float32) - 1.0
    else:  # gradient
        angle = rng.uniform(0.0, 2.0 * np.pi)
        t = ((cols * np.float32(np.cos(angle)) + rows * np.float32(np.sin(angle))) / np.float32(size) - 0.5) * 2.0
    return _to_uint8(base + np.float32(110.0 * strength) * t[..., None])


def snow(size: int, rng: np.random.Generator) -> np.ndarray:
    """White snow with soft blue-grey drifts and a sprinkle of bright flakes."""
    t = 0.7 * _smooth(rng, size, 3) + 0.3 * _smooth(rng, size, 9)
    image = _mix(_rgb(175, 190, 210), _rgb(245, 248, 252), np.clip(t, 0.0, 1.0))
    image[rng.random((size, size)) < 0.02] = _rgb(255, 255, 255)
    return _to_uint8(image)


def sand(size: int, rng: np.random.Generator) -> np.ndarray:
    """Pale yellow sand in wind ripples at a random angle, with fine grain."""
    rows, cols = _grid(size)
    angle = rng.uniform(0.0, np.pi)
    k = np.float32(2 * np.pi / (size / rng.uniform(6.0, 10.0)))
    along = cols * np.float32(np.cos(angle)) + rows * np.float32(np.sin(angle))
    ripple = 0.5 + 0.5 * np.sin(along * k + 2.0 * _smooth(rng, size, 3))
    t = 0.6 * ripple + 0.4 * rng.random((size, size), dtype=np.float32)
    return _to_uint8(_mix(_rgb(195, 160, 95), _rgb(240, 215, 150), t))


def wood(size: int, rng: np.random.Generator) -> np.ndarray:
    """Planks of orange-brown wood with wavy grain lines and dark seams."""
    rows, cols = _grid(size)
    planks = int(rng.integers(3, 6))
    width = size / planks
    grain = np.sin((cols + 4.0 * _smooth(rng, size, 4) * width) * np.float32(2 * np.pi / max(2.0, width / 3)))
    shade = rng.uniform(0.0, 0.4, size=planks + 1).astype(np.float32)[(cols // width).astype(int)]
    t = np.clip(0.35 + 0.3 * grain + np.broadcast_to(shade, (size, size)), 0.0, 1.0)
    image = _mix(_rgb(120, 65, 25), _rgb(205, 140, 75), t)
    image[np.broadcast_to((cols % width) < 1.0, (size, size))] = _rgb(60, 35, 15)
    image = image if rng.random() < 0.5 else image.transpose(1, 0, 2)
    return _to_uint8(image)


def tiles(size: int, rng: np.random.Generator) -> np.ndarray:
    """A checkerboard of teal and white ceramic tiles with grey grout."""
    rows, cols = _grid(size)
    cell = size / rng.integers(4, 8)
    offset = rng.uniform(0.0, cell, size=2)
    checker = ((((rows + offset[0]) // cell) + ((cols + offset[1]) // cell)) % 2).astype(np.float32)
    image = _mix(_rgb(30, 130, 140), _rgb(225, 235, 235), checker)
    image += np.float32(15.0) * (rng.random((size, size, 1), dtype=np.float32) - np.float32(0.5))
    grout = (((rows + offset[0]) % cell) < 1.0) | (((cols + offset[1]) % cell) < 1.0)
    image[grout] = _rgb(150, 150, 145)
    return _to_uint8(image)


def carpet(size: int, rng: np.random.Generator) -> np.ndarray:
    """A deep red-purple carpet: dense fibre noise under a faint diamond pattern."""
    rows, cols = _grid(size)
    period = np.float32(size / rng.uniform(3.0, 5.0))
    pattern = np.abs(((rows + cols) % period) / period - 0.5) + np.abs(((rows - cols) % period) / period - 0.5)
    t = 0.55 * rng.random((size, size), dtype=np.float32) + 0.45 * (pattern > 0.5)
    return _to_uint8(_mix(_rgb(90, 20, 45), _rgb(160, 50, 80), t))


EXTRA_TEXTURES = {"snow": snow, "sand": sand, "wood": wood, "tiles": tiles, "carpet": carpet}
