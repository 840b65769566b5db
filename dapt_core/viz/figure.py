"""The side-by-side comparison figure and the attention-share chart.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas and never touch
pyplot's global state, so a web server may draw several at once from different threads.
Saved PNGs carry no software-version metadata and use a fixed dpi, so the same figure
gives the same bytes.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dapt_core.fileio import atomic_path
from dapt_core.viz.overlay import heatmap_overlay, outline, split_views

logger = logging.getLogger(__name__)

FIGURE_DPI = 100
# Width of one image column; the stacked foreground/background column is half as wide.
COLUMN_WIDTH_IN = 2.6
# Room under the images for the titles and the five prediction lines.
TEXT_HEIGHT_IN = 1.7
SUPTITLE_HEIGHT_IN = 0.4
# Very tall or wide images are letterboxed into these aspect limits (height / width).
MIN_ASPECT, MAX_ASPECT = 0.5, 2.0
# An image column is this many pixels wide, and at most MAX_ASPECT times that tall: the images are shrunk to
# that first, so drawing never resamples more pixels than the figure shows.
COLUMN_PX = round(COLUMN_WIDTH_IN * FIGURE_DPI)
# zlib level of saved PNGs: 6 (the usual) for results kept in the repository; the app saves a figure on every
# comparison and uses FAST_PNG_LEVEL (a somewhat larger file, written in a fraction of the time).
PNG_COMPRESS_LEVEL = 6
FAST_PNG_LEVEL = 1
TOP_K_SHOWN = 5
LABEL_MAX_CHARS = 20
TITLE_FONT_SIZE = 9
TEXT_FONT_SIZE = 8
# The object's outline on every CAM overlay: attention is read against the object's edge.
CAM_OUTLINE_COLOUR = (255, 255, 255)
CAM_OUTLINE_PX_PER_LINE = 200
SHARE_BAR_COLOUR = "#3b75af"
SHARE_ROW_HEIGHT_IN = 0.4
SHARE_CHART_WIDTH_IN = 5.0
SHARE_CHART_MARGIN_IN = 1.0
# Gap between a bar's end and its percentage, in axis units; past this share it goes inside.
SHARE_LABEL_PAD = 0.01
SHARE_LABEL_INSIDE_ABOVE = 0.85


@dataclass
class PanelResult:
    """What one prompt set (zero-shot, CoOp, DAPT, ...) makes of the image."""

    name: str  # label of the prompt set, shown as the column title
    cam: np.ndarray  # (h, w) non-negative attention map for the predicted or true class
    top5: list[tuple[str, float]]  # (class name, probability in [0, 1]), best first
    object_share: float | None  # share of CAM energy on the object mask, None without a mask
    pointing_hit: bool | None  # whether the CAM's peak is on the object, None without a mask


def comparison_figure(
    image: np.ndarray,
    mask: np.ndarray | None,
    panels: list[PanelResult],
    *,
    title: str | None = None,
    segmenter: str | None = None,
) -> Figure:
    """One row: the input, its foreground/background split, then one CAM overlay per prompt set.

    With a mask the columns are: input, mask outline, foreground over background (two
    half-size views stacked), then the panels; without one, input then the panels. Each
    panel's title gives its attention-on-object share and whether the CAM's peak is on the
    object; its top-5 predictions are listed under it.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (h, w) bool or floats in [0, 1] marking the object, or None.
        panels: one result per prompt set, in display order (may be empty).
        title: figure title, or None.
        segmenter: name of what produced the mask (e.g. "SAM ViT-B"), shown with it.

    Returns:
        A ``matplotlib.figure.Figure`` with an Agg canvas; with a mask it has
        ``4 + len(panels)`` axes, without ``1 + len(panels)``.

    Raises:
        ValueError: bad image, mask or CAM (see :mod:`dapt_core.viz.overlay`).
    """
    display = _display_image(image)
    aspect = min(max(display.shape[0] / display.shape[1], MIN_ASPECT), MAX_ASPECT)
    image_height = COLUMN_WIDTH_IN * aspect
    width_ratios = [1.0] + ([1.0, 0.5] if mask is not None else []) + [1.0] * len(panels)
    height = image_height + TEXT_HEIGHT_IN + (SUPTITLE_HEIGHT_IN if title else 0.0)
    fig = Figure(figsize=(COLUMN_WIDTH_IN * sum(width_ratios), height), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, len(width_ratios), width_ratios=width_ratios)

    _show(fig.add_subplot(grid[:, 0]), display, "input")
    column = 1
    if mask is not None:
        views = split_views(display, mask)
        _show(fig.add_subplot(grid[:, 1]), views.outline, f"mask ({segmenter})" if segmenter else "mask")
        _show(fig.add_subplot(grid[0, 2]), views.foreground, "foreground")
        _show(fig.add_subplot(grid[1, 2]), views.background, "background")
        column = 3
    thickness = max(1, round(max(display.shape[:2]) / CAM_OUTLINE_PX_PER_LINE))
    for offset, panel in enumerate(panels):
        overlay = heatmap_overlay(display, panel.cam)
        if mask is not None:
            overlay = outline(overlay, mask, colour=CAM_OUTLINE_COLOUR, thickness=thickness)
        ax = fig.add_subplot(grid[:, column + offset])
        _show(ax, overlay, _panel_title(panel))
        ax.set_xlabel(_top5_text(panel.top5), fontsize=TEXT_FONT_SIZE, family="monospace", loc="left")
    if title:
        fig.suptitle(title, fontsize=TITLE_FONT_SIZE + 2)
    return fig


def share_chart(names: list[str], shares: list[float | None]) -> Figure:
    """A horizontal bar per prompt set: the share of its attention that lies on the object.

    Args:
        names: one label per prompt set, drawn top to bottom.
        shares: the matching shares in [0, 1]; None or NaN is drawn as "n/a" with no bar.

    Returns:
        A ``matplotlib.figure.Figure`` with an Agg canvas and one axes, x axis 0..1.

    Raises:
        ValueError: the lists differ in length or are empty, or a share leaves [0, 1].
    """
    if len(names) != len(shares):
        raise ValueError(f"share_chart: {len(names)} names but {len(shares)} shares")
    if not names:
        raise ValueError("share_chart: names is empty; there is nothing to chart")
    values = [math.nan if share is None else float(share) for share in shares]
    for name, value in zip(names, values):
        if not math.isnan(value) and not 0.0 <= value <= 1.0:
            raise ValueError(f"share_chart: share of {name!r} must lie in [0, 1], got {value}")
    height = SHARE_ROW_HEIGHT_IN * len(names) + SHARE_CHART_MARGIN_IN
    fig = Figure(figsize=(SHARE_CHART_WIDTH_IN, height), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rows = np.arange(len(names))
    ax.barh(rows, [0.0 if math.isnan(v) else v for v in values], color=SHARE_BAR_COLOUR)
    for row, value in zip(rows, values):
        if math.isnan(value):
            ax.text(SHARE_LABEL_PAD, row, "n/a", va="center", fontsize=TEXT_FONT_SIZE)
        elif value > SHARE_LABEL_INSIDE_ABOVE:
            # Near the right edge the label goes inside the bar so it is not cut off.
            ax.text(value - SHARE_LABEL_PAD, row, f"{value:.0%}", va="center", ha="right",
                    color="white", fontsize=TEXT_FONT_SIZE)
        else:
            ax.text(value + SHARE_LABEL_PAD, row, f"{value:.0%}", va="center", fontsize=TEXT_FONT_SIZE)
    ax.set_yticks(rows, labels=names, fontsize=TEXT_FONT_SIZE)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)
    ax.tick_params(axis="x", labelsize=TEXT_FONT_SIZE)
    ax.set_xlabel("share of attention on the object", fontsize=TEXT_FONT_SIZE)
    ax.set_title("Attention on object vs background", fontsize=TITLE_FONT_SIZE)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = FIGURE_DPI,
                compress_level: int = PNG_COMPRESS_LEVEL) -> Path:
    """Write a figure as PNG atomically, with byte-for-byte reproducible output.

    The PNG is written to a temporary file beside ``path`` and renamed over it, so a
    reader never sees half a file. The "Software" metadata (matplotlib's version) is left
    out so the bytes depend only on the figure.

    Args:
        fig: the figure to save.
        path: destination ending in ``.png``; missing parent folders are created.
        dpi: resolution in dots per inch.
        compress_level: zlib level of the PNG, 0 (none) to 9; the pixels are the same at every level.

    Returns:
        The destination as a ``Path``.

    Raises:
        ValueError: ``path`` does not end in ``.png``.
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG; {target} must end in .png")
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None},
                    pil_kwargs={"compress_level": compress_level})
    logger.debug("saved figure to %s", target)
    return target


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to pixels.

    Args:
        fig: the figure; given an Agg canvas if it has none.

    Returns:
        (H, W, 3) uint8 RGB at the figure's own dpi.
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.array(np.asarray(canvas.buffer_rgba())[:, :, :3], copy=True)


