"""DAPT's fine cue on a visitor's own images: foreground masks made by a segmenter, cached by image content,
shown for review, and handed to the training run exactly as reviewed.

:meth:`UserMasks.make` segments every image of a labelled folder (SAM where its weights are present, else
GrabCut or the thresholded map, each seeded by the best measured attribution map of zero-shot CLIP for the
image's class) and keeps each mask in a :class:`~dapt_core.data.masks.MaskCache`; an image seen before is not
segmented again. :meth:`UserMasks.reviewed` writes the training folder's mask tree from that cache only, so
the training reads the masks the visitor saw, and refuses images that have none yet.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dapt_core.app_support.compare import shrink_for_display
from dapt_core.app_support.segmenters import SegmenterMenu
from dapt_core.app_support.startup import TempFiles
from dapt_core.app_support.uploads import UploadError, extract_labelled_zip
from dapt_core.attention.descriptions import best_measured_method
from dapt_core.backbones import Backbone
from dapt_core.data.dataset import load_rgb
from dapt_core.data.folders import load_imagefolder
from dapt_core.data.masks import MaskCache, image_hash, read_mask_file
from dapt_core.data.records import Sample
from dapt_core.learners import build_learner
from dapt_core.segment.bulk import learner_context_fn, mask_path, precompute_masks, write_mask_png
from dapt_core.viz.overlay import outline

log = logging.getLogger(__name__)

MASK_SEGMENTERS = ("sam", "grabcut", "cam")  # the segmenter menu's entries that make masks of a folder
SEED_PROMPT = "a photo of a"  # the CAM that seeds a segmenter is zero-shot CLIP's for the image's class
MASK_ON = 0.5  # a cached [0, 1] mask is foreground from this value
GALLERY_SIDE_PX = 256  # review pictures are at most this large
Progress = Callable[[int, int], None]  # (images done, images in all)


@dataclass(frozen=True)
class MaskSet:
    """The masks of one labelled folder, as made (or found in the cache) by :meth:`UserMasks.make`."""

    image_root: Path  # the labelled folder (one sub-folder per class)
    mask_root: Path  # its mask tree: mask_root/<class>/<image stem>.png, 0/255
    samples: list[Sample]  # every image of the folder, by class then path
    segmenter: str  # the segmenter's menu name
    cam_method: str  # the attribution method that seeded it
    computed: int  # masks segmented by this call
    cached: int  # masks found in the cache

    def mask(self, sample: Sample) -> np.ndarray:
        """The bool (H, W) mask of one of :attr:`samples`."""
        return read_mask_file(mask_path(sample.path, self.image_root, self.mask_root)) >= MASK_ON

    def gallery(self, side: int = GALLERY_SIDE_PX) -> list[tuple[np.ndarray, str]]:
        """(image with its mask's outline, caption with class, file and object share) per image."""
        items = []
        for sample in self.samples:
            mask = self.mask(sample)
            picture = shrink_for_display(np.asarray(load_rgb(sample.path)), side)
            small = shrink_for_display(mask.astype(np.uint8) * 255, side) > 127
            items.append((outline(picture, small), f"{sample.classname}: {sample.path.name} "
                                                   f"(object {mask.mean():.0%})"))
        return items

    @property
    def summary(self) -> str:
        return (f"{len(self.samples)} masks ({self.segmenter}, seeded by {self.cam_method}): {self.computed} "
                f"made now, {self.cached} from the cache. Review them below, then train with the mask cue.")


def form_folder(source: str, archive: Path | None, folder: Path | None, workdir: Path) -> Path:
    """The labelled folder of the tuning form's source: the zip extracted under ``workdir``, or the folder.

    Raises:
        ValueError: the synthetic source (its masks are exact), or a missing zip / folder.
    """
    if source == "zip":
        if archive is None:
            raise ValueError("Upload a zip with one folder of images per class first.")
        return extract_labelled_zip(archive, workdir / "images")
    if source == "images":
        if folder is None:
            raise UploadError("Add images class by class first.")
        return folder
    raise ValueError("Masks are made for your own images (a zip or images added class by class); the "
                     "synthetic task comes with exact masks.")


class UserMasks:
    """Masks of visitors' labelled folders on the shared backbone, cached by image content and class.

    Args:
        segmenters: the app's segmenter menu (what can run here).
        cache_root: where the caches live (one per backbone, segmenter and seeding method); None: a private
            temporary folder removed with this object.
        cam_method: the map that seeds the segmenters; None: the best measured one.
    """

    def __init__(self, backbone: Backbone, segmenters: SegmenterMenu, cache_root: Path | None = None,
                 cam_method: str | None = None) -> None:
        self.backbone = backbone
        self.segmenters = segmenters
        self._temp = TempFiles(prefix="dapt-masks-") if cache_root is None else None
        self.cache_root = Path(cache_root) if cache_root is not None else self._temp.root
        self.cam_method = cam_method or best_measured_method()

    def choices(self) -> list[str]:
        """The mask segmenters that can run here, best first."""
        return [n for n in MASK_SEGMENTERS if self.segmenters.status.get(n, "unknown") is None]

    def cache(self, segmenter: str) -> MaskCache:
        """The cache of one segmenter's masks on this backbone."""
        return MaskCache(self.cache_root / f"{self.backbone.name}-{segmenter}-{self.cam_method}")

    @staticmethod
    def key(sample: Sample) -> str:
        """The cache key: the image's content hash with its class (the seeding map explains the class)."""
        return hashlib.sha256(f"{image_hash(sample.path)}/{sample.classname}".encode()).hexdigest()

    @staticmethod
    def _folder(image_root: Path) -> tuple[list[str], list[Sample]]:
        splits = load_imagefolder(image_root, test_fraction=0.0)
        samples = splits.train + splits.val + splits.test
        return splits.classnames, sorted(samples, key=lambda s: (s.label, str(s.path)))  # review order

    def _check(self, segmenter: str) -> None:
        if segmenter not in MASK_SEGMENTERS:
            raise ValueError(f"unknown mask segmenter {segmenter!r}; choose from {', '.join(self.choices())}")
        self.segmenters.get(segmenter)  # says why it cannot run here

    def make(self, image_root: Path, segmenter: str, mask_root: Path,
             progress: Progress = lambda done, total: None) -> MaskSet:
        """Masks for every image of ``image_root`` into ``mask_root``: from the cache, else segmented (and
        cached). ``progress`` hears after each image.

        Raises:
            ValueError: an unknown or unavailable segmenter, a folder that is not labelled images.
        """
        self._check(segmenter)
        classnames, samples = self._folder(Path(image_root))
        cache, seg, context = self.cache(segmenter), self.segmenters.get(segmenter), None
        computed = 0
        for done, sample in enumerate(samples, 1):
            key, target = self.key(sample), mask_path(sample.path, image_root, mask_root)
            if key in cache:
                write_mask_png(target, cache.get(key) >= MASK_ON)
            else:
                if context is None and seg.needs_cam:
                    learner = build_learner("coop", self.backbone, classnames, ctx_init=SEED_PROMPT)
                    context = learner_context_fn(learner, cam_method=self.cam_method, score=segmenter == "sam")
                precompute_masks([sample], seg, mask_root, image_root, context_fn=context, resume=False,
                                 progress=False)
                cache.put(key, read_mask_file(target))
                computed += 1
            progress(done, len(samples))
        log.info("masks of %s (%s): %d computed, %d cached", image_root, segmenter, computed,
                 len(samples) - computed)
        return MaskSet(Path(image_root), Path(mask_root), samples, segmenter, self.cam_method, computed,
                       len(samples) - computed)

    def make_for_form(self, source: str, archive: Path | None, folder: Path | None, segmenter: str,
                      workdir: Path, progress: Progress = lambda done, total: None) -> MaskSet:
        """:meth:`make` on the tuning form's images (see :func:`form_folder`), the masks under ``workdir``."""
        return self.make(form_folder(source, archive, folder, workdir), segmenter, workdir / "masks", progress)

    def reviewed(self, image_root: Path, mask_root: Path, segmenter: str) -> Path:
        """The mask tree of ``image_root`` written into ``mask_root`` from the cache only (nothing is
        segmented): the masks the visitor reviewed. Returns ``mask_root``.

        Raises:
            ValueError: an unknown or unavailable segmenter, or images without a mask made yet.
        """
        self._check(segmenter)
        samples, cache = self._folder(Path(image_root))[1], self.cache(segmenter)
        missing = [s for s in samples if self.key(s) not in cache]
        if missing:
            raise ValueError(f"{len(missing)} of {len(samples)} images have no {segmenter} mask yet (e.g. "
                             f"{missing[0].classname}/{missing[0].path.name}); press Make masks and review "
                             "them before training with the mask cue.")
        for sample in samples:
            write_mask_png(mask_path(sample.path, image_root, mask_root), cache.get(self.key(sample)) >= MASK_ON)
        return Path(mask_root)
