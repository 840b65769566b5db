"""Attention metrics on hand-made maps whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dapt_core.attention.metrics import binarize, mask_iou, object_share, pointing_game

# 0..15 in row-major order: total 120, peak 15 at the bottom-right corner (3, 3).
RAMP = np.arange(16, dtype=float).reshape(4, 4)


def _box(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


CENTRE = _box((4, 4), slice(1, 3), slice(1, 3))  # holds 5 + 6 + 9 + 10 = 30
CORNER = _box((4, 4), slice(2, 4), slice(2, 4))  # holds 10 + 11 + 14 + 15 = 50


def test_object_share_by_hand() -> None:
    assert object_share(RAMP, CENTRE) == pytest.approx(30 / 120)
    assert object_share(RAMP, CORNER) == pytest.approx(50 / 120)
    assert object_share(RAMP, np.ones((4, 4), dtype=bool)) == pytest.approx(1.0)
    assert object_share(RAMP, np.zeros((4, 4), dtype=bool)) == 0.0


def test_object_share_with_a_soft_mask_weights_pixels() -> None:
    assert object_share(RAMP, np.full((4, 4), 0.5)) == pytest.approx(0.5)
    soft = CENTRE * 0.25 + CORNER * 0.5  # pixel 10 is in both: weight 0.75
    expected = (0.25 * (5 + 6 + 9) + 0.75 * 10 + 0.5 * (11 + 14 + 15)) / 120
    assert object_share(RAMP, soft) == pytest.approx(expected)


def test_object_share_of_an_all_zero_cam_is_nan() -> None:
    assert math.isnan(object_share(np.zeros((4, 4)), CENTRE))


def test_object_share_resizes_the_cam_to_the_mask() -> None:
    # A constant CAM stays constant under bilinear resizing: the share is the mask's area.
    mask = _box((8, 8), slice(0, 4), slice(0, 8))
    assert object_share(np.ones((2, 2)), mask) == pytest.approx(0.5)
    peaked = np.array([[0.0, 0.0], [0.0, 1.0]])
    bottom_right = _box((8, 8), slice(4, 8), slice(4, 8))
    assert object_share(peaked, bottom_right) > 0.5
    assert pointing_game(peaked, bottom_right)


def test_pointing_game_peak_inside_and_outside() -> None:
    assert pointing_game(RAMP, CORNER) is True
    assert pointing_game(RAMP, CENTRE) is False


def test_pointing_game_ties_go_to_the_first_peak_in_row_major_order() -> None:
    cam = np.zeros((3, 4))
    cam[0, 1] = cam[2, 3] = 1.0
    assert pointing_game(cam, _box((3, 4), slice(0, 1), slice(1, 2)))
    assert not pointing_game(cam, _box((3, 4), slice(2, 3), slice(3, 4)))


def test_pointing_game_tolerance_grows_the_mask_as_a_disc() -> None:
    # The peak (3, 3) is one step diagonal from the centre box's corner (2, 2):
    # a radius-1 disc (a cross) does not reach it, a radius-2 disc does.
    assert not pointing_game(RAMP, CENTRE, tolerance_px=1)
    assert pointing_game(RAMP, CENTRE, tolerance_px=2)
    with pytest.raises(ValueError, match="tolerance_px"):
        pointing_game(RAMP, CENTRE, tolerance_px=-1)


def test_pointing_game_soft_mask_and_all_zero_cam() -> None:
    assert pointing_game(RAMP, CORNER * 0.6)
    assert not pointing_game(RAMP, CORNER * 0.4)
    assert pointing_game(np.zeros((4, 4)), np.ones((4, 4), dtype=bool)) is False


def test_binarize_relative_to_the_peak() -> None:
    cam = np.array([[0.0, 1.0], [2.0, 4.0]])
    np.testing.assert_array_equal(binarize(cam), [[False, False], [True, True]])
    np.testing.assert_array_equal(binarize(cam, threshold=0.6), [[False, False], [False, True]])
    np.testing.assert_array_equal(binarize(cam * 1000.0), binarize(cam))
    assert not binarize(np.zeros((3, 3))).any()
    with pytest.raises(ValueError, match="threshold"):
        binarize(cam, threshold=1.5)


def test_mask_iou_by_hand() -> None:
    a = _box((4, 4), slice(0, 2), slice(0, 2))
    b = _box((4, 4), slice(1, 3), slice(1, 3))
    assert mask_iou(a, b) == pytest.approx(1 / 7)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, _box((4, 4), slice(2, 4), slice(2, 4))) == 0.0
    assert mask_iou(a.astype(float) * 0.9, b.astype(float) * 0.7) == pytest.approx(1 / 7)
    assert math.isnan(mask_iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)))
    with pytest.raises(ValueError, match="differ in shape"):
        mask_iou(a, np.zeros((3, 3), bool))


@pytest.mark.parametrize(
    ("cam", "mask", "reason"),
    [
        (-RAMP, CENTRE, "non-negative"),
        (np.full((4, 4), np.nan), CENTRE, "NaN"),
        (np.ones((4, 4, 3)), CENTRE, "2-D"),
        (RAMP, CENTRE * 2.0, r"\[0, 1\]"),
        (RAMP, np.zeros((0, 4)), "non-empty"),
    ],
)
def test_bad_maps_raise_value_errors(cam: np.ndarray, mask: np.ndarray, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        object_share(cam, mask)
    with pytest.raises(ValueError, match=reason):
        pointing_game(cam, mask)
