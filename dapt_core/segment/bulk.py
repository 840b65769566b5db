"""Foreground masks in bulk for training with the fine cue (``train --dapt mask --masks DIR``).

:func:`precompute_masks` runs a segmenter over a list of samples and writes one 0/255 PNG per image into a
tree that mirrors the image tree (``mask_root/<image path relative to image_root, suffix .png>``), which is
what :class:`dapt_core.data.masks.MaskFolder` reads. Each file is written to a temporary name and moved into
place, and existing files are skipped, so an interrupted run resumes where it stopped.
:func:`learner_context_fn` supplies the segmenters' context from a prompt learner: its Grad-CAM for the
true class and a CLIP scorer of masked regions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import cv2
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from dapt_core.fileio import atomic_path
from dapt_core.data.dataset import load_rgb
from dapt_core.data.records import Sample
from dapt_core.segment.base import SegmentContext, Segmenter

if TYPE_CHECKING:
    import torch

    from dapt_core.learners.base import PromptLearner

log = logging.getLogger(__name__)

ContextFn = Callable[[Sample, np.ndarray], SegmentContext]
MASK_SUFFIX = ".png"  # masks are 8-bit PNGs, 0 background, 255 foreground
FOREGROUND_VALUE = 255


@dataclass
class BulkReport:
    """What a :func:`precompute_masks` run did."""

    mask_root: Path  # where the masks are
    written: int  # masks computed and written by this run
    skipped: int  # masks that already existed (resume)
    seconds: float  # wall time of the run
    mean_area: float | None  # mean foreground share of the written masks, None when nothing was written
    fallbacks: int  # written masks for which the segmenter fell back to the CAM


def mask_path(image_path: Path, image_root: Path, mask_root: Path) -> Path:
    """Where the mask of an image goes: its path relative to ``image_root``, under ``mask_root``, as .png.

    Raises:
        ValueError: the image is not under ``image_root``.
    """
    try:
        relative = Path(image_path).relative_to(image_root)
    except ValueError as err:
        raise ValueError(f"image {image_path} is not under the image root {image_root}") from err
    return Path(mask_root) / relative.with_suffix(MASK_SUFFIX)


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """Writes a bool (H, W) mask as a 0/255 PNG atomically (temporary file + ``os.replace``)."""
    pixels = np.where(np.asarray(mask, dtype=bool), FOREGROUND_VALUE, 0).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels, mode="L").save(tmp, format="PNG")


def _targets(samples: Sequence[Sample], image_root: Path, mask_root: Path) -> list[Path]:
    targets = [mask_path(s.path, image_root, mask_root) for s in samples]
    owner: dict[Path, Path] = {}
    for sample, target in zip(samples, targets):
        first = owner.setdefault(target, sample.path)
        if first != sample.path:
            raise ValueError(f"images {first} and {sample.path} would share the mask file {target}; "
                             "rename one of them")
    return targets


def precompute_masks(samples: Sequence[Sample], segmenter: Segmenter, mask_root: str | Path,
                     image_root: str | Path, *, context_fn: ContextFn | None, resume: bool = True,
                     progress: bool = True) -> BulkReport:
    """Segments every sample's image and writes its mask under ``mask_root``.

    Args:
        samples: the images (a sample listed twice is done once).
        segmenter: any :class:`~dapt_core.segment.Segmenter`.
        mask_root: the mask tree to fill; created if missing.
        image_root: the folder image paths are taken relative to (the one ``MaskFolder`` is given).
        context_fn: ``(sample, image (H, W, 3) uint8) -> SegmentContext`` with the CAM / scorer the segmenter
            needs; None gives an empty context (for segmenters that need no CAM).
        resume: skip images whose mask file exists; False recomputes and overwrites them.
        progress: show a tqdm bar.

    Returns:
        Counts of written and skipped masks.

    Raises:
        ValueError: an image outside ``image_root``, two images mapping to one mask file, or a segmenter
            that needs a CAM without a ``context_fn``; whatever the segmenter raises, naming the image.
    """
    if context_fn is None and segmenter.needs_cam:
        raise ValueError(f"segmenter {segmenter.name!r} needs a CAM; pass a context_fn that provides it")
    image_root, mask_root = Path(image_root), Path(mask_root)
    unique = list(dict.fromkeys(samples))
    targets = _targets(unique, image_root, mask_root)
    start = time.perf_counter()
    written = skipped = fallbacks = 0
    areas: list[float] = []
    with tqdm(total=len(unique), desc=f"masks ({segmenter.name})", unit="img", disable=not progress) as bar:
        for sample, target in zip(unique, targets):
            if resume and target.is_file():
                skipped += 1
            else:
                image = np.asarray(load_rgb(sample.path))
                ctx = context_fn(sample, image) if context_fn is not None else SegmentContext()
                try:
                    result = segmenter.segment(image, ctx)
                except ValueError as err:
                    raise ValueError(f"segmenting {sample.path} failed: {err}") from err
                write_mask_png(target, result.mask)
                written += 1
                fallbacks += bool(result.info.get("fallback"))
                areas.append(float(np.mean(result.mask)))
            bar.update(1)
            bar.set_postfix(written=written, skipped=skipped, refresh=False)
    report = BulkReport(mask_root=mask_root, written=written, skipped=skipped,
                        seconds=time.perf_counter() - start,
                        mean_area=float(np.mean(areas)) if areas else None, fallbacks=fallbacks)
    log.info("masks in %s: %d written, %d skipped, %d fallbacks, %.1f s", mask_root, written, skipped,
             fallbacks, report.seconds)
    return report


def learner_context_fn(learner: PromptLearner, *, cam_method: str = "gradcam", score: bool = True) -> ContextFn:
    """A context function from a prompt learner: Grad-CAM and CLIP scores for each sample's TRUE class.

    The CAM is computed on the whole image squashed to the backbone's input size and resized back to the
    image. The scorer shows CLIP each candidate mask as DAPT's foreground view does: pixels outside the mask
    set to the normalisation mean, and returns the softmax probability of the true class.

    Args:
        learner: its class list must be indexed by the samples' labels.
        cam_method: a key of :data:`dapt_core.attention.cam.CAM_METHODS`.
        score: also provide ``score_masks`` (SAM then chooses by it); False leaves SAM's predicted IoU.

    Returns:
        ``(sample, image (H, W, 3) uint8) -> SegmentContext``.
    """
    import torch

    from dapt_core.attention.cam import compute_cams
    from dapt_core.preprocess import to_model_input
    from dapt_core.segment.scoring import mask_scorer

    backbone = learner.backbone
    cached: dict[str, torch.Tensor] = {}

    def text_features() -> torch.Tensor:
        # The class prompts do not change while masks are made: encode them once.
        if "text" not in cached:
            with backbone.lock, torch.no_grad():
                cached["text"] = learner.text_features()
        return cached["text"]

    def context(sample: Sample, image: np.ndarray) -> SegmentContext:
        height, width = image.shape[:2]
        batch = to_model_input(image, backbone.image_size, backbone.mean, backbone.std)[None].to(backbone.device)
        cam = compute_cams(learner, batch, [sample.label], method=cam_method, text_features=text_features())[0]
        cam = np.clip(cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
        scorer = mask_scorer(learner, text_features(), batch, sample.label) if score else None
        return SegmentContext(cam=cam, score_masks=scorer)

    return context
