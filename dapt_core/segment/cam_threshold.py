"""The coarse cue of DAPT-G: the model's own Grad-CAM, divided by its peak and binarised."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from dapt_core.attention.metrics import DEFAULT_BINARIZE_THRESHOLD, binarize
from dapt_core.segment.base import (
    Candidate,
    SegmentContext,
    SegmentResult,
    check_image,
    context_cam,
    mask_area,
)


def cam_candidate(cam: np.ndarray, threshold: float) -> Candidate:
    """The thresholded CAM as a candidate mask: (H, W) bool where ``cam >= threshold * max(cam)``."""
    mask = binarize(cam, threshold)
    return Candidate(mask=mask, prompt=f"CAM >= {threshold:g} x peak", predicted_iou=None, clip_score=None,
                     area=mask_area(mask))


@dataclass(frozen=True)
class CamThresholdConfig:
    """Settings of the thresholded-CAM segmenter."""

    threshold: float = DEFAULT_BINARIZE_THRESHOLD  # foreground where the CAM reaches this share of its peak
    seconds: float = 0.01  # cost estimate: a comparison per pixel


class CamThresholdSegmenter:
    """Foreground = the CAM of the predicted class at or above ``threshold`` of its peak (DAPT's coarse cue).

    An all-zero CAM gives an empty mask: attention that goes nowhere marks no object.
    """

    name = "cam"
    needs_cam = True

    def __init__(self, config: CamThresholdConfig = CamThresholdConfig()) -> None:
        if not 0.0 <= config.threshold <= 1.0:
            raise ValueError(f"cam segmenter: threshold must lie in [0, 1], got {config.threshold}")
        self.config = config

    def estimated_seconds(self, image_shape: tuple[int, ...]) -> float:
        """A constant: thresholding is negligible next to computing the CAM."""
        return self.config.seconds

    def segment(self, image: np.ndarray, ctx: SegmentContext) -> SegmentResult:
        """Binarises ``ctx.cam`` (resized to the image when its size differs).

        Args:
            image: (H, W, 3) uint8 RGB; only its size is used.
            ctx: must carry ``cam``.

        Returns:
            One candidate, chosen; ``info["threshold"]`` is the threshold used.

        Raises:
            SegmentationError: bad image, or no / bad CAM.
        """
        start = time.perf_counter()
        image = check_image(image)
        cam = context_cam(ctx, image.shape, self.name)
        candidate = cam_candidate(cam, self.config.threshold)
        return SegmentResult(mask=candidate.mask, segmenter=self.name, candidates=[candidate], chosen=0,
                             seconds=time.perf_counter() - start, info={"threshold": self.config.threshold})
