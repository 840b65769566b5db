"""Attention metrics on hand-made maps whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dapt_core.attention.faithfulness import curve_auc, perturbation_curve, perturbed_images, step_counts
from dapt_core.attention.metrics import binarize, mask_iou, object_share, pointing_game, top_k_intersection

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


def test_top_k_intersection_by_hand() -> None:
    # RAMP's top 4 pixels are 15, 14, 13, 12 (the bottom row): two of them (14, 15) are in CORNER
    assert top_k_intersection(RAMP, CORNER, k=4) == 0.5
    assert top_k_intersection(RAMP, CORNER, k=2) == 1.0
    # k = the object's area (4): the same bottom row
    assert top_k_intersection(RAMP, CORNER) == 0.5
    assert top_k_intersection(RAMP, CENTRE) == 0.0
    assert math.isnan(top_k_intersection(RAMP, np.zeros((4, 4), dtype=bool)))
    with pytest.raises(ValueError, match="k must lie in"):
        top_k_intersection(RAMP, CORNER, k=17)


def test_top_k_ties_keep_row_major_order() -> None:
    flat = np.ones((2, 2))
    assert top_k_intersection(flat, _box((2, 2), slice(0, 1), slice(0, 1)), k=1) == 1.0
    assert top_k_intersection(flat, _box((2, 2), slice(1, 2), slice(1, 2)), k=1) == 0.0


def test_deletion_and_insertion_images_by_hand() -> None:
    image = np.stack([RAMP + 1.0, -(RAMP + 1.0)])  # (2, 4, 4), no pixel equal to the baseline
    assert step_counts(16, 4).tolist() == [0, 4, 8, 12, 16]
    deleted = perturbed_images(image, RAMP, "deletion", steps=4, baseline=0.0)
    inserted = perturbed_images(image, RAMP, "insertion", steps=4, baseline=0.0)
    assert deleted.shape == inserted.shape == (5, 2, 4, 4)
    # point 1: the top 4 pixels (the bottom row, RAMP's highest) are hidden / the only ones shown
    np.testing.assert_array_equal(deleted[1, :, 3], 0.0)
    np.testing.assert_array_equal(deleted[1, :, :3], image[:, :3])
    np.testing.assert_array_equal(inserted[1, :, 3], image[:, 3])
    np.testing.assert_array_equal(inserted[1, :, :3], 0.0)
    np.testing.assert_array_equal(deleted[0], image)
    np.testing.assert_array_equal(deleted[4], 0.0)
    np.testing.assert_array_equal(inserted[0], 0.0)
    np.testing.assert_array_equal(inserted[4], image)
    with pytest.raises(ValueError, match="mode"):
        perturbed_images(image, RAMP, "erase")


def test_curve_of_a_score_that_counts_visible_object_pixels() -> None:
    """Score = share of the CORNER object's 4 pixels still visible. A map that ranks the object first hides
    it in the first quarter of a deletion: curve 1, 0, 0, 0, 0 (AUC 1/8); insertion 0, 1, 1, 1, 1 (AUC 7/8)."""
    image = np.ones((1, 4, 4))

    def visible(batch: np.ndarray) -> np.ndarray:
        return (batch[:, 0] * CORNER).sum(axis=(1, 2)) / CORNER.sum()

    on_object = CORNER.astype(float) + 0.01 * RAMP / 15  # object first, then the rest by RAMP
    deletion = perturbation_curve(visible, image, on_object, "deletion", steps=4)
    insertion = perturbation_curve(visible, image, on_object, "insertion", steps=4)
    np.testing.assert_allclose(deletion, [1, 0, 0, 0, 0])
    np.testing.assert_allclose(insertion, [0, 1, 1, 1, 1])
    assert curve_auc(deletion) == pytest.approx(1 / 8)
    assert curve_auc(insertion) == pytest.approx(7 / 8)
    assert curve_auc([0.0, 1.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one value per image"):
        perturbation_curve(lambda b: np.zeros(3), image, on_object, "deletion", steps=4)


# --- the same numbers as quantus on shared inputs -------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_inputs():
    """12 x 12 images (3 channels), tie-free maps, box masks of different sizes and places."""
    rng = np.random.default_rng(12)
    maps = rng.random((4, 1, 12, 12)).astype(np.float32)
    masks = np.zeros((4, 1, 12, 12), dtype=np.float32)
    for i, (r, c, h, w) in enumerate([(2, 3, 3, 4), (0, 0, 6, 6), (7, 5, 5, 7), (4, 4, 2, 2)]):
        masks[i, 0, r:r + h, c:c + w] = 1.0
    maps[1, 0, 2, 2] = 2.0  # map 1's peak on its object, so the pointing game has a hit and misses to tell apart
    images = rng.normal(size=(4, 3, 12, 12)).astype(np.float32)
    return images, np.array([0, 1, 2, 3]), maps, masks


QUANTUS_OPTIONS = {"normalise": False, "abs": False, "disable_warnings": True}


def test_localisation_metrics_equal_quantus(shared_inputs) -> None:
    import quantus
    images, labels, maps, masks = shared_inputs
    data = {"model": None, "x_batch": images, "y_batch": labels, "a_batch": maps, "s_batch": masks}
    pointing = quantus.PointingGame(**QUANTUS_OPTIONS)(**data)
    mass = quantus.RelevanceMassAccuracy(**QUANTUS_OPTIONS)(**data)
    top_k = quantus.TopKIntersection(k=20, **QUANTUS_OPTIONS)(**data)
    assert [bool(p) for p in pointing] == [pointing_game(a[0], m[0]) for a, m in zip(maps, masks)]
    assert any(pointing) and not all(pointing)
    np.testing.assert_allclose(mass, [object_share(a[0], m[0]) for a, m in zip(maps, masks)], rtol=1e-6)
    np.testing.assert_allclose(top_k, [top_k_intersection(a[0], m[0], k=20) for a, m in zip(maps, masks)])


class _Linear(torch.nn.Module):
    """A fixed linear classifier of 12 x 12 RGB images into 4 classes."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        self.weight = torch.nn.Parameter(torch.randn(4, 3 * 144, generator=generator) * 0.3)

    def forward(self, x):
        return x.flatten(1) @ self.weight.t()


