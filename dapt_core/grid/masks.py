"""DAPT-S's masks for a grid, one job per data set, fanned out over the same engine as the training runs.

A job covers every image some mask-cue cell of its data set trains on (the union of its few-shot draws) and
writes one PNG per image into ``MASK_ROOT/<data set>/``, mirroring the image tree, which is what the cells'
:class:`~dapt_core.data.masks.MaskFolder` reads. The cue the segmenter is prompted from is zero-shot CLIP's
Grad-CAM for the true class (as ``python -m dapt_core masks`` without ``--prompts``). Masks already there are
skipped, so a job whose masks all exist loads nothing, and an interrupted job resumes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dapt_core.grid.cells import Cell
from dapt_core.grid.config import GridConfig, MaskSettings
from dapt_core.grid.methods import get_method

if TYPE_CHECKING:
    from dapt_core.data.records import Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskJob:
    dataset: str  # the data set's name in the grid
    data: str  # its data spec
    mask_dir: str  # the mask tree to fill
    subsample: str  # the classes the cells train on: all, or base (base-to-novel)
    draws: tuple[tuple[int, int], ...]  # (shots, seed) of every training draw to cover
    backbone: str
    weights: str | None = None
    device: str | None = None
    settings: MaskSettings = field(default_factory=MaskSettings)

    @property
    def key(self) -> str:
        return f"masks/{self.dataset}"


def mask_jobs(cfg: GridConfig, cells: list[Cell]) -> list[MaskJob]:
    """One job per data set that has a cell with the mask cue among ``cells``."""
    by_dataset: dict[str, list[Cell]] = {}
    for cell in cells:
        if get_method(cell.method).cue == "mask":
            by_dataset.setdefault(cell.dataset, []).append(cell)
    subsample = "base" if cfg.setting == "base_to_novel" else "all"
    return [MaskJob(dataset=name, data=group[0].data, mask_dir=group[0].mask_dir, subsample=subsample,
                    draws=tuple(sorted({(c.shots, c.seed) for c in group})), backbone=cfg.backbone,
                    weights=cfg.weights, device=cfg.device, settings=cfg.masks)
            for name, group in by_dataset.items()]


def job_images(job: MaskJob) -> tuple[list[Sample], Path, list[str]]:
    """(images to cover, the image root masks mirror, the class names the images' labels index)."""
    from dapt_core.data.folders import few_shot, image_root, parse_data_spec, subsample_classes

    splits = parse_data_spec(job.data)
    part = subsample_classes(splits, job.subsample)
    images = list(dict.fromkeys(s for shots, seed in job.draws for s in few_shot(part.train, shots, seed)))
    return images, image_root(splits), part.classnames


def missing_images(job: MaskJob) -> list[Sample]:
    """The job's images without a mask file yet."""
    from dapt_core.segment.bulk import mask_path

    images, root, _ = job_images(job)
    return [s for s in images if not mask_path(s.path, root, Path(job.mask_dir)).is_file()]


def run_mask_job(job: MaskJob) -> dict:
    """Segments the job's images that have no mask yet; returns what :func:`precompute_masks` reports."""
    from dapt_core.constants import ZERO_SHOT_CONTEXT
    from dapt_core.grid.trial import cached_backbone
    from dapt_core.learners import build_learner
    from dapt_core.segment import get_segmenter
    from dapt_core.segment.bulk import learner_context_fn, precompute_masks

    images, root, classnames = job_images(job)
    if not missing_images(job):
        return {"dataset": job.dataset, "images": len(images), "written": 0, "skipped": len(images)}
    settings = job.settings
    options = {"model_type": settings.sam_model, "checkpoint": settings.sam_checkpoint} \
        if settings.segmenter == "sam" else {}
    segmenter = get_segmenter(settings.segmenter, **options)  # first: missing SAM weights fail before CLIP loads
    learner = build_learner("coop", cached_backbone(job.backbone, job.weights, job.device), classnames,
                            ctx_init=ZERO_SHOT_CONTEXT)
    learner.eval()
    context = learner_context_fn(learner, cam_method=settings.cam_method,
                                 score=settings.segmenter == "sam" and settings.score)
    report = precompute_masks(images, segmenter, job.mask_dir, root, context_fn=context, progress=False)
    return {"dataset": job.dataset, "images": len(images), "written": report.written, "skipped": report.skipped,
            "fallbacks": report.fallbacks, "seconds": round(report.seconds, 2), "settings": asdict(settings)}
