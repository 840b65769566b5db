"""One comparison as the app runs it: the visitor's picture and choices checked, the prompt sets analysed on it,
and the results shrunk and formatted for the browser (split, overlays, table, chart, figure, JSON)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
from PIL import Image

from dapt_core.analysis import AnalysisResult, analyze
from dapt_core.app_support.catalog import PromptCatalog
from dapt_core.app_support.segmenters import EXACT, SegmenterMenu
from dapt_core.app_support.startup import Examples, TempFiles, parse_classnames
from dapt_core.app_support.uploads import upload_name, upload_path
from dapt_core.imageio import image_to_array, load_image
from dapt_core.learners.base import PromptLearner
from dapt_core.viz.figure import FAST_PNG_LEVEL, figure_to_array, save_figure, share_chart
from dapt_core.viz.overlay import heatmap_overlay, outline, split_panel

FIGURE_NAME = "dapt-comparison.png"  # the file name the visitor downloads the comparison figure under
TABLE_HEADERS = ["prompt set", "method", "on object", "peak on object", "explains", "top-5"]
TABLE_WIDTHS = ["15%", "17%", "10%", "10%", "12%", "36%"]
MASK_BYTE_ON = 127  # a shrunk 0/255 mask is object above this (area averaging blends its edge)


@dataclass(frozen=True)
class CompareLimits:
    max_sets: int  # prompt sets in one comparison
    max_pixels: int  # width * height of an image to analyse
    display_side: int  # pictures are sent to the browser at most this large on their long side


class CompareOutputs(NamedTuple):
    """What one comparison shows, in the order of the app's outputs."""

    split: np.ndarray  # (h, w, 3) uint8: outline, foreground and background panels; the picture without a mask
    gallery: list[tuple[np.ndarray, str]]  # per prompt set: CAM overlay and caption
    rows: list[list[str]]  # the predictions table, one row per prompt set (TABLE_HEADERS)
    chart: np.ndarray | None  # (h, w, 3) uint8 bar chart of the attention on the object; None without a mask
    figure: str  # path of the saved comparison figure (PNG)
    summary: dict  # AnalysisResult.to_json() plus the prompt-set keys compared


def load_picture(value: Any, max_pixels: int) -> tuple[Image.Image, str, Path]:
    """The uploaded picture as RGB PIL, the name the visitor knows it by, and its server path.

    Raises:
        ValueError: nothing uploaded.
        dapt_core.imageio.ImageInputError: unreadable, or over ``max_pixels`` (width * height).
    """
    path = upload_path(value)
    if path is None:
        raise ValueError("Upload an image (or pick an example) first.")
    name = upload_name(value)
    return load_image(path, max_pixels=max_pixels, name=name), name, path


