"""Segmenters behind one interface: registry, CAM prompts, the three backends, SAM's choice and cache, bulk masks.

SAM runs with RANDOM weights at a reduced size (a depth-1, width-32 encoder on 256 px inputs); every code
path of the predictor is the same as at full size, since it reads the input size from the encoder.
"""

from __future__ import annotations

import argparse
import json
import threading
from functools import partial

import cv2
import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from dapt_core import paths
from dapt_core.attention.metrics import binarize, mask_iou
from dapt_core.data.records import Sample
from dapt_core.data.masks import MaskFolder
from dapt_core.segment import (
    Candidate,
    SegmentationError,
    SegmentContext,
    Segmenter,
    available_segmenters,
    get_segmenter,
    list_segmenters,
)
from dapt_core.segment import sam as sam_module
from dapt_core.segment.base import CamPromptConfig, cam_box, cam_peaks, choose_candidate
from dapt_core.segment.bulk import learner_context_fn, mask_path, precompute_masks
from dapt_core.segment.sam import SamConfig, SamSegmenter
from dapt_core.world import PoseConfig, SceneConfig, render_scene
from dapt_core.weights import WeightsNotFoundError

TINY_SAM_SIZE = 256  # encoder input side; 16 px patches -> a 16 x 16 embedding
ALL_ELIGIBLE = SamConfig(min_area=0.0, max_area=1.0)  # random weights make odd masks: let every one compete


def build_tiny_sam(seed: int = 0) -> Sam:
    torch.manual_seed(seed)
    dim, grid = 32, TINY_SAM_SIZE // 16
    return Sam(
        image_encoder=ImageEncoderViT(img_size=TINY_SAM_SIZE, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                                      out_chans=dim, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(TINY_SAM_SIZE, TINY_SAM_SIZE), mask_in_chans=4),
        mask_decoder=MaskDecoder(transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2)),
    ).eval()


def blurred_cam(mask: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    cam = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=sigma)
    return cam / cam.max()


@pytest.fixture(scope="module")
def scene():
    # a small circle: its blurred mask, the stand-in CAM, has one clear peak (SAM gets one point)
    small = SceneConfig(pose=PoseConfig(min_radius=0.2, max_radius=0.25))
    return render_scene("circle", "grass", 64, np.random.default_rng(3), config=small)


@pytest.fixture(scope="module")
def sam_segmenter():
    return SamSegmenter(model=build_tiny_sam(), config=ALL_ELIGIBLE)


@pytest.fixture(scope="module")
def sam_answer(sam_segmenter, scene):
    """One SAM run on the scene without a scorer (the encoder runs here, later calls hit the cache)."""
    return sam_segmenter.segment(scene.image, SegmentContext(cam=blurred_cam(scene.mask)))


# --- registry -----------------------------------------------------------------------------------------------

def test_registry_lists_backends_and_rejects_unknown_names_and_options():
    assert list_segmenters() == ["cam", "grabcut", "sam"]
    with pytest.raises(ValueError, match="cam, grabcut, sam"):
        get_segmenter("seem")
    with pytest.raises(ValueError, match="no option"):
        get_segmenter("grabcut", threshold_of_doom=3)
    for name in ("cam", "grabcut"):
        segmenter = get_segmenter(name)
        assert isinstance(segmenter, Segmenter) and segmenter.name == name and segmenter.needs_cam
        assert 0.0 < segmenter.estimated_seconds((480, 640, 3)) < 5.0


def test_available_segmenters_reports_missing_sam_weights_with_fetch_command(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "CHECKPOINT_DIR", tmp_path)
    monkeypatch.setenv("DAPT_OFFLINE", "1")
    status = available_segmenters()
    assert status["cam"] is None and status["grabcut"] is None
    assert "python -m dapt_core weights fetch sam-vit-b" in status["sam"]
    assert "weights fetch sam-vit-h" in available_segmenters(sam_model_type="vit_h")["sam"]
    with pytest.raises(WeightsNotFoundError, match="weights fetch sam-vit-b"):
        get_segmenter("sam")
    local = tmp_path / "sam_vit_b_01ec64.pth"
    local.write_bytes(b"not really weights")
    assert available_segmenters()["sam"] is None


# --- CAM prompts and the choice rule --------------------------------------------------------------------------

