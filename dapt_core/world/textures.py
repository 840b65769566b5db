"""Backgrounds of the synthetic world, each named by a word of DAPT's background vocabulary.

Every texture is a cheap function of (size, rng): small random arrays upsampled with ``cv2.resize``,
sinusoids and modular grids over cached coordinate arrays, and a few ``cv2`` primitives. Each one has
its own colour family *and* its own structure (streaks, gradient, waves, bricks, grid, ...), so the
backgrounds stay apart from one another and, being textured, from the flat-coloured objects.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import cv2
import numpy as np

from dapt_core.world.shapes import UnknownClassError

TextureFn = Callable[[int, np.random.Generator], np.ndarray]

_F32 = np.float32


def _rgb(*values: float) -> np.ndarray:
    return np.array(values, dtype=_F32)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column index arrays, (size, 1) and (1, size) float32, shared between calls."""
    idx = np.arange(size, dtype=_F32)
    rows, cols = idx[:, None], idx[None, :]
    rows.flags.writeable = False
    cols.flags.writeable = False
    return rows, cols


def _upsample(small: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a 2-D float32 array to (size, size)."""
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def _smooth(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in about [0, 1] with `cells` blobs per side, (size, size) float32.

    Bicubic rather than bilinear: bilinear leaves diamond-shaped facets on coarse grids.
    """
    return cv2.resize(rng.random((cells, cells), dtype=_F32), (size, size), interpolation=cv2.INTER_CUBIC)


def _mix(dark: np.ndarray, light: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend two RGB colours by a (H, W) weight in [0, 1]; returns (H, W, 3) float32."""
    return dark + (light - dark) * t[..., None]


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0.0, 255.0).astype(np.uint8)


def grass(size: int, rng: np.random.Generator) -> np.ndarray:
    """Bright green blades: noise that changes fast across and slowly down, so it streaks vertically."""
    blades = _upsample(rng.random((max(2, size // 10), size), dtype=_F32), size)
    patches = _smooth(rng, size, 4)
    t = 0.65 * blades + 0.35 * patches
    return _to_uint8(_mix(_rgb(40, 105, 20), _rgb(130, 200, 60), t))


def sky(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth blue gradient, deep at the top and pale at the horizon."""
    rows, _ = _grid(size)
    t = rows / max(size - 1, 1) * rng.uniform(0.7, 1.0) + 0.06 * (_smooth(rng, size, 3) - 0.5)
    top = _rgb(35, 90, 200) + _F32(rng.uniform(-15, 15))
    return _to_uint8(_mix(top, _rgb(165, 205, 245), np.clip(t, 0.0, 1.0)))


def water(size: int, rng: np.random.Generator) -> np.ndarray:
    """Blue water with bands of wavy crests and bright glints on their tops."""
    rows, cols = _grid(size)
    k_row, k_col = rng.uniform(5.0, 9.0, size=2) * _F32(2.0 * np.pi / size)
    phase_row, phase_col = rng.uniform(0.0, 2.0 * np.pi, size=2)
    wave = np.sin(rows * k_row + _F32(1.8) * np.sin(cols * k_col * _F32(0.5) + phase_col) + phase_row)
    t = 0.5 + 0.4 * wave + 0.2 * (_smooth(rng, size, 6) - 0.5)
    image = _mix(_rgb(15, 55, 120), _rgb(50, 120, 190), t)
    image[wave > 0.92] = _rgb(190, 225, 245)
    return _to_uint8(image)


def road(size: int, rng: np.random.Generator) -> np.ndarray:
    """Grey grainy asphalt with a dashed lane line at a random angle."""
    t = 0.7 * rng.random((size, size), dtype=_F32) + 0.3 * _smooth(rng, size, 5)
    image = _to_uint8(_mix(_rgb(60, 60, 64), _rgb(115, 115, 118), t))
    angle = rng.uniform(0.0, np.pi)
    offset = rng.uniform(-0.25, 0.25) * size
    direction = np.array([np.cos(angle), np.sin(angle)])
    centre = size / 2.0 + offset * np.array([-direction[1], direction[0]])
    dash, thickness = max(3.0, size / 8.0), max(1, size // 24)
    paint = (235, 235, 225) if rng.random() < 0.5 else (235, 200, 40)
    for start in np.arange(-size, size, 2.0 * dash) + rng.uniform(0.0, 2.0 * dash):
        p0 = np.round(centre + start * direction).astype(int)
        p1 = np.round(centre + (start + dash) * direction).astype(int)
        cv2.line(image, tuple(int(v) for v in p0), tuple(int(v) for v in p1), paint, thickness, cv2.LINE_8)
    return image


def wall(size: int, rng: np.random.Generator) -> np.ndarray:
    """Red bricks in staggered courses, each brick its own shade, with pale mortar joints."""
    rows, cols = _grid(size)
    courses = int(rng.integers(5, 9))
    height = size / courses
    width = 2.0 * height
    course = (rows // height).astype(np.int64)  # (size, 1)
    shifted = cols + (course % 2) * (width / 2.0) + rng.uniform(0.0, width)  # (size, size)
    brick = (shifted // width).astype(np.int64)
    shades = rng.random((courses + 1, int(size // width) + 3), dtype=_F32)
    joint = max(1.0, 0.12 * height)
    mortar = ((rows % height) < joint) | ((shifted % width) < joint)
    t = 0.75 * shades[course, brick] + 0.25 * rng.random((size, size), dtype=_F32)
    image = _mix(_rgb(125, 45, 30), _rgb(190, 90, 60), t)
    image[mortar] = _rgb(195, 190, 178)
    return _to_uint8(image)


def tree(size: int, rng: np.random.Generator) -> np.ndarray:
    """Dark mottled foliage around a brown, vertically grained trunk."""
    t = 0.55 * _smooth(rng, size, 7) + 0.45 * _smooth(rng, size, max(2, size // 4))
    # Bicubic noise overshoots [0, 1] a little; clip before the power, which darkens the shadows.
    image = _mix(_rgb(15, 45, 15), _rgb(85, 135, 45), np.clip(t, 0.0, 1.0) ** 1.5)
    _, cols = _grid(size)
    centre, half = rng.uniform(0.2, 0.8) * size, rng.uniform(0.07, 0.12) * size
    trunk = np.abs(cols[0] - centre) < half  # (size,) columns of the trunk
    width = int(trunk.sum())
    # Few rows, many columns: the bark grain runs along the trunk.
    grain = cv2.resize(rng.random((3, width), dtype=_F32), (width, size), interpolation=cv2.INTER_LINEAR)
    image[:, trunk] = _mix(_rgb(70, 45, 25), _rgb(120, 85, 50), grain)
    return _to_uint8(image)


def rock(size: int, rng: np.random.Generator) -> np.ndarray:
    """Grey stone: several octaves of blotches with dark cracks where a noise field crosses its middle."""
    t = 0.5 * _smooth(rng, size, 4) + 0.3 * _smooth(rng, size, 10) + 0.2 * rng.random((size, size), dtype=_F32)
    image = _mix(_rgb(70, 68, 66), _rgb(190, 185, 176), np.clip((t - 0.5) * 1.6 + 0.5, 0.0, 1.0))
    crack_field = _smooth(rng, size, 5)
    image[np.abs(crack_field - 0.5) < 0.025] = _rgb(45, 43, 42)
    return _to_uint8(image)


def cloud(size: int, rng: np.random.Generator) -> np.ndarray:
    """Soft white cumulus blobs on a mid-blue sky."""
    rows, _ = _grid(size)
    base = _mix(_rgb(60, 120, 210), _rgb(110, 160, 230), np.broadcast_to(rows / max(size - 1, 1), (size, size)))
    puff = 0.65 * _smooth(rng, size, 4) + 0.35 * _smooth(rng, size, 9)
    alpha = np.clip((puff - 0.45) * 5.0, 0.0, 1.0)
    return _to_uint8(base + (_rgb(248, 248, 252) - base) * alpha[..., None])


def ground(size: int, rng: np.random.Generator) -> np.ndarray:
    """Brown soil: clods of darker and lighter earth, fine grain and a few pale pebbles."""
    t = 0.5 * _smooth(rng, size, 8) + 0.5 * rng.random((size, size), dtype=_F32)
    image = _to_uint8(_mix(_rgb(90, 60, 35), _rgb(150, 108, 68), t))
    n_pebbles = int(rng.integers(3, 8))
    centres = rng.uniform(0, size, size=(n_pebbles, 2)).astype(int)
    radii = np.maximum(1, (rng.uniform(0.015, 0.04, size=n_pebbles) * size).astype(int))
    for (x, y), r in zip(centres, radii):
        cv2.circle(image, (int(x), int(y)), int(r), (170, 150, 125), -1, cv2.LINE_8)
    return image


def building(size: int, rng: np.random.Generator) -> np.ndarray:
    """A flat facade with a regular grid of windows, some dark, some lit."""
    rows, cols = _grid(size)
    n_cols, n_rows = (int(v) for v in rng.integers(3, 7, size=2))
    cell_w, cell_h = size / n_cols, size / n_rows
    x_in = ((cols + rng.uniform(0, cell_w)) % cell_w) / cell_w  # (1, size) position within a cell
    y_in = ((rows + rng.uniform(0, cell_h)) % cell_h) / cell_h
    window = (x_in > 0.22) & (x_in < 0.78) & (y_in > 0.2) & (y_in < 0.72)
    facade = _rgb(200, 190, 165) if rng.random() < 0.5 else _rgb(160, 160, 168)
    image = np.broadcast_to(facade, (size, size, 3)).copy()
    image += _F32(20.0) * (_smooth(rng, size, 3)[..., None] - _F32(0.5))
    lit = _upsample(rng.random((n_rows + 1, n_cols + 1), dtype=_F32), size) > 0.75
    image[window] = _rgb(40, 55, 85)
    image[window & lit] = _rgb(235, 215, 120)
    return _to_uint8(image)


def railway(size: int, rng: np.random.Generator) -> np.ndarray:
    """Grey-brown ballast crossed by wooden sleepers under two steel rails."""
    rows, cols = _grid(size)
    t = 0.75 * rng.random((size, size), dtype=_F32) + 0.25 * _smooth(rng, size, 6)
    image = _mix(_rgb(95, 88, 80), _rgb(150, 140, 128), t)
    period = size / rng.uniform(4.0, 6.0)
    sleeper = ((rows + rng.uniform(0, period)) % period) < 0.4 * period  # (size, 1)
    centre, gauge = rng.uniform(0.4, 0.6) * size, rng.uniform(0.2, 0.3) * size
    bed = np.abs(cols - centre) < 0.5 * gauge + 0.12 * size  # (1, size)
    image[sleeper & bed] = _rgb(100, 65, 35)
    rail_half = max(0.6, size / 64.0)
    rails = (np.abs(cols - (centre - gauge / 2)) < rail_half) | (np.abs(cols - (centre + gauge / 2)) < rail_half)
    image[np.broadcast_to(rails, (size, size))] = _rgb(200, 200, 210)
    if rng.random() < 0.5:
        image = image.transpose(1, 0, 2)
    return _to_uint8(image)


_TEXTURES: dict[str, TextureFn] = {
    "grass": grass,
    "sky": sky,
    "water": water,
    "road": road,
    "wall": wall,
    "tree": tree,
    "rock": rock,
    "cloud": cloud,
    "ground": ground,
    "building": building,
    "railway": railway,
}

BACKGROUND_CLASSES: tuple[str, ...] = tuple(_TEXTURES)


def check_background(name: str) -> str:
    """Return `name` if it is a background class, else raise `UnknownClassError` listing the classes."""
    if name not in _TEXTURES:
        raise UnknownClassError(
            f"background: unknown background class {name!r}; known: {', '.join(BACKGROUND_CLASSES)}"
        )
    return name


def render_background(background: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render one background texture.

    Args:
        background: an entry of `BACKGROUND_CLASSES`.
        size: image side in pixels.
        rng: the random stream; how many draws are taken depends on the background class.

    Returns:
        (size, size, 3) uint8 RGB image.
    """
    return _TEXTURES[check_background(background)](size, rng)
