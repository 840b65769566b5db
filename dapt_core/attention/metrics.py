"""Numbers that say how much of a model's attention lands on the object rather than the background.

All functions are pure numpy on 2-D maps. A class-activation map (CAM) is a non-negative
float array (H, W); a mask is a bool array or a float array with values in [0, 1] (a soft
mask is binarised at :data:`MASK_THRESHOLD` where a yes/no answer is needed). When a CAM
and a mask differ in shape, the CAM is resized to the mask's shape with bilinear
interpolation (``cv2.INTER_LINEAR``): CAMs come at the model's patch or input resolution,
masks at the image's, and the question is asked in image space.
"""

from __future__ import annotations

import cv2
import numpy as np

from dapt_core.constants import CAM_THRESHOLD, MASK_THRESHOLD

DEFAULT_BINARIZE_THRESHOLD = CAM_THRESHOLD


def object_share(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the CAM's total energy that falls inside the mask.

    ``sum(cam * mask) / sum(cam)``; a soft mask weights each pixel by its value.

    Args:
        cam: (h, w) non-negative finite floats; resized bilinearly to ``mask``'s shape if
            it differs.
        mask: (H, W) bool, or floats in [0, 1].

    Returns:
        A float in [0, 1], or NaN when the CAM is all zero (no attention to share out;
        NaN rather than an exception so a batch of images can still be averaged with
        ``np.nanmean``).

    Raises:
        ValueError: a map is not 2-D, not finite, the CAM has negative values or the mask
            values leave [0, 1].
    """
    weights = as_mask(mask, "mask")
    energy = _cam_in_mask_space(cam, weights.shape)
    total = float(energy.sum(dtype=np.float64))
    if total <= 0.0:
        return float("nan")
    inside = float((energy * weights).sum(dtype=np.float64))
    return min(max(inside / total, 0.0), 1.0)


def pointing_game(cam: np.ndarray, mask: np.ndarray, *, tolerance_px: int = 0) -> bool:
    """Whether the CAM's peak lies on the object.

    Ties for the peak go to the first maximum in row-major order (``np.argmax``).

    Args:
        cam: (h, w) non-negative finite floats; resized bilinearly to ``mask``'s shape if
            it differs.
        mask: (H, W) bool, or floats in [0, 1] binarised at :data:`MASK_THRESHOLD`.
        tolerance_px: grow the mask by this many pixels (a disc) before the test, the usual
            allowance for a peak just beside the object's edge; 0 for none.

    Returns:
        True when the peak is inside the (grown) mask. An all-zero CAM has no peak and
        scores False: attention that goes nowhere does not point at the object.

    Raises:
        ValueError: bad maps as in :func:`object_share`, or a negative ``tolerance_px``.
    """
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    region = as_mask(mask, "mask") >= MASK_THRESHOLD
    energy = _cam_in_mask_space(cam, region.shape)
    if not np.any(energy > 0):
        return False
    if tolerance_px > 0:
        size = 2 * tolerance_px + 1
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        region = cv2.dilate(region.astype(np.uint8), disc).astype(bool)
    row, col = np.unravel_index(int(np.argmax(energy)), energy.shape)
    return bool(region[row, col])


def top_k_intersection(cam: np.ndarray, mask: np.ndarray, k: int | None = None) -> float:
    """Share of the CAM's ``k`` highest pixels that lie on the object (Theiner et al. 2021's top-k intersection).

    Pixels are ranked by CAM value, highest first; ties keep row-major order (a stable sort).

    Args:
        cam: (h, w) non-negative finite floats; resized bilinearly to ``mask``'s shape if it differs.
        mask: (H, W) bool, or floats in [0, 1] binarised at :data:`MASK_THRESHOLD`.
        k: how many pixels to take, 1 <= k <= H * W; None = the object's own area (then the score is also
            the share of the object that the CAM's top pixels cover).

    Returns:
        A float in [0, 1]; NaN for an empty mask when ``k`` is None.

    Raises:
        ValueError: bad maps as in :func:`object_share`, or ``k`` out of range.
    """
    region = as_mask(mask, "mask") >= MASK_THRESHOLD
    energy = _cam_in_mask_space(cam, region.shape)
    if k is None:
        k = int(np.count_nonzero(region))
        if k == 0:
            return float("nan")
    if not 1 <= k <= region.size:
        raise ValueError(f"k must lie in [1, {region.size}] (the mask's pixels), got {k}")
    top = np.argsort(-energy.ravel(), kind="stable")[:k]
    return float(np.count_nonzero(region.ravel()[top])) / k


def binarize(cam: np.ndarray, threshold: float = DEFAULT_BINARIZE_THRESHOLD) -> np.ndarray:
    """Turn a CAM into a mask: divide by its max and keep what reaches ``threshold``.

    Args:
        cam: (H, W) non-negative finite floats.
        threshold: in [0, 1], relative to the CAM's peak.

    Returns:
        (H, W) bool; all False when the CAM is all zero.

    Raises:
        ValueError: bad CAM, or ``threshold`` outside [0, 1].
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    values = as_cam(cam, "cam")
    peak = float(values.max())
    if peak <= 0.0:
        return np.zeros(values.shape, dtype=bool)
    return (values / peak) >= threshold


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks of the same shape.

    Args:
        a: (H, W) bool, or floats in [0, 1] binarised at :data:`MASK_THRESHOLD`.
        b: same shape and kind as ``a``.

    Returns:
        A float in [0, 1]; NaN when both masks are empty (the ratio is undefined).

    Raises:
        ValueError: a mask is not 2-D, its values leave [0, 1], or the shapes differ.
    """
    first = as_mask(a, "a") >= MASK_THRESHOLD
    second = as_mask(b, "b") >= MASK_THRESHOLD
    if first.shape != second.shape:
        raise ValueError(f"mask_iou: masks differ in shape, a {first.shape} vs b {second.shape}")
    union = int(np.count_nonzero(first | second))
    if union == 0:
        return float("nan")
    return int(np.count_nonzero(first & second)) / union


def as_cam(cam: np.ndarray, name: str = "cam") -> np.ndarray:
    """Check a CAM and return it as float64.

    Args:
        cam: (H, W) non-empty, finite, non-negative numbers.
        name: how to refer to the argument in error messages.

    Returns:
        (H, W) float64 (``cam`` itself when it already is).

    Raises:
        ValueError: naming ``name`` and what is wrong.
    """
    values = np.asarray(cam)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (H, W); got shape {values.shape}")
    if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{name} must hold numbers; got dtype {values.dtype}")
    values = values.astype(np.float64, copy=False)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} holds NaN or infinite values")
    if float(values.min()) < 0.0:
        raise ValueError(f"{name} must be non-negative (apply ReLU first); its minimum is {values.min():g}")
    return values


def as_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Check a mask and return it as float64 weights.

    Args:
        mask: (H, W) non-empty bool, or finite numbers in [0, 1].
        name: how to refer to the argument in error messages.

    Returns:
        (H, W) float64 in [0, 1] (True -> 1.0).

    Raises:
        ValueError: naming ``name`` and what is wrong.
    """
    values = np.asarray(mask)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (H, W); got shape {values.shape}")
    if values.dtype == np.bool_:
        return values.astype(np.float64)
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{name} must be bool or numbers in [0, 1]; got dtype {values.dtype}")
    values = values.astype(np.float64, copy=False)
    if not np.all(np.isfinite(values)) or float(values.min()) < 0.0 or float(values.max()) > 1.0:
        raise ValueError(f"{name} values must lie in [0, 1]; got [{np.nanmin(values):g}, {np.nanmax(values):g}]")
    return values


def _cam_in_mask_space(cam: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    values = as_cam(cam, "cam")
    if values.shape == shape:
        return values
    height, width = shape
    resized = cv2.resize(values.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    # Bilinear weights are convex, so only float rounding could dip below zero.
    return np.maximum(resized.astype(np.float64), 0.0)
