"""The one interface every foreground/background segmenter implements, and the CAM cues they share.

A segmenter turns an RGB image (and, for most, the model's own attention map for the predicted class) into
the foreground mask DAPT decouples the image with. Every backend returns a :class:`SegmentResult` that keeps
the candidates it considered and why it chose one, so the app can explain the split it shows.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import cv2
import numpy as np

from dapt_core.attention.metrics import as_cam
from dapt_core.errors import DaptError

log = logging.getLogger(__name__)

ScoreMasks = Callable[[list[np.ndarray]], list[float]]


class SegmentationError(DaptError):
    """A segmenter cannot work on what it was given; the message names the argument and the reason."""


@dataclass
class SegmentContext:
    """What a segmenter may use besides the pixels."""

    cam: np.ndarray | None = None  # (H, W) float attention map in [0, 1] at image resolution, predicted class
    score_masks: ScoreMasks | None = None  # CLIP probability of the predicted class for each (H, W) bool mask
    image_hash: str | None = None  # content hash of the image (for caches); computed from the pixels when None


@dataclass
class Candidate:
    """One foreground mask a segmenter considered."""

    mask: np.ndarray  # (H, W) bool
    prompt: str  # how it was obtained, e.g. "box+3 points, multimask 2"
    predicted_iou: float | None  # SAM's own quality estimate
    clip_score: float | None  # from SegmentContext.score_masks, None when not scored
    area: float  # fraction of the image in [0, 1]


@dataclass
class SegmentResult:
    """The chosen foreground and how it was chosen."""

    mask: np.ndarray  # (H, W) bool, the chosen foreground
    segmenter: str  # name of the backend that made it
    candidates: list[Candidate]  # everything considered, in the order it was produced
    chosen: int | None  # index into candidates, None when the mask is a fallback outside the list
    seconds: float  # wall time of the segment call
    info: dict = field(default_factory=dict)  # backend details, e.g. {"embedding_cached": True}


@runtime_checkable
class Segmenter(Protocol):
    """A foreground/background segmentation backend."""

    name: str
    needs_cam: bool

    def estimated_seconds(self, image_shape: tuple[int, ...]) -> float:
        """Expected wall time of :meth:`segment` for an image of ``image_shape`` (H, W[, 3]) on this device."""
        ...

    def segment(self, image: np.ndarray, ctx: SegmentContext) -> SegmentResult:
        """Foreground of ``image``, (H, W, 3) uint8 RGB."""
        ...


@dataclass(frozen=True)
class CamPromptConfig:
    """How point and box prompts are read off an attention map."""

    max_points: int = 3  # at most this many positive points (the CAM's strongest local maxima)
    peak_min_relative: float = 0.5  # a peak must reach this share of the CAM's maximum
    peak_min_distance: float = 0.1  # peaks at least this far apart, as a share of the image diagonal
    peak_smoothing: float = 0.02  # Gaussian sigma before peak search, share of the diagonal (flat tops get a centre)
    peak_search_side: int = 256  # peaks are searched on the CAM downscaled to this long side (CAMs are smooth)
    box_threshold: float = 0.5  # the box surrounds the CAM binarised at this share of its peak
    box_margin: float = 0.05  # grow the box by this share of its size on each side (CAMs are coarse)


def check_image(image: np.ndarray) -> np.ndarray:
    """Checks an RGB image and returns it C-contiguous.

    Args:
        image: (H, W, 3) uint8 RGB.

    Raises:
        SegmentationError: another shape or dtype.
    """
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise SegmentationError(f"image must be an (H, W, 3) RGB array, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise SegmentationError(f"image must be uint8 RGB (0..255), got dtype {array.dtype}")
    return np.ascontiguousarray(array)


def pixel_hash(image: np.ndarray) -> str:
    """A sha256 hex digest of an image's shape and pixels, the cache key when no file hash is given."""
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{array.shape}|{array.dtype}|".encode())
    digest.update(array.data)
    return digest.hexdigest()


def context_cam(ctx: SegmentContext, image_shape: tuple[int, ...], segmenter: str) -> np.ndarray:
    """The context's CAM, checked, resized to the image and divided by its peak.

    Args:
        ctx: must carry ``cam``, (h, w) non-negative floats; another size is resized bilinearly.
        image_shape: (H, W, ...) of the image.
        segmenter: backend name, for the error message.

    Returns:
        float32 (H, W) in [0, 1]; all zero when the CAM is all zero.

    Raises:
        SegmentationError: no CAM, or a CAM that is not a finite non-negative 2-D map.
    """
    if ctx.cam is None:
        raise SegmentationError(f"segmenter {segmenter!r} needs ctx.cam, the (H, W) attention map of the "
                                "predicted class; got None")
    try:
        cam = as_cam(ctx.cam, "ctx.cam").astype(np.float32)
    except ValueError as err:
        raise SegmentationError(f"segmenter {segmenter!r}: {err}") from err
    height, width = image_shape[:2]
    if cam.shape != (height, width):
        log.debug("resizing CAM %s to the image's %s", cam.shape, (height, width))
        cam = np.maximum(cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR), 0.0)
    peak = float(cam.max())
    return cam / peak if peak > 0.0 else cam


