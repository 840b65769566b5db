"""Foreground objects of the synthetic world: unit outlines, random poses and exact masks.

Every object class is a short list of polygon layers in unit coordinates (each layer fits in the unit
disk, y pointing down as in image rows). A layer either adds to the object or cuts a hole out of what
was drawn before it, which is how the ring and the crescent are made. Masks are drawn with
``cv2.fillPoly`` without anti-aliasing, so a pixel is either wholly object or wholly background and the
mask is exact by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dapt_core.errors import DaptError

# Fractional bits for cv2.fillPoly: vertices land on a 1/16 pixel grid, so small shapes keep their form.
_SUBPIXEL_BITS = 4
_SUBPIXEL_SCALE = float(1 << _SUBPIXEL_BITS)
# Vertices used to approximate round outlines; plenty at 128 px, cheap at 32 px.
_ROUND_VERTICES = 48


class UnknownClassError(DaptError):
    """An object or background name that the synthetic world does not define."""


@dataclass(frozen=True)
class ShapeLayer:
    """One polygon of an object outline."""

    points: np.ndarray  # (V, 2) float64, (x, y) in the unit disk, y down
    cut: bool = False  # True: the polygon is removed from the layers drawn before it


@dataclass(frozen=True)
class ObjectPose:
    """Where and how large an object is drawn, in pixel units."""

    cx: float  # centre column, pixels (0 = centre of the leftmost pixel)
    cy: float  # centre row, pixels
    radius: float  # radius of the disk the outline fits in, pixels
    angle: float  # rotation, radians, counter-clockwise as seen on screen


@dataclass(frozen=True)
class PoseConfig:
    """Ranges from which `sample_pose` draws an object's size and place."""

    min_radius: float = 0.25  # smallest object radius, as a fraction of the image side
    max_radius: float = 0.42  # largest object radius, as a fraction of the image side
    margin: float = 0.02  # gap kept between the object's disk and the image border, fraction of side


def _polygon(points: list[tuple[float, float]] | np.ndarray) -> np.ndarray:
    """Centre a polygon on its bounding box and scale it so that its farthest vertex is at radius 1."""
    arr = np.asarray(points, dtype=np.float64)
    arr = arr - (arr.min(axis=0) + arr.max(axis=0)) / 2.0
    return arr / np.linalg.norm(arr, axis=1).max()


def _regular(
    n: int, radius: float = 1.0, phase: float = -np.pi / 2, centre: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """Vertices of a regular n-gon; the default phase puts one vertex straight up."""
    t = phase + 2.0 * np.pi * np.arange(n) / n
    return np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    t = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _heart() -> np.ndarray:
    # The classic parametric heart; y is negated because image rows grow downwards.
    t = np.linspace(0.0, 2.0 * np.pi, _ROUND_VERTICES, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = 13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t)
    return _polygon(np.stack([x, -y], axis=1))


def _cross(half_width: float = 0.3) -> np.ndarray:
    w = half_width
    return _polygon(
        [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
    )


def _arrow() -> np.ndarray:
    return _polygon([(-1, -0.2), (0.15, -0.2), (0.15, -0.6), (1, 0), (0.15, 0.6), (0.15, 0.2), (-1, 0.2)])


# Outlines are chosen so that shape alone tells the classes apart under any rotation and colour:
# the diamond is a narrow rhombus (a rotated square would be a square), the ring has a hole.
_SHAPES: dict[str, tuple[ShapeLayer, ...]] = {
    "circle": (ShapeLayer(_regular(_ROUND_VERTICES)),),
    "square": (ShapeLayer(_regular(4, phase=np.pi / 4)),),
    "triangle": (ShapeLayer(_polygon(_regular(3))),),
    "star": (ShapeLayer(_star()),),
    "cross": (ShapeLayer(_cross()),),
    "heart": (ShapeLayer(_heart()),),
    "crescent": (
        ShapeLayer(_regular(_ROUND_VERTICES)),
        ShapeLayer(_regular(_ROUND_VERTICES, radius=0.85, centre=(0.45, -0.1)), cut=True),
    ),
    "ring": (
        ShapeLayer(_regular(_ROUND_VERTICES)),
        ShapeLayer(_regular(_ROUND_VERTICES, radius=0.55), cut=True),
    ),
    "arrow": (ShapeLayer(_arrow()),),
    "hexagon": (ShapeLayer(_regular(6)),),
    "diamond": (ShapeLayer(_polygon([(0, -1), (0.5, 0), (0, 1), (-0.5, 0)])),),
}

OBJECT_CLASSES: tuple[str, ...] = tuple(_SHAPES)


def check_object(name: str) -> str:
    """Return `name` if it is an object class, else raise `UnknownClassError` listing the classes."""
    if name not in _SHAPES:
        raise UnknownClassError(f"object: unknown object class {name!r}; known: {', '.join(OBJECT_CLASSES)}")
    return name


def sample_pose(size: int, rng: np.random.Generator, config: PoseConfig = PoseConfig()) -> ObjectPose:
    """Draw a random pose whose object disk lies entirely inside a `size` x `size` image.

    Consumes exactly four draws from `rng` (radius, column, row, angle), in that order.

    Args:
        size: image side in pixels.
        rng: the random stream.
        config: size and margin ranges.

    Returns:
        The pose, in pixel units.
    """
    radius = size * rng.uniform(config.min_radius, config.max_radius)
    lo = radius + config.margin * size
    hi = max(lo, size - 1.0 - lo)
    cx, cy = rng.uniform(lo, hi, size=2)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    return ObjectPose(cx=float(cx), cy=float(cy), radius=float(radius), angle=float(angle))


def object_polygons(object: str, pose: ObjectPose) -> list[tuple[np.ndarray, bool]]:
    """The object's layers placed in pixel coordinates.

    Args:
        object: an entry of `OBJECT_CLASSES`.
        pose: centre, radius and rotation in pixels.

    Returns:
        One ``(points, cut)`` pair per layer; points are (V, 2) float64 (x, y) pixel coordinates.
    """
    c, s = np.cos(pose.angle), np.sin(pose.angle)
    # Rows grow downwards, so a counter-clockwise turn on screen flips the sign of the sine.
    rotation = np.array([[c, s], [-s, c]])
    centre = np.array([pose.cx, pose.cy])
    return [(layer.points @ rotation.T * pose.radius + centre, layer.cut) for layer in _SHAPES[check_object(object)]]


def render_object_mask(object: str, size: int, pose: ObjectPose) -> np.ndarray:
    """Rasterise an object, without anti-aliasing, into a boolean mask.

    A pure function of its arguments: the same object, size and pose always give the same mask.

    Args:
        object: an entry of `OBJECT_CLASSES`.
        size: image side in pixels.
        pose: where the object goes (see `sample_pose`).

    Returns:
        (size, size) bool array, True exactly where the object is.
    """
    canvas = np.zeros((size, size), dtype=np.uint8)
    for points, cut in object_polygons(object, pose):
        fixed = np.round(points * _SUBPIXEL_SCALE).astype(np.int32)
        cv2.fillPoly(canvas, [fixed], 0 if cut else 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return canvas.view(bool)