def _probability(model, target: int):
    def score(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch)).softmax(-1)[:, target].numpy()

    return score


def _reveal(arr: np.ndarray, indices: np.ndarray, source: np.ndarray, **_) -> np.ndarray:
    """quantus perturbation for insertion: copy the original values back at ``indices``."""
    out = arr.copy()
    np.put_along_axis(out, indices, np.take_along_axis(source, indices, axis=1), axis=1)
    return out


def test_deletion_and_insertion_curves_equal_quantus_pixel_flipping(shared_inputs) -> None:
    """quantus records the curve after each step of 12 pixels (36 features: a pixel's three channels are
    equal in the broadcast map, so they leave together); ours starts with the untouched image."""
    import quantus
    images, labels, maps, _ = shared_inputs
    model = _Linear().eval()
    deletion = quantus.PixelFlipping(features_in_step=36, perturb_baseline=0.0, **QUANTUS_OPTIONS)(
        model=model, x_batch=images, y_batch=labels, a_batch=maps, softmax=True, device="cpu")
    insertion = quantus.PixelFlipping(features_in_step=36, perturb_func=_reveal,
                                      perturb_func_kwargs={"source": images.reshape(4, -1)}, **QUANTUS_OPTIONS)(
        model=model, x_batch=np.zeros_like(images), y_batch=labels, a_batch=maps, softmax=True, device="cpu")
    for i in range(4):
        score = _probability(model, int(labels[i]))
        ours_deletion = perturbation_curve(score, images[i], maps[i, 0], "deletion", steps=12)
        ours_insertion = perturbation_curve(score, images[i], maps[i, 0], "insertion", steps=12)
        np.testing.assert_allclose(ours_deletion[1:], deletion[i], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(ours_insertion[1:], insertion[i], rtol=1e-5, atol=1e-7)
        assert curve_auc(ours_deletion) == pytest.approx(np.trapezoid(ours_deletion, dx=1 / 12))
