"""Foreground/background segmenters behind one interface: ``get_segmenter(name).segment(image, ctx)``.

Registered backends (see :func:`list_segmenters`):

- ``cam``: the thresholded Grad-CAM, DAPT's coarse cue; instant, no weights.
- ``grabcut``: OpenCV GrabCut seeded from the CAM; a fraction of a second, no weights.
- ``sam``: Segment Anything prompted from the CAM, choosing by CLIP score; needs SAM weights.

SAM is imported only when it is asked for, so the light backends cost nothing extra.
"""

from __future__ import annotations

import importlib
from typing import Callable

from dapt_core.segment.base import (
    CamPromptConfig,
    Candidate,
    SegmentationError,
    SegmentContext,
    Segmenter,
    SegmentResult,
    pixel_hash,
)


def _build_cam(**options) -> Segmenter:
    from dapt_core.segment.cam_threshold import CamThresholdConfig, CamThresholdSegmenter

    return CamThresholdSegmenter(_config(CamThresholdConfig, "cam", options))


def _build_grabcut(**options) -> Segmenter:
    from dapt_core.segment.grabcut import GrabCutConfig, GrabCutSegmenter

    return GrabCutSegmenter(_config(GrabCutConfig, "grabcut", options))


def _build_sam(model_type: str = "vit_b", checkpoint=None, device=None, **options) -> Segmenter:
    from dapt_core.segment.sam import SamConfig, SamSegmenter

    model = options.pop("model", None)
    return SamSegmenter(model_type, checkpoint, device, model=model, config=_config(SamConfig, "sam", options))


def _config(cls: type, name: str, options: dict):
    """``options`` as the backend's config dataclass (a ``config=`` instance wins), unknown keys an error."""
    if "config" in options:
        config = options.pop("config")
        if options:
            raise ValueError(f"segmenter {name!r}: pass either config= or single options, not both "
                             f"(got {', '.join(sorted(options))})")
        return config
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"segmenter {name!r} has no option(s) {', '.join(unknown)}; "
                         f"options: {', '.join(sorted(known))}")
    return cls(**options)


SEGMENTERS: dict[str, Callable[..., Segmenter]] = {"cam": _build_cam, "grabcut": _build_grabcut, "sam": _build_sam}


def list_segmenters() -> list[str]:
    """Names of the registered segmenters, sorted."""
    return sorted(SEGMENTERS)


def get_segmenter(name: str, **options) -> Segmenter:
    """Builds a segmenter by name.

    Args:
        name: one of :func:`list_segmenters`.
        **options: fields of the backend's config dataclass (or ``config=`` an instance of it). For
            ``sam`` also ``model_type`` (``"vit_b"``/``"vit_l"``/``"vit_h"``), ``checkpoint`` (a path),
            ``device`` and ``model`` (an already built ``Sam``).

    Raises:
        ValueError: unknown name (the message lists the known ones) or option.
        WeightsNotFoundError: ``sam`` without weights on this machine or online.
    """
    if name not in SEGMENTERS:
        raise ValueError(f"unknown segmenter {name!r}; choose from {', '.join(list_segmenters())}")
    return SEGMENTERS[name](**options)


def available_segmenters(*, sam_model_type: str = "vit_b", sam_checkpoint=None) -> dict[str, str | None]:
    """Which segmenters can run now, without downloading anything.

    Args:
        sam_model_type: the SAM variant to check.
        sam_checkpoint: an explicit SAM weight file to check instead of the usual places.

    Returns:
        name -> None when usable, else the reason it is not (for SAM weights: where they were looked for
        and the command that fetches them).
    """
    status: dict[str, str | None] = {"cam": None, "grabcut": None}
    try:
        importlib.import_module("segment_anything")
    except ImportError as err:
        status["sam"] = f"the segment-anything package is not installed ({err}); pip install segment-anything"
        return status
    from dapt_core.segment.sam import SAM_WEIGHTS, check_model_type
    from dapt_core.weights import WeightsNotFoundError, resolve_weights

    try:
        resolve_weights(SAM_WEIGHTS[check_model_type(sam_model_type)], sam_checkpoint, download=False)
        status["sam"] = None
    except (WeightsNotFoundError, ValueError) as err:
        status["sam"] = f"SAM {sam_model_type} weights are not on this machine: {err}"
    return status


__all__ = [
    "CamPromptConfig",
    "Candidate",
    "SEGMENTERS",
    "SegmentContext",
    "SegmentResult",
    "SegmentationError",
    "Segmenter",
    "available_segmenters",
    "get_segmenter",
    "list_segmenters",
    "pixel_hash",
]