def _display_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be a uint8 numpy array (H, W, 3); got shape {shape}")
    height, width = image.shape[:2]
    scale = min(COLUMN_PX / width, COLUMN_PX * MAX_ASPECT / height)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _show(ax: Axes, pixels: np.ndarray, title: str) -> None:
    ax.imshow(pixels, interpolation="antialiased")
    ax.set_title(title, fontsize=TITLE_FONT_SIZE)
    # Ticks off but the axis kept, so an xlabel (the top-5 list) still gets layout space.
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _panel_title(panel: PanelResult) -> str:
    facts = []
    if panel.object_share is not None:
        share = panel.object_share
        facts.append("on object n/a" if math.isnan(share) else f"on object {share:.0%}")
    if panel.pointing_hit is not None:
        facts.append("peak on object" if panel.pointing_hit else "peak off object")
    return panel.name + ("\n" + " | ".join(facts) if facts else "")


def _top5_text(top5: list[tuple[str, float]]) -> str:
    lines = []
    for label, probability in top5[:TOP_K_SHOWN]:
        name = label if len(label) <= LABEL_MAX_CHARS else label[: LABEL_MAX_CHARS - 1] + "\u2026"
        lines.append(f"{probability:6.1%}  {name}")
    return "\n".join(lines) if lines else "(no predictions)"
