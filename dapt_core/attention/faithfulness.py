"""Faithfulness of an attribution map: deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018).

Pixels are ranked by the map, highest first (ties in row-major order: a stable sort). Deletion hides the
top fraction of pixels (every channel set to ``baseline``) and asks the model how sure it still is of the
class; insertion starts from the all-baseline image and reveals the top fraction. A faithful map makes the
deletion curve fall fast (low area under it) and the insertion curve rise fast (high area). On normalised
inputs the default baseline 0 is the data set's mean colour, the same hiding as DAPT's image split.

Pure numpy apart from the caller's ``score`` function, which maps a stack of perturbed images to the
model's score for the class (e.g. its softmax probability).
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from dapt_core.attention.metrics import as_cam

MODES = ("deletion", "insertion")
DEFAULT_STEPS = 8  # points of a curve after the start: fractions 0, 1/steps, ..., 1
DEFAULT_BASELINE = 0.0  # value of a hidden pixel (the mean colour of normalised inputs)

ScoreFn = Callable[[np.ndarray], np.ndarray]  # (N, C, H, W) float32 -> (N,) scores


def pixel_order(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Flat pixel indices of an (H, W) image, highest CAM value first (the CAM resized bilinearly if needed)."""
    values = as_cam(cam, "cam")
    if values.shape != tuple(shape):
        values = cv2.resize(values.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.argsort(-values.ravel(), kind="stable")


def step_counts(n_pixels: int, steps: int) -> np.ndarray:
    """Pixels changed at each point of a curve: ``round(i * n_pixels / steps)`` for i = 0..steps."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return np.rint(np.arange(steps + 1) * n_pixels / steps).astype(np.int64)


def perturbed_images(image: np.ndarray, cam: np.ndarray, mode: str, steps: int = DEFAULT_STEPS,
                     baseline: float = DEFAULT_BASELINE) -> np.ndarray:
    """The images along a deletion or insertion curve.

    Args:
        image: (C, H, W) the model's (normalised) input.
        cam: (h, w) non-negative map of the image.
        mode: ``"deletion"`` or ``"insertion"``.
        steps: points after the start.
        baseline: value of a hidden pixel.

    Returns:
        (steps + 1, C, H, W) float32: point i has the top ``step_counts(H * W, steps)[i]`` pixels hidden
        (deletion) or revealed on an all-baseline image (insertion).

    Raises:
        ValueError: an unknown mode, a bad CAM, an image that is not (C, H, W), or ``steps < 1``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {pixels.shape}")
    channels, height, width = pixels.shape
    order = pixel_order(cam, (height, width))
    counts = step_counts(height * width, steps)
    # rank[p] = position of pixel p in the order; a pixel is changed at point i when rank < counts[i]
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    changed = (rank[None, :] < counts[:, None]).reshape(steps + 1, 1, height, width)
    flat = np.broadcast_to(pixels, (steps + 1, channels, height, width))
    hidden = np.float32(baseline)
    if mode == "deletion":
        return np.where(changed, hidden, flat).astype(np.float32)
    return np.where(changed, flat, hidden).astype(np.float32)


def perturbation_curve(score: ScoreFn, image: np.ndarray, cam: np.ndarray, mode: str,
                       steps: int = DEFAULT_STEPS, baseline: float = DEFAULT_BASELINE) -> np.ndarray:
    """(steps + 1,) the model's scores along the curve of :func:`perturbed_images`."""
    values = np.asarray(score(perturbed_images(image, cam, mode, steps, baseline)), dtype=np.float64)
    if values.shape != (steps + 1,):
        raise ValueError(f"score must return one value per image, shape ({steps + 1},); got {values.shape}")
    return values


def curve_auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at equally spaced fractions 0..1 (trapezoid rule), in the curve's units."""
    values = np.asarray(curve, dtype=np.float64)
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"a curve needs at least two points, got shape {values.shape}")
    return float(np.trapezoid(values, dx=1.0 / (values.size - 1)))