def shrink_for_display(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """``pixels`` (H, W[, C]) with its long side at most ``max_side`` (area averaging); never enlarged."""
    scale = max_side / max(pixels.shape[:2])
    if scale >= 1:
        return pixels
    size = (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def format_share(share: float | None) -> str:
    """A share in [0, 1] as a whole percentage; ``"n/a"`` for None or NaN."""
    return "n/a" if share is None or math.isnan(share) else f"{share:.0%}"


def present(result: AnalysisResult, set_keys: list[str], title: str, figure_path: Path,
            display_side: int) -> CompareOutputs:
    """The browser's view of an analysis: pictures shrunk to ``display_side``, overlays outlined with the mask,
    table rows, share chart (with a mask only), the figure saved to ``figure_path`` and the JSON summary."""
    image = shrink_for_display(result.image, display_side)
    mask = result.mask  # the mask used: exact, segmented or none
    small_mask = None if mask is None else shrink_for_display(mask.astype(np.uint8) * 255, display_side) > MASK_BYTE_ON
    split = image if small_mask is None else split_panel(image, small_mask)
    gallery, rows = [], []
    for r in result.results:
        overlay = heatmap_overlay(image, shrink_for_display(r.cam, display_side))
        if small_mask is not None:
            overlay = outline(overlay, small_mask)
        gallery.append((overlay, f"{r.name}: on-object {format_share(r.object_share)}"))
        hit = "" if r.pointing_hit is None else ("yes" if r.pointing_hit else "no")
        top5 = " · ".join(f"{c} {p:.0%}" for c, p in r.top5)
        rows.append([r.name, r.label, format_share(r.object_share), hit, r.target, top5])
    chart = None
    if mask is not None:
        shares = [None if r.object_share is None or math.isnan(r.object_share) else r.object_share
                  for r in result.results]
        chart = figure_to_array(share_chart([r.name for r in result.results], shares))
    figure = save_figure(result.figure(title=title), figure_path, compress_level=FAST_PNG_LEVEL)
    return CompareOutputs(split, gallery, rows, chart, str(figure), {**result.to_json(), "prompt_set_keys": set_keys})


class Comparer:
    """The compare tab's work on one shared backbone: which segmenter suits an upload, what it costs, and the
    comparison itself. Shared by every visitor; it keeps no per-visitor state."""

    def __init__(self, catalog: PromptCatalog, segmenters: SegmenterMenu, examples: Examples, files: TempFiles,
                 limits: CompareLimits) -> None:
        self.catalog = catalog
        self.segmenters = segmenters
        self.examples = examples
        self.files = files
        self.limits = limits

    def suggest_segmenter(self, image: Any, segmenter: str) -> str:
        """"exact" for an example image that comes with its exact object mask; otherwise the current choice,
        with "exact" (which only examples allow) turned back into "cam"."""
        path = upload_path(image)
        try:
            exact = path is not None and self.examples.exact_mask(path) is not None
        except OSError:
            exact = False
        if exact:
            return EXACT
        return "cam" if segmenter == EXACT else segmenter

    def segmenter_note(self, image: Any, segmenter: str) -> str:
        """What the chosen segmenter does, why it cannot run, or (SAM) what it will cost on this image."""
        pixels = None
        if segmenter == "sam" and upload_path(image) is not None:
            pixels = image_to_array(load_picture(image, self.limits.max_pixels)[0])
        return self.segmenters.note(segmenter, pixels)

    def learners(self, set_keys: list[str] | None, classes: str | None) -> list[tuple[str, PromptLearner]]:
        """(name, learner) of each chosen prompt set, on the typed class list or their own common one.

        Raises:
            ValueError: no set, too many, a bad class list, or sets with different stored lists and none typed.
            KeyError: an unknown prompt-set key.
        """
        set_keys = list(set_keys or [])
        if not set_keys:
            raise ValueError("Pick at least one prompt set (two or more to compare them).")
        if len(set_keys) > self.limits.max_sets:
            raise ValueError(f"Pick at most {self.limits.max_sets} prompt sets at a time.")
        try:
            names = parse_classnames(classes)
        except ValueError as err:
            raise ValueError(f"Classes: {err}") from err
        entries = self.catalog.get_many(set_keys)
        if names is None and len({tuple(e.info.meta["classnames"]) for e in entries}) > 1:
            raise ValueError("These prompt sets were trained on different class lists; type one class list "
                             "(comma-separated) for all of them.")
        return [(e.info.name, self.catalog.learner(e.key, names, entry=e)) for e in entries]

    def run(self, image: Any, set_keys: list[str] | None, classes: str | None, segmenter: str, cam_method: str,
            target: str | None) -> CompareOutputs:
        """Runs every chosen prompt set on the upload and presents the results (see :func:`present`).

        Raises:
            ValueError: a mistake of the visitor's, with a message for them (see :meth:`learners`).
            KeyError: an unknown prompt-set key.
        """
        picture, shown_name, path = load_picture(image, self.limits.max_pixels)
        learners = self.learners(set_keys, classes)
        mask = self.examples.exact_mask(path) if segmenter == EXACT else None
        if segmenter == EXACT and mask is None:
            raise ValueError("Only the example images come with an exact mask; pick another segmenter.")
        result = analyze(picture, learners, segmenter=self.segmenters.get(segmenter), mask=mask,
                         cam_method=cam_method, target=(target or "").strip() or None,
                         max_pixels=self.limits.max_pixels)
        title = f"{shown_name}: {', '.join(name for name, _ in learners)}"
        return present(result, list(set_keys), title, self.files.new_dir() / FIGURE_NAME, self.limits.display_side)