def mask_area(mask: np.ndarray) -> float:
    """Fraction of the image a bool mask covers, in [0, 1]."""
    return float(np.count_nonzero(mask)) / mask.size


def cam_peaks(cam: np.ndarray, config: CamPromptConfig = CamPromptConfig()) -> np.ndarray:
    """The strongest, well separated local maxima of a CAM, as SAM point prompts.

    Args:
        cam: (H, W) float in [0, 1], normalised to its peak (see :func:`context_cam`).
        config: number of points, their least strength and spacing.

    Returns:
        (K, 2) float32 (x, y) pixel coordinates, strongest first, ``K <= config.max_points``; (0, 2) for an
        all-zero CAM.
    """
    height, width = cam.shape
    scale = min(1.0, config.peak_search_side / max(height, width))
    if scale < 1.0:
        cam = cv2.resize(cam, (max(1, round(width * scale)), max(1, round(height * scale))),
                         interpolation=cv2.INTER_AREA)
    diagonal = float(np.hypot(*cam.shape))
    sigma = config.peak_smoothing * diagonal
    smooth = cv2.GaussianBlur(cam, (0, 0), sigmaX=sigma) if sigma >= 0.5 else cam
    top = float(smooth.max())
    if top <= 0.0:
        return np.zeros((0, 2), dtype=np.float32)
    local_max = smooth >= cv2.dilate(smooth, np.ones((3, 3), np.uint8))
    rows, cols = np.nonzero(local_max & (smooth >= config.peak_min_relative * top))
    values = smooth[rows, cols]
    min_distance_sq = (config.peak_min_distance * diagonal) ** 2
    points: list[tuple[float, float]] = []
    alive = np.ones(len(values), dtype=bool)
    while len(points) < config.max_points and alive.any():
        best = int(np.argmax(np.where(alive, values, -np.inf)))
        # Pixel centres map back through the scale; clip keeps the point inside the full-size image.
        points.append((min((cols[best] + 0.5) / scale - 0.5, width - 1.0),
                       min((rows[best] + 0.5) / scale - 0.5, height - 1.0)))
        # Everything near a chosen peak belongs to the same bump of attention.
        alive &= (rows - rows[best]) ** 2 + (cols - cols[best]) ** 2 >= min_distance_sq
    return np.asarray(points, dtype=np.float32).reshape(-1, 2)


def cam_box(cam: np.ndarray, config: CamPromptConfig = CamPromptConfig()) -> np.ndarray | None:
    """The box around the thresholded CAM, grown by a margin, as a SAM box prompt.

    Args:
        cam: (H, W) float in [0, 1], normalised to its peak.
        config: threshold and margin.

    Returns:
        float32 (4,) ``x0, y0, x1, y1`` in pixels, inside the image; None when no pixel passes the threshold.
    """
    if float(cam.max()) <= 0.0:
        return None
    rows, cols = np.nonzero(cam >= config.box_threshold)
    if rows.size == 0:
        return None
    height, width = cam.shape
    x0, x1, y0, y1 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1
    grow_x, grow_y = config.box_margin * (x1 - x0), config.box_margin * (y1 - y0)
    return np.array([max(x0 - grow_x, 0.0), max(y0 - grow_y, 0.0), min(x1 + grow_x, width),
                     min(y1 + grow_y, height)], dtype=np.float32)


def choose_candidate(candidates: list[Candidate], eligible: list[int], score_tolerance: float) -> int | None:
    """Picks the foreground among candidates: best CLIP score, SAM's predicted IoU among near-equals.

    Candidates whose CLIP score is within ``score_tolerance`` of the best eligible score count as equally
    good for the classifier; among them SAM's own quality estimate decides (then the higher score, then the
    earlier candidate). Without any CLIP score, the predicted IoU alone decides.

    Args:
        candidates: everything considered.
        eligible: indices into ``candidates`` that may be chosen.
        score_tolerance: width of the band of near-equal CLIP scores, >= 0.

    Returns:
        An index from ``eligible``, or None when ``eligible`` is empty.
    """
    if not eligible:
        return None

    def iou(i: int) -> float:
        value = candidates[i].predicted_iou
        return -np.inf if value is None else value

    scored = [i for i in eligible if candidates[i].clip_score is not None]
    if not scored:
        return max(eligible, key=lambda i: (iou(i), -i))
    best = max(candidates[i].clip_score for i in scored)
    near = [i for i in scored if candidates[i].clip_score >= best - score_tolerance]
    return max(near, key=lambda i: (iou(i), candidates[i].clip_score, -i))


def score_candidates(candidates: list[Candidate], indices: list[int], score_masks: ScoreMasks | None) -> None:
    """Fills ``clip_score`` of the candidates at ``indices`` with one call of ``score_masks``.

    Raises:
        SegmentationError: ``score_masks`` returned another number of scores than masks, or non-finite ones.
    """
    if score_masks is None or not indices:
        return
    scores = list(score_masks([candidates[i].mask for i in indices]))
    if len(scores) != len(indices):
        raise SegmentationError(f"ctx.score_masks returned {len(scores)} scores for {len(indices)} masks")
    for i, score in zip(indices, scores):
        value = float(score)
        if not np.isfinite(value):
            raise SegmentationError(f"ctx.score_masks returned a non-finite score ({score}) for mask {i}")
        candidates[i].clip_score = value