def test_cam_peaks_finds_separated_blobs_strongest_first_and_box_surrounds_them():
    cam = np.zeros((100, 120), np.float32)
    cam[30, 20], cam[70, 90] = 1.0, 0.8
    cam = cv2.GaussianBlur(cam, (0, 0), sigmaX=6)
    cam /= cam.max()
    points = cam_peaks(cam, CamPromptConfig(max_points=3, peak_min_relative=0.5))
    np.testing.assert_allclose(points, [[20, 30], [90, 70]], atol=1.5)
    x0, y0, x1, y1 = cam_box(cam, CamPromptConfig(box_margin=0.0))
    on = np.argwhere(cam >= 0.5)
    assert (x0, y0, x1, y1) == (on[:, 1].min(), on[:, 0].min(), on[:, 1].max() + 1, on[:, 0].max() + 1)
    assert cam_peaks(np.zeros((10, 10), np.float32)).shape == (0, 2)
    assert cam_box(np.zeros((10, 10), np.float32)) is None


def _candidate(score, iou):
    return Candidate(mask=np.ones((2, 2), bool), prompt="x", predicted_iou=iou, clip_score=score, area=1.0)


def test_choice_follows_clip_score_and_breaks_near_ties_by_predicted_iou():
    candidates = [_candidate(0.20, 0.9), _candidate(0.70, 0.1), _candidate(0.695, 0.5), _candidate(0.9, 0.99)]
    assert choose_candidate(candidates, [0, 1, 2, 3], score_tolerance=0.01) == 3
    assert choose_candidate(candidates, [0, 1, 2], score_tolerance=0.01) == 2  # 0.695 within 0.01 of 0.70
    assert choose_candidate(candidates, [0, 1, 2], score_tolerance=0.0) == 1
    unscored = [_candidate(None, 0.3), _candidate(None, 0.8), _candidate(None, 0.5)]
    assert choose_candidate(unscored, [0, 1, 2], score_tolerance=0.01) == 1
    assert choose_candidate(unscored, [], score_tolerance=0.01) is None


# --- cam and grabcut ------------------------------------------------------------------------------------------

def test_cam_backend_binarises_at_half_the_peak_at_image_resolution():
    cam = np.array([[0.0, 0.39], [0.41, 0.8]], np.float32)  # peak 0.8: threshold at 0.4
    image = np.zeros((4, 4, 3), np.uint8)
    result = get_segmenter("cam").segment(image, SegmentContext(cam=np.kron(cam, np.ones((2, 2)))))
    expected = np.kron(np.array([[0, 0], [1, 1]]), np.ones((2, 2))).astype(bool)
    np.testing.assert_array_equal(result.mask, expected)
    assert result.segmenter == "cam" and result.chosen == 0 and result.candidates[0].area == 0.5
    assert result.info["threshold"] == 0.5
    small = get_segmenter("cam").segment(image, SegmentContext(cam=cam))  # a CAM at another size is resized
    assert small.mask.shape == (4, 4)
    with pytest.raises(SegmentationError, match="needs ctx.cam"):
        get_segmenter("cam").segment(image, SegmentContext())
    with pytest.raises(SegmentationError, match="uint8"):
        get_segmenter("cam").segment(image.astype(np.float32), SegmentContext(cam=cam))


@pytest.mark.parametrize("object_, background", [("star", "road"), ("heart", "wall"), ("ring", "tree")])
def test_grabcut_recovers_the_object_under_a_cam_blob(object_, background):
    scene = render_scene(object_, background, 96, np.random.default_rng(7))
    cam = blurred_cam(scene.mask, sigma=5.0)
    result = get_segmenter("grabcut").segment(scene.image, SegmentContext(cam=cam))
    assert result.info["fallback"] is None and result.chosen == 0
    assert result.mask.shape == scene.mask.shape and result.mask.dtype == bool
    assert mask_iou(result.mask, scene.mask) > 0.7
    assert mask_iou(result.mask, scene.mask) >= mask_iou(binarize(cam, 0.5), scene.mask) - 0.02


def test_grabcut_downscales_large_images_and_falls_back_to_the_cam_mask():
    scene = render_scene("square", "sky", 96, np.random.default_rng(1))
    big = cv2.resize(scene.image, (384, 384), interpolation=cv2.INTER_NEAREST)
    truth = cv2.resize(scene.mask.astype(np.uint8), (384, 384), interpolation=cv2.INTER_NEAREST).astype(bool)
    result = get_segmenter("grabcut", max_side=128).segment(big, SegmentContext(cam=blurred_cam(truth, 20.0)))
    assert result.info["work_size"] == (128, 128) and result.mask.shape == (384, 384)
    assert mask_iou(result.mask, truth) > 0.7
    flat = get_segmenter("grabcut").segment(scene.image, SegmentContext(cam=np.zeros((96, 96), np.float32)))
    assert flat.info["fallback"] and not flat.mask.any() and flat.candidates[flat.chosen].prompt.startswith("CAM")


