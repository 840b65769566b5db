"""Pictures of attention and of the foreground/background split, as plain uint8 RGB arrays.

Every function takes an (H, W, 3) uint8 RGB image and returns a new array of the same
kind; nothing is random, so the same input always gives the same pixels. A mask whose
shape differs from the image is resized to it (bilinear, then thresholded at
:data:`~dapt_core.attention.metrics.MASK_THRESHOLD`), since masks may come from a
segmenter run at another resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import cv2
import matplotlib
import numpy as np

from dapt_core.attention.metrics import MASK_THRESHOLD, as_cam, as_mask

DEFAULT_COLORMAP = "jet"
# Half and half keeps the object recognisable under the heat map.
DEFAULT_ALPHA = 0.5
# Hidden pixels are drawn as a checkerboard, the usual sign for "nothing here", so they
# cannot be mistaken for a black or grey part of the scene.
CHECKERBOARD = "checkerboard"
CHECKER_SQUARE_PX = 8
CHECKER_SHADES = (170, 120)
OUTLINE_COLOUR = (0, 255, 0)
OUTLINE_THICKNESS_PX = 2
# White gutter between the views of split_panel.
PANEL_GAP_PX = 4
_GAP_VALUE = 255
# One colour per 8-bit level of the normalised CAM.
_LUT_SIZE = 256

Fill = Union[tuple[int, int, int], str]


@dataclass(frozen=True)
class SplitViews:
    """The foreground/background split of one image, shown three ways."""

    outline: np.ndarray  # (H, W, 3) uint8: the image with the mask's contours drawn on it
    foreground: np.ndarray  # (H, W, 3) uint8: object pixels kept, the rest filled
    background: np.ndarray  # (H, W, 3) uint8: background pixels kept, the object filled


def heatmap_overlay(
    image: np.ndarray,
    cam: np.ndarray,
    *,
    colormap: str = DEFAULT_COLORMAP,
    alpha: float = DEFAULT_ALPHA,
) -> np.ndarray:
    """Blend a colour-mapped CAM over an image.

    Args:
        image: (H, W, 3) uint8 RGB.
        cam: (h, w) non-negative finite floats; divided by its max (an all-zero CAM stays
            zero, the colormap's low end) and resized bilinearly to (H, W).
        colormap: name of a matplotlib colormap.
        alpha: weight of the heat map in [0, 1]; 0 returns the image unchanged.

    Returns:
        (H, W, 3) uint8 RGB, ``alpha * heat + (1 - alpha) * image`` rounded.

    Raises:
        ValueError: bad image, CAM, ``alpha`` or unknown ``colormap``.
    """
    pixels = _check_image(image)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    lut = _colormap_lut(colormap)
    values = as_cam(cam, "cam")
    peak = float(values.max())
    normalised = values / peak if peak > 0.0 else np.zeros_like(values)
    height, width = pixels.shape[:2]
    resized = cv2.resize(normalised.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    indices = np.clip(np.rint(resized * (len(lut) - 1)), 0, len(lut) - 1).astype(np.intp)
    heat = np.ascontiguousarray(lut[indices])
    return cv2.addWeighted(heat, float(alpha), pixels, 1.0 - float(alpha), 0.0)


def foreground_only(image: np.ndarray, mask: np.ndarray, *, fill: Fill = CHECKERBOARD) -> np.ndarray:
    """Keep the object, hide the background.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (h, w) bool or floats in [0, 1]; True / >= 0.5 marks the object.
        fill: an RGB triple for hidden pixels, or ``"checkerboard"``.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    pixels = _check_image(image)
    return _keep(pixels, _mask_for(mask, pixels.shape[:2]), fill)


def background_only(image: np.ndarray, mask: np.ndarray, *, fill: Fill = CHECKERBOARD) -> np.ndarray:
    """Keep the background, hide the object.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (h, w) bool or floats in [0, 1]; True / >= 0.5 marks the object.
        fill: an RGB triple for hidden pixels, or ``"checkerboard"``.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    pixels = _check_image(image)
    return _keep(pixels, ~_mask_for(mask, pixels.shape[:2]), fill)


def outline(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    colour: tuple[int, int, int] = OUTLINE_COLOUR,
    thickness: int = OUTLINE_THICKNESS_PX,
) -> np.ndarray:
    """Draw the mask's boundaries (outer edges and holes) on a copy of the image.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (h, w) bool or floats in [0, 1]; True / >= 0.5 marks the object.
        colour: RGB of the line, each 0..255.
        thickness: line width in pixels, >= 1.

    Returns:
        (H, W, 3) uint8 RGB; equal to the image when the mask is empty.
    """
    pixels = _check_image(image)
    if thickness < 1:
        raise ValueError(f"thickness must be >= 1, got {thickness}")
    region = _mask_for(mask, pixels.shape[:2])
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    drawn = pixels.copy()
    cv2.drawContours(drawn, contours, -1, tuple(int(c) for c in _check_colour(colour, "colour")), thickness)
    return drawn


def split_views(image: np.ndarray, mask: np.ndarray, *, fill: Fill = CHECKERBOARD) -> SplitViews:
    """The outline, foreground-only and background-only views of one split.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (h, w) bool or floats in [0, 1]; True / >= 0.5 marks the object.
        fill: how hidden pixels are drawn, as in :func:`foreground_only`.

    Returns:
        The three views, each (H, W, 3) uint8 RGB.
    """
    return SplitViews(
        outline=outline(image, mask),
        foreground=foreground_only(image, mask, fill=fill),
        background=background_only(image, mask, fill=fill),
    )


def split_panel(image: np.ndarray, mask: np.ndarray, *, fill: Fill = CHECKERBOARD) -> np.ndarray:
    """The three views of :func:`split_views` side by side with a white gutter.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (h, w) bool or floats in [0, 1]; True / >= 0.5 marks the object.
        fill: how hidden pixels are drawn, as in :func:`foreground_only`.

    Returns:
        (H, 3 * W + 2 * PANEL_GAP_PX, 3) uint8 RGB: outline, foreground, background.
    """
    views = split_views(image, mask, fill=fill)
    gap = np.full((views.outline.shape[0], PANEL_GAP_PX, 3), _GAP_VALUE, dtype=np.uint8)
    return np.hstack([views.outline, gap, views.foreground, gap, views.background])


def checkerboard(height: int, width: int, *, square_px: int = CHECKER_SQUARE_PX) -> np.ndarray:
    """A grey checkerboard, the fill for hidden pixels.

    Args:
        height: rows, >= 0.
        width: columns, >= 0.
        square_px: side of one square in pixels, >= 1.

    Returns:
        (height, width, 3) uint8 in two grey shades.
    """
    if square_px < 1:
        raise ValueError(f"square_px must be >= 1, got {square_px}")
    rows = (np.arange(height) // square_px)[:, None]
    cols = (np.arange(width) // square_px)[None, :]
    shades = np.where((rows + cols) % 2 == 0, CHECKER_SHADES[0], CHECKER_SHADES[1]).astype(np.uint8)
    return np.repeat(shades[:, :, None], 3, axis=2)


def _keep(pixels: np.ndarray, keep: np.ndarray, fill: Fill) -> np.ndarray:
    height, width = keep.shape
    if isinstance(fill, str):
        if fill != CHECKERBOARD:
            raise ValueError(f"fill must be an RGB triple or {CHECKERBOARD!r}, got {fill!r}")
        filler = checkerboard(height, width)
    else:
        filler = np.empty_like(pixels)
        filler[:] = np.asarray(_check_colour(fill, "fill"), dtype=np.uint8)
    return np.where(keep[:, :, None], pixels, filler)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be a uint8 numpy array (H, W, 3); got {kind}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must have shape (H, W, 3); got {image.shape}")
    return np.ascontiguousarray(image)


def _check_colour(colour: tuple[int, int, int], name: str) -> tuple[int, int, int]:
    values = tuple(colour)
    if len(values) != 3 or not all(0 <= int(v) <= 255 for v in values):
        raise ValueError(f"{name} must be an RGB triple of 0..255 values, got {colour!r}")
    return (int(values[0]), int(values[1]), int(values[2]))


def _mask_for(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    weights = as_mask(mask, "mask")
    if weights.shape != shape:
        height, width = shape
        weights = cv2.resize(weights.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return weights >= MASK_THRESHOLD


def _colormap_lut(name: str) -> np.ndarray:
    try:
        cmap = matplotlib.colormaps[name]
    except KeyError as exc:
        raise ValueError(f"unknown matplotlib colormap {name!r}") from exc
    # A 256-entry table makes the colouring exact and identical on every call.
    table = cmap(np.linspace(0.0, 1.0, _LUT_SIZE))[:, :3]
    return np.rint(table * 255.0).astype(np.uint8)
