"""OpenCV GrabCut seeded from the model's own attention: no weights, a refined version of the coarse cue.

The CAM supplies the seeds GrabCut's colour models start from: probable foreground where the attention is
high, probable background in between, sure background where it is low and along the image border (unless
the attention is high there, i.e. the object touches the edge). GrabCut then moves the boundary to where the
colours change. When it collapses to an empty or full mask, the thresholded CAM is returned instead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import cv2
import numpy as np

from dapt_core.constants import CAM_THRESHOLD, MASK_THRESHOLD
from dapt_core.segment.cam_threshold import cam_candidate
from dapt_core.segment.base import (
    Candidate,
    SegmentContext,
    SegmentResult,
    check_image,
    context_cam,
    mask_area,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GrabCutConfig:
    """Settings of the GrabCut segmenter; thresholds are shares of the CAM's peak."""

    foreground_threshold: float = CAM_THRESHOLD  # CAM share of its peak at or above: probable foreground
    background_threshold: float = 0.1  # CAM below: sure background
    border_fraction: float = 0.02  # a band this share of the short side wide is sure background where CAM is low
    iterations: int = 5  # GrabCut EM iterations
    max_side: int = 256  # images are downscaled to this long side first; the mask is scaled back
    min_area: float = 0.002  # a result covering less of the image counts as empty -> CAM fallback
    max_area: float = 0.995  # ... more counts as full -> CAM fallback
    seconds_per_megapixel: float = 0.4  # cost estimate per iteration and megapixel after downscaling (2-core CPU)


class GrabCutSegmenter:
    """GrabCut seeded by the CAM; see the module docstring."""

    name = "grabcut"
    needs_cam = True

    def __init__(self, config: GrabCutConfig = GrabCutConfig()) -> None:
        if not 0.0 <= config.background_threshold < config.foreground_threshold <= 1.0:
            raise ValueError("grabcut: need 0 <= background_threshold < foreground_threshold <= 1, got "
                             f"{config.background_threshold} and {config.foreground_threshold}")
        if config.iterations < 1 or config.max_side < 8:
            raise ValueError(f"grabcut: iterations must be >= 1 and max_side >= 8, got {config.iterations} "
                             f"and {config.max_side}")
        self.config = config

    def _work_size(self, height: int, width: int) -> tuple[int, int]:
        scale = min(1.0, self.config.max_side / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def estimated_seconds(self, image_shape: tuple[int, ...]) -> float:
        """Iterations times pixels after downscaling, at a rate measured on a 2-core CPU."""
        height, width = self._work_size(image_shape[0], image_shape[1])
        return self.config.iterations * self.config.seconds_per_megapixel * height * width / 1e6

    def seeds(self, cam: np.ndarray) -> np.ndarray:
        """GrabCut's initial labels from a peak-normalised CAM.

        Args:
            cam: (h, w) float in [0, 1].

        Returns:
            (h, w) uint8 of ``cv2.GC_BGD``, ``cv2.GC_PR_BGD`` and ``cv2.GC_PR_FGD``.
        """
        cfg = self.config
        seeds = np.full(cam.shape, cv2.GC_PR_BGD, dtype=np.uint8)
        high = cam >= cfg.foreground_threshold
        seeds[high] = cv2.GC_PR_FGD
        seeds[cam < cfg.background_threshold] = cv2.GC_BGD
        band = max(1, round(cfg.border_fraction * min(cam.shape)))
        border = np.zeros(cam.shape, dtype=bool)
        border[:band], border[-band:], border[:, :band], border[:, -band:] = True, True, True, True
        seeds[border & ~high] = cv2.GC_BGD
        return seeds

    def _grabcut(self, image: np.ndarray, cam: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        """Runs GrabCut at the working size; returns (mask at image size, None) or (None, why it failed)."""
        height, width = image.shape[:2]
        work_h, work_w = self._work_size(height, width)
        small = image if (work_h, work_w) == (height, width) else cv2.resize(
            image, (work_w, work_h), interpolation=cv2.INTER_AREA)
        small_cam = cam if (work_h, work_w) == (height, width) else cv2.resize(
            cam, (work_w, work_h), interpolation=cv2.INTER_LINEAR)
        labels = self.seeds(small_cam)
        if not np.isin(labels, (cv2.GC_PR_FGD, cv2.GC_FGD)).any():
            return None, "no pixel reaches the foreground threshold of the CAM"
        if not np.isin(labels, (cv2.GC_PR_BGD, cv2.GC_BGD)).any():
            return None, "the CAM is high everywhere, no background seed"
        bgd_model, fgd_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(small, labels, None, bgd_model, fgd_model, self.config.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error as err:
            # GrabCut refuses seeds its colour models cannot be fitted to (e.g. too few distinct pixels).
            return None, f"GrabCut failed: {str(err).strip().splitlines()[-1]}"
        foreground = np.isin(labels, (cv2.GC_PR_FGD, cv2.GC_FGD))
        if (work_h, work_w) != (height, width):
            soft = cv2.resize(foreground.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
            foreground = soft >= MASK_THRESHOLD
        area = mask_area(foreground)
        if not self.config.min_area <= area <= self.config.max_area:
            return None, f"GrabCut gave a degenerate mask (area {area:.3f})"
        return foreground, None

    def segment(self, image: np.ndarray, ctx: SegmentContext) -> SegmentResult:
        """GrabCut of ``image`` seeded by ``ctx.cam``.

        Args:
            image: (H, W, 3) uint8 RGB.
            ctx: must carry ``cam``.

        Returns:
            Candidates ``[GrabCut mask, thresholded CAM]`` (the first is missing when GrabCut failed);
            ``chosen`` points at the one used. ``info`` has ``fallback`` (None, or why the CAM mask was used),
            ``work_size`` and the thresholds.

        Raises:
            SegmentationError: bad image, or no / bad CAM.
        """
        start = time.perf_counter()
        image = check_image(image)
        cam = context_cam(ctx, image.shape, self.name)
        from_cam = cam_candidate(cam, self.config.foreground_threshold)
        mask, failure = self._grabcut(image, cam)
        if mask is None:
            log.debug("grabcut fell back to the CAM mask: %s", failure)
            candidates, chosen, result = [from_cam], 0, from_cam.mask
        else:
            grab = Candidate(mask=mask, prompt=f"grabcut x{self.config.iterations} seeded by CAM",
                             predicted_iou=None, clip_score=None, area=mask_area(mask))
            candidates, chosen, result = [grab, from_cam], 0, mask
        info = {"fallback": failure, "work_size": self._work_size(*image.shape[:2]),
                "foreground_threshold": self.config.foreground_threshold,
                "background_threshold": self.config.background_threshold}
        return SegmentResult(mask=result, segmenter=self.name, candidates=candidates, chosen=chosen,
                             seconds=time.perf_counter() - start, info=info)