# --- SAM ------------------------------------------------------------------------------------------------------

def test_sam_returns_all_candidates_and_chooses_by_predicted_iou_without_a_scorer(sam_answer, scene):
    result = sam_answer
    assert result.segmenter == "sam" and len(result.candidates) == 9  # 3 queries x 3 multimask outputs
    assert [c.prompt for c in result.candidates[::3]] == ["box+1 point, multimask 0", "box, multimask 0",
                                                         "1 point, multimask 0"]
    for candidate in result.candidates:
        assert candidate.mask.shape == scene.mask.shape and candidate.mask.dtype == bool
        assert candidate.clip_score is None and candidate.area == pytest.approx(candidate.mask.mean())
    ious = [c.predicted_iou for c in result.candidates]
    assert result.chosen == int(np.argmax(ious)) and result.info["chosen_by"] == "predicted_iou"
    np.testing.assert_array_equal(result.mask, result.candidates[result.chosen].mask)
    assert result.info["embedding_cached"] is False and len(result.info["points"]) == 1


def test_sam_chooses_the_candidate_clip_prefers_and_breaks_ties_by_predicted_iou(sam_segmenter, sam_answer, scene):
    cam = blurred_cam(scene.mask)
    ious = [c.predicted_iou for c in sam_answer.candidates]
    for favourite in (int(np.argmin(ious)), 4):
        calls = []

        def prefer(masks, favourite=favourite):
            calls.append(len(masks))
            return [0.9 if i == favourite else 0.1 for i in range(len(masks))]

        result = sam_segmenter.segment(scene.image, SegmentContext(cam=cam, score_masks=prefer))
        assert calls == [9] and result.chosen == favourite and result.info["chosen_by"] == "clip_score"
        assert result.candidates[favourite].clip_score == 0.9
    tied = sam_segmenter.segment(scene.image, SegmentContext(cam=cam, score_masks=lambda m: [0.5] * len(m)))
    assert tied.chosen == int(np.argmax(ious))


def test_sam_reuses_the_image_embedding_for_the_same_image(scene):
    segmenter = SamSegmenter(model=build_tiny_sam(), config=SamConfig(queries=("box",)))
    calls = []
    hook = segmenter.runtime.model.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        ctx = SegmentContext(cam=blurred_cam(scene.mask), image_hash="a" * 64)
        first = segmenter.segment(scene.image, ctx)
        second = segmenter.segment(scene.image, ctx)
        assert len(calls) == 1
        assert not first.info["embedding_cached"] and second.info["embedding_cached"]
        np.testing.assert_array_equal(first.mask, second.mask)
        # a cached image is estimated without the encoder's (now measured) time
        assert segmenter.estimated_seconds(scene.image.shape, image_hash="a" * 64) < segmenter.estimated_seconds(
            scene.image.shape, image_hash="b" * 64)
        other = scene.image[::-1].copy()  # no hash given: the pixels are hashed, a new image pays again
        segmenter.segment(other, SegmentContext(cam=blurred_cam(scene.mask[::-1])))
        segmenter.segment(other, SegmentContext(cam=blurred_cam(scene.mask[::-1])))
        assert len(calls) == 2
    finally:
        hook.remove()


def test_sam_is_safe_when_two_visitors_ask_at_once(scene):
    segmenter = SamSegmenter(model=build_tiny_sam(), config=SamConfig(queries=("box",), min_area=0.0, max_area=1.0))
    images = [scene.image, np.ascontiguousarray(scene.image[:, ::-1])]
    cams = [blurred_cam(scene.mask), blurred_cam(scene.mask[:, ::-1])]
    alone = [SamSegmenter(model=build_tiny_sam(), config=segmenter.config).segment(i, SegmentContext(cam=c)).mask
             for i, c in zip(images, cams)]
    together: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda k=k: together.__setitem__(
        k, segmenter.segment(images[k], SegmentContext(cam=cams[k])).mask)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(2):
        np.testing.assert_array_equal(together[k], alone[k])


