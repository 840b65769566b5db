"""Overlays and the comparison figure: shapes, exact pixels where they are known, determinism, saving."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from dapt_core.viz import figure as figure_module
from dapt_core.viz.figure import PanelResult, comparison_figure, figure_to_array, save_figure, share_chart
from dapt_core.viz.overlay import (
    PANEL_GAP_PX,
    background_only,
    checkerboard,
    foreground_only,
    heatmap_overlay,
    outline,
    split_panel,
    split_views,
)

H, W = 48, 64


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _mask() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[12:36, 20:50] = True
    return mask


def _blob(centre: tuple[float, float], size: int = 14) -> np.ndarray:
    rows, cols = np.mgrid[0:size, 0:size]
    return np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / 8.0)


def _panels(count: int) -> list[PanelResult]:
    names = ["zero-shot CLIP", "CoOp", "DAPT-S"]
    top5 = [("golden retriever", 0.61), ("labrador", 0.2), ("cat", 0.1), ("fox", 0.05), ("wolf", 0.01)]
    return [
        PanelResult(name=names[i], cam=_blob((2 + 3 * i, 2 + 3 * i)), top5=top5, object_share=0.31 + 0.2 * i,
                    pointing_hit=i > 0)
        for i in range(count)
    ]


# --- heat maps ----------------------------------------------------------------------------


def test_overlay_shape_and_dtype() -> None:
    result = heatmap_overlay(_image(), _blob((3, 3)))
    assert result.shape == (H, W, 3) and result.dtype == np.uint8


def test_overlay_with_zero_alpha_is_the_image() -> None:
    image = _image()
    np.testing.assert_array_equal(heatmap_overlay(image, _blob((3, 3)), alpha=0.0), image)


def test_overlay_with_full_alpha_is_the_colormap() -> None:
    jet = matplotlib.colormaps["jet"]
    top = np.rint(np.array(jet(1.0)[:3]) * 255).astype(np.uint8)
    bottom = np.rint(np.array(jet(0.0)[:3]) * 255).astype(np.uint8)
    full = heatmap_overlay(_image(), np.full((5, 5), 3.0), alpha=1.0)
    assert (full == top).all()
    empty = heatmap_overlay(_image(), np.zeros((5, 5)), alpha=1.0)
    assert (empty == bottom).all()


def test_overlay_is_deterministic_and_follows_the_peak() -> None:
    image, cam = _image(), _blob((1, 12))
    first = heatmap_overlay(image, cam, alpha=1.0)
    np.testing.assert_array_equal(first, heatmap_overlay(image, cam, alpha=1.0))
    # jet: hot is red, cold is blue; the peak is at the top-right.
    assert first[2, W - 3, 0] > first[2, W - 3, 2]
    assert first[H - 3, 2, 2] > first[H - 3, 2, 0]


def test_overlay_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        heatmap_overlay(_image().astype(float), _blob((3, 3)))
    with pytest.raises(ValueError, match="alpha"):
        heatmap_overlay(_image(), _blob((3, 3)), alpha=1.5)
    with pytest.raises(ValueError, match="colormap 'no-such-map'"):
        heatmap_overlay(_image(), _blob((3, 3)), colormap="no-such-map")
    with pytest.raises(ValueError, match="non-negative"):
        heatmap_overlay(_image(), -_blob((3, 3)))


# --- the split ----------------------------------------------------------------------------


def test_foreground_and_background_views_are_complementary() -> None:
    image, mask = _image(), _mask()
    fg = foreground_only(image, mask, fill=(0, 0, 0))
    bg = background_only(image, mask, fill=(1, 2, 3))
    np.testing.assert_array_equal(fg[mask], image[mask])
    np.testing.assert_array_equal(bg[~mask], image[~mask])
    assert (fg[~mask] == 0).all()
    assert (bg[mask] == np.array([1, 2, 3], dtype=np.uint8)).all()
    checker = foreground_only(image, mask)
    np.testing.assert_array_equal(checker[~mask], checkerboard(H, W)[~mask])
    with pytest.raises(ValueError, match="fill"):
        foreground_only(image, mask, fill="purple")


def test_outline_draws_only_along_the_boundary() -> None:
    image, mask = _image(), _mask()
    drawn = outline(image, mask, colour=(0, 255, 0), thickness=2)
    changed = (drawn != image).any(axis=2)
    assert changed.any()
    assert (drawn[changed] == np.array([0, 255, 0], dtype=np.uint8)).all()
    assert not changed[24, 35] and not changed[2, 2]
    np.testing.assert_array_equal(outline(image, np.zeros((H, W), bool)), image)


def test_split_panel_and_a_mask_of_another_resolution() -> None:
    image, mask = _image(), _mask()
    panel = split_panel(image, mask)
    assert panel.shape == (H, 3 * W + 2 * PANEL_GAP_PX, 3) and panel.dtype == np.uint8
    half = mask[::2, ::2].astype(float)
    views = split_views(image, half)
    np.testing.assert_array_equal(views.foreground[24, 35], image[24, 35])
    np.testing.assert_array_equal(views.background[2, 2], image[2, 2])


# --- the comparison figure ----------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3])
def test_figure_axes_count(count: int) -> None:
    with_mask = comparison_figure(_image(), _mask(), _panels(count), title="t", segmenter="SAM")
    assert isinstance(with_mask, Figure)
    assert len(with_mask.axes) == 4 + count
    assert len(comparison_figure(_image(), None, _panels(count)).axes) == 1 + count


def test_figure_shows_predictions_and_shares() -> None:
    fig = comparison_figure(_image(), _mask(), _panels(2), segmenter="SAM ViT-B")
    titles = [ax.get_title() for ax in fig.axes]
    assert "mask (SAM ViT-B)" in titles
    panel_ax = fig.axes[-2]
    assert "zero-shot CLIP" in panel_ax.get_title() and "31%" in panel_ax.get_title()
    assert "peak off object" in panel_ax.get_title()
    label = panel_ax.get_xlabel()
    assert "golden retriever" in label and "61.0%" in label and len(label.splitlines()) == 5


def test_saved_figure_is_byte_identical_and_atomic(tmp_path: Path) -> None:
    first = save_figure(comparison_figure(_image(), _mask(), _panels(2), title="same"), tmp_path / "a.png")
    second = save_figure(comparison_figure(_image(), _mask(), _panels(2), title="same"), tmp_path / "b.png")
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"matplotlib" not in first.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


def test_the_fast_png_level_keeps_the_pixels_and_changes_only_the_encoding(tmp_path: Path) -> None:
    from PIL import Image

    fig = comparison_figure(_image(), _mask(), _panels(2), title="levels")
    usual = save_figure(fig, tmp_path / "usual.png")
    fast = save_figure(fig, tmp_path / "fast.png", compress_level=figure_module.FAST_PNG_LEVEL)
    assert usual.read_bytes() != fast.read_bytes()
    assert np.array_equal(np.asarray(Image.open(usual)), np.asarray(Image.open(fast)))


@pytest.mark.parametrize("shape,expected", [
    ((480, 640), (195, 260)),  # wide: the column's width
    ((2000, 1000), (520, 260)),  # tall: the column's width, at most MAX_ASPECT times as tall
    ((3000, 500), (520, 87)),  # taller than MAX_ASPECT: its height is the cap
    ((120, 90), (120, 90)),  # small: never enlarged
])
def test_figure_images_are_shrunk_to_the_pixels_a_column_shows(shape, expected) -> None:
    assert figure_module.COLUMN_PX == 260
    image = np.zeros((*shape, 3), dtype=np.uint8)
    assert figure_module._display_image(image).shape[:2] == expected


def test_failed_save_leaves_no_temp_and_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    fig = share_chart(["a"], [0.5])
    target = tmp_path / "chart.png"
    target.write_bytes(b"old")

    def broken_savefig(path, **kwargs) -> None:
        Path(path).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]
    with pytest.raises(ValueError, match=r"\.png"):
        save_figure(fig, tmp_path / "chart.jpg")


def test_figure_to_array() -> None:
    fig = comparison_figure(_image(), None, _panels(2))
    pixels = figure_to_array(fig)
    width, height = fig.get_size_inches() * fig.dpi
    assert pixels.dtype == np.uint8 and pixels.shape == (round(height), round(width), 3)
    assert pixels.std() > 0


def test_share_chart() -> None:
    fig = share_chart(["zero-shot", "CoOp", "DAPT"], [0.3, None, 0.9])
    (ax,) = fig.axes
    assert ax.get_xlim() == (0.0, 1.0)
    widths = [patch.get_width() for patch in ax.patches]
    assert widths == pytest.approx([0.3, 0.0, 0.9])
    assert [tick.get_text() for tick in ax.get_yticklabels()] == ["zero-shot", "CoOp", "DAPT"]
    assert {text.get_text() for text in ax.texts} == {"30%", "n/a", "90%"}
    with pytest.raises(ValueError, match="2 names but 1 shares"):
        share_chart(["a", "b"], [0.1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        share_chart(["a"], [1.5])