def test_sam_models_are_loaded_once_and_shared(monkeypatch, tmp_path):
    loads = []
    monkeypatch.setattr(sam_module, "load_sam", lambda *args: loads.append(args) or build_tiny_sam())
    checkpoint = tmp_path / "sam.pth"
    checkpoint.write_bytes(b"x")
    try:
        first = get_segmenter("sam", checkpoint=checkpoint, device="cpu")
        second = get_segmenter("sam", checkpoint=str(checkpoint), device="cpu")
        assert not loads  # nothing is loaded before the first use
        assert first.runtime is second.runtime and len(loads) == 1
    finally:
        sam_module.release_shared_models()


def test_load_sam_refuses_a_checkpoint_that_does_not_fit(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"image_encoder.nonsense": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="does not fit model_type 'vit_b'"):
        sam_module.load_sam("vit_b", bad, "cpu")
    with pytest.raises(ValueError, match="vit_b, vit_l, vit_h"):
        get_segmenter("sam", model_type="vit_x")


# --- bulk masks and the CLI -----------------------------------------------------------------------------------

def _scene_folder(root, n=4):
    """Writes scenes as root/<object>/<i>.png; returns the samples and the ground-truth masks by path."""
    samples, truth = [], {}
    for i in range(n):
        obj = ("circle", "star")[i % 2]
        scene = render_scene(obj, "grass", 48, np.random.default_rng(i))
        path = root / obj / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), scene.image[..., ::-1])
        samples.append(Sample(path, i % 2, obj))
        truth[path] = scene.mask
    return samples, truth


def test_precompute_masks_writes_resumes_and_is_read_by_mask_folder(tmp_path):
    image_root, mask_root = tmp_path / "images", tmp_path / "masks"
    samples, truth = _scene_folder(image_root)
    context = lambda sample, image: SegmentContext(cam=blurred_cam(truth[sample.path]))  # noqa: E731
    segmenter = get_segmenter("cam")
    report = precompute_masks(samples, segmenter, mask_root, image_root, context_fn=context, progress=False)
    assert (report.written, report.skipped) == (4, 0) and 0.0 < report.mean_area < 1.0
    folder = MaskFolder(mask_root, image_root)
    for index, sample in enumerate(samples):
        assert mask_path(sample.path, image_root, mask_root).is_file()
        read = folder.get(index, sample)
        np.testing.assert_array_equal(read > 0.5, binarize(blurred_cam(truth[sample.path])))
    mask_path(samples[0].path, image_root, mask_root).unlink()
    again = precompute_masks(samples, segmenter, mask_root, image_root, context_fn=context, progress=False)
    assert (again.written, again.skipped) == (1, 3)
    assert not list(mask_root.rglob("*.tmp"))
    with pytest.raises(ValueError, match="not under the image root"):
        precompute_masks([Sample(tmp_path / "x.png", 0, "x")], segmenter, mask_root, image_root,
                         context_fn=context, progress=False)
    with pytest.raises(ValueError, match="needs a CAM"):
        precompute_masks(samples, segmenter, mask_root, image_root, context_fn=None, progress=False)


def test_learner_context_gives_an_image_sized_cam_and_class_probabilities(tiny_backbone, tmp_path):
    from dapt_core.learners import build_learner

    samples, _ = _scene_folder(tmp_path, n=1)
    learner = build_learner("coop", tiny_backbone, ["circle", "star"], ctx_init="a photo of a")
    image = cv2.imread(str(samples[0].path))[..., ::-1].copy()
    ctx = learner_context_fn(learner)(samples[0], image)
    assert ctx.cam.shape == image.shape[:2] and 0.0 <= ctx.cam.min() and ctx.cam.max() <= 1.0
    full, empty = np.ones(image.shape[:2], bool), np.zeros(image.shape[:2], bool)
    scores = ctx.score_masks([full, empty])
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores) and scores[0] != scores[1]


def test_masks_command_fills_the_folder_train_reads(tiny_backbone, tmp_path, capsys):
    from dapt_core.cli import masks as cli_masks

    samples, _ = _scene_folder(tmp_path / "data", n=6)
    parser = argparse.ArgumentParser()
    cli_masks.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "masks"
    args = parser.parse_args(["masks", "--data", f"imagefolder:{tmp_path / 'data'}", "--out", str(out),
                              "--segmenter", "grabcut", "--backbone", "tiny-vit", "--device", "cpu"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["written"] == report["images"] > 0 and report["skipped"] == 0
    from dapt_core.data.folders import image_root, parse_data_spec

    splits = parse_data_spec(f"imagefolder:{tmp_path / 'data'}")
    folder = MaskFolder(out, image_root(splits))
    assert all(folder.find(s) is not None for s in splits.train)
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == report["images"]
