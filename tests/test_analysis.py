"""The attention analysis: predictions, CAMs at image size, shared image forwards, masks, threads, the CLI."""

import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dapt_core.analysis import AnalysisError, analyze
from dapt_core.attention.cam import CAM_METHODS, compute_cams, default_target_layer
from dapt_core.checkpoint import METADATA_KEY, read_info, save_prompt_set
from dapt_core.cli import main
from dapt_core.learners import build_learner
from dapt_core.segment import Candidate, SegmentResult
from dapt_core.attention.shared import cams_from_forward, class_text_features, image_forward

CLASSES = ["dog", "cat", "fish", "bird", "horse", "lizard"]


def _image(seed: int, height: int = 40, width: int = 56) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def _coop(backbone, seed: int, classes=CLASSES):
    torch.manual_seed(seed)
    return build_learner("coop", backbone, classes)


@pytest.fixture(scope="module")
def sets(tiny_backbone):
    """Two CoOp prompt sets (random contexts) and a MaPLe one, on the tiny backbone."""
    torch.manual_seed(3)
    maple = build_learner("maple", tiny_backbone, CLASSES)
    return {"coop_a": _coop(tiny_backbone, 1), "coop_b": _coop(tiny_backbone, 2), "maple": maple}


def _assert_same(a, b):
    assert [r.name for r in a.results] == [r.name for r in b.results]
    for x, y in zip(a.results, b.results):
        assert x.target == y.target
        assert [c for c, _ in x.top5] == [c for c, _ in y.top5]
        np.testing.assert_allclose([p for _, p in x.top5], [p for _, p in y.top5], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(x.cam, y.cam, atol=1e-5)


def test_shapes_ranges_and_predictions(sets):
    image = _image(0)
    result = analyze(image, [sets["coop_a"], ("mine", sets["maple"])], segmenter="cam")
    assert result.image.shape == image.shape and np.array_equal(result.image, image)
    assert result.mask.shape == image.shape[:2] and result.mask.dtype == bool
    assert result.segmentation.segmenter == "cam"
    assert [r.name for r in result.results] == ["CoOp", "mine"]
    assert [r.label for r in result.results] == ["CoOp", "MaPLe"]
    for r in result.results:
        assert r.cam.shape == image.shape[:2] and r.cam.dtype == np.float32
        assert r.cam.min() >= 0.0 and r.cam.max() <= 1.0 and r.cam.max() > 0.5
        probs = [p for _, p in r.top5]
        assert len(r.top5) == 5 and probs == sorted(probs, reverse=True)
        assert 0.0 < sum(probs) < 1.0  # six classes: the sixth keeps some probability
        assert r.target == r.top5[0][0]
        assert 0.0 <= r.object_share <= 1.0 and isinstance(r.pointing_hit, bool)
    assert {"load", "text", "forward", "cam", "segment", "metrics", "total"} <= set(result.timings)
    summary = result.to_json()
    json.dumps(summary)  # plain JSON
    assert summary["segmenter"] == "cam" and summary["mask_source"] == "segmenter"
    assert summary["prompt_sets"][1]["name"] == "mine" and len(summary["prompt_sets"][1]["top5"]) == 5
    assert len(result.figure("title").axes) == 4 + 2


def test_named_target_and_unknown_target(sets):
    image = _image(1)
    result = analyze(image, [sets["coop_a"], sets["maple"]], target="Horse", segmenter=None)
    assert [r.target for r in result.results] == ["horse", "horse"]
    predicted = analyze(image, [sets["coop_a"]], segmenter=None).results[0]
    if predicted.target != "horse":  # another class's map differs from the predicted one's
        assert not np.allclose(predicted.cam, result.results[0].cam)
    with pytest.raises(AnalysisError, match="unknown target class 'zebra'.*dog, cat, fish"):
        analyze(image, [sets["coop_a"]], target="zebra", segmenter=None)


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_shared_forward_equals_separate_forwards(sets, method):
    image = _image(2)
    pair = [("a", sets["coop_a"]), ("b", sets["coop_b"])]
    shared = analyze(image, pair, cam_method=method, segmenter=None)
    separate = analyze(image, pair, cam_method=method, segmenter=None, share_forward=False)
    assert shared.shared_forward and not separate.shared_forward
    _assert_same(shared, separate)


@pytest.mark.parametrize("target", [None, "cat"])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_maps_equal_the_packages_own_end_to_end(tiny_backbone, sets, method, target):
    """On an S x S image nothing is resized, so every map must be grad-cam's own (compute_cams), for the shared
    CoOp forward and for MaPLe's own forward alike."""
    size = tiny_backbone.image_size
    image = _image(4, size, size)
    keys = ["coop_a", "maple", "coop_b"]
    result = analyze(image, [sets[k] for k in keys], target=target, cam_method=method, segmenter=None)
    assert result.shared_forward
    mean, std = np.asarray(tiny_backbone.mean), np.asarray(tiny_backbone.std)
    batch = torch.from_numpy(((image / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1))[None]
    for key, r in zip(keys, result.results):
        reference = compute_cams(sets[key], batch, None if target is None else [CLASSES.index(target)],
                                 method=method)[0]
        np.testing.assert_allclose(r.cam, reference, atol=1e-5)
        with torch.no_grad():
            expected = sets[key](batch).softmax(-1)[0]
        assert r.top5[0] == (CLASSES[int(expected.argmax())], pytest.approx(float(expected.max()), rel=1e-5))
        if target is None:
            assert r.target == r.top5[0][0]


def test_a_coop_forward_does_not_serve_maple(tiny_backbone, sets):
    batch = torch.zeros(1, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    forward = image_forward(sets["coop_a"], batch)
    with torch.no_grad():
        features = sets["maple"].text_features()
    with pytest.raises(ValueError, match="does not serve maple"):
        cams_from_forward(forward, [sets["maple"]], [features], batch, [None], "gradcam")


def test_mixed_coop_and_maple(sets):
    image = _image(5)
    mixed = [sets["coop_a"], sets["maple"], sets["coop_b"]]
    shared = analyze(image, mixed, segmenter=None)
    separate = analyze(image, mixed, segmenter=None, share_forward=False)
    assert shared.shared_forward  # the two CoOp sets, around the MaPLe one
    _assert_same(shared, separate)
    assert not np.allclose(shared.results[0].cam, shared.results[1].cam)


def test_given_mask_overrides_the_segmenter(sets):
    image = _image(6)
    full = np.ones(image.shape[:2], dtype=bool)
    result = analyze(image, [sets["coop_a"], sets["maple"]], mask=full, segmenter="cam")
    assert result.segmentation is None and result.mask_source == "given"
    assert [r.object_share for r in result.results] == [1.0, 1.0]
    assert [r.pointing_hit for r in result.results] == [True, True]
    empty = analyze(image, [sets["coop_a"]], mask=np.zeros(image.shape[:2]))
    assert empty.results[0].object_share == 0.0 and empty.results[0].pointing_hit is False
    # a mask at half the size is rescaled; one of another shape is refused
    half = np.zeros((20, 28), dtype=np.float32)
    half[:, :14] = 1.0
    left = analyze(image, [sets["coop_a"]], mask=half)
    assert left.mask.shape == image.shape[:2] and left.mask[:, :28].all() and not left.mask[:, 28:].any()
    with pytest.raises(AnalysisError, match="mask is 40x40 but the image is 56x40"):
        analyze(image, [sets["coop_a"]], mask=np.ones((40, 40), dtype=bool))


def test_no_segmenter_gives_no_numbers(sets):
    result = analyze(_image(7), [sets["coop_a"]], segmenter=None)
    assert result.mask is None and result.segmentation is None and result.mask_source is None
    assert result.results[0].object_share is None and result.results[0].pointing_hit is None
    assert result.to_json()["prompt_sets"][0]["object_share"] is None
    assert len(result.figure().axes) == 1 + 1


class _LeftHalf:
    """A fake segmenter: the left half of the image; it records the context and scores two masks."""

    name = "left-half"
    needs_cam = True

    def estimated_seconds(self, image_shape):
        return 0.0

    def segment(self, image, ctx):
        self.ctx = ctx
        height, width = image.shape[:2]
        mask = np.zeros((height, width), dtype=bool)
        mask[:, : width // 2] = True
        self.scores = ctx.score_masks([np.ones((height, width), dtype=bool), mask])
        return SegmentResult(mask=mask, segmenter=self.name, candidates=[Candidate(mask, "left", None, None, 0.5)],
                             chosen=0, seconds=0.0)


def test_segmenter_context(sets):
    image = _image(8)
    fake = _LeftHalf()
    result = analyze(image, [sets["coop_a"], sets["coop_b"]], segmenter=fake)
    first = result.results[0]
    np.testing.assert_array_equal(fake.ctx.cam, first.cam)  # the first set's map, image-sized
    assert isinstance(fake.ctx.image_hash, str) and len(fake.ctx.image_hash) == 64
    # the whole-image "mask" hides nothing: its score is the first set's top probability
    assert fake.scores[0] == pytest.approx(first.top5[0][1], rel=1e-4)
    assert 0.0 <= fake.scores[1] <= 1.0 and fake.scores[1] != pytest.approx(fake.scores[0], rel=1e-4)
    cam = first.cam.astype(np.float64)
    assert first.object_share == pytest.approx(cam[:, :28].sum() / cam.sum(), rel=1e-6)
    assert result.to_json()["segment_prompt"] == "left"


def test_two_threads_at_once_equal_sequential(sets):
    images = [_image(10), _image(11, 48, 32)]
    mixed = [sets["coop_a"], sets["coop_b"], sets["maple"]]
    sequential = [analyze(im, mixed, segmenter="cam") for im in images]
    barrier = threading.Barrier(2)
    found, errors = [None, None], []

    def work(i):
        try:
            barrier.wait()
            for _ in range(2):
                found[i] = analyze(images[i], mixed, segmenter="cam")
        except Exception as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for a, b in zip(found, sequential):
        _assert_same(a, b)
        np.testing.assert_array_equal(a.mask, b.mask)


class _Broken(_LeftHalf):
    def segment(self, image, ctx):
        raise RuntimeError("segmenter failed")


def test_hooks_released_and_lock_free_after_success_and_failure(tiny_backbone, sets):
    layer = default_target_layer(sets["coop_a"])
    analyze(_image(12), [sets["coop_a"], sets["maple"]])
    with pytest.raises(RuntimeError, match="segmenter failed"):
        analyze(_image(12), [sets["coop_a"], sets["coop_b"]], segmenter=_Broken())
    with pytest.raises(ValueError, match="unknown CAM method"):
        analyze(_image(12), [sets["coop_a"]], cam_method="nope")
    assert not layer._forward_hooks and not layer._backward_hooks
    assert all(p.grad is None for learner in sets.values() for p in learner.parameters())
    acquired = []

    def probe():  # another thread can take the lock, so no call left it held
        if tiny_backbone.lock.acquire(timeout=5):
            acquired.append(True)
            tiny_backbone.lock.release()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    assert acquired == [True]


def test_text_features_are_cached_until_the_prompts_or_classes_change(tiny_backbone):
    learner = _coop(tiny_backbone, 9)
    first = class_text_features(learner)
    assert class_text_features(learner) is first
    with torch.no_grad():
        learner.ctx.add_(0.5)  # as an optimiser step would
    changed = class_text_features(learner)
    assert changed is not first and not torch.allclose(changed, first)
    with torch.no_grad():
        torch.testing.assert_close(changed, learner.text_features())
    learner.set_classnames(["apple", "pear"])
    assert class_text_features(learner).shape[0] == 2


def test_prompt_sets_must_agree(tiny_backbone, sets):
    other = _coop(tiny_backbone, 4, ["apple", "pear"])
    with pytest.raises(AnalysisError, match="different class lists.*apple, pear"):
        analyze(_image(13), [sets["coop_a"], other])
    with pytest.raises(AnalysisError, match="at least one prompt set"):
        analyze(_image(13), [])


# --- the CLI ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_files(tiny_backbone, tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    Image.fromarray(_image(20, 36, 44)).save(root / "photo.png")
    save_prompt_set(_coop(tiny_backbone, 5), root / "plain.safetensors")
    save_prompt_set(_coop(tiny_backbone, 6), root / "tuned.safetensors", name="tuned set")
    torch.manual_seed(7)
    save_prompt_set(build_learner("maple", tiny_backbone, CLASSES), root / "maple.safetensors")
    return root


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_analyze_end_to_end(cli_files, tmp_path, capsys):
    out = tmp_path / "figure.png"
    code, stdout, _ = _run(capsys, ["analyze", str(cli_files / "photo.png"), "--device", "cpu", "--prompts",
                                    str(cli_files / "plain.safetensors"), str(cli_files / "tuned.safetensors"),
                                    str(cli_files / "maple.safetensors"), "--out", str(out)])
    assert code == 0
    line = json.loads(stdout.strip().splitlines()[-1])
    assert {"image", "out", "backbone", "prompt_sets", "segmenter", "mask_source", "timings"} <= set(line)
    assert line["backbone"] == "tiny-vit" and line["segmenter"] == "cam" and line["mask_source"] == "segmenter"
    assert [p["name"] for p in line["prompt_sets"]] == ["plain", "tuned set", "maple"]
    for entry in line["prompt_sets"]:
        assert {"name", "label", "top5", "object_share", "pointing_hit", "target"} <= set(entry)
        assert len(entry["top5"]) == 5 and entry["target"] in CLASSES
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_mask_classes_and_target(cli_files, tmp_path, capsys):
    mask = np.zeros((36, 44), dtype=np.uint8)
    mask[:, :22] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    (tmp_path / "classes.txt").write_text("red square, green circle\nblue star\n")
    code, stdout, _ = _run(capsys, ["analyze", str(cli_files / "photo.png"), "--device", "cpu", "--prompts",
                                    str(cli_files / "plain.safetensors"), "--mask", str(tmp_path / "mask.png"),
                                    "--classes", str(tmp_path / "classes.txt"), "--target", "blue star",
                                    "--cam", "layercam", "--out", str(tmp_path / "f.png")])
    assert code == 0
    line = json.loads(stdout.strip().splitlines()[-1])
    entry = line["prompt_sets"][0]
    assert line["mask_source"] == "given" and line["segmenter"] is None and line["cam_method"] == "layercam"
    assert entry["target"] == "blue star" and len(entry["top5"]) == 3
    assert {c for c, _ in entry["top5"]} == {"red square", "green circle", "blue star"}
    code, stdout, _ = _run(capsys, ["analyze", str(cli_files / "photo.png"), "--device", "cpu", "--prompts",
                                    str(cli_files / "plain.safetensors"), "--segmenter", "none",
                                    "--out", str(tmp_path / "g.png")])
    assert code == 0 and json.loads(stdout.strip())["prompt_sets"][0]["object_share"] is None


def _other_backbone_copy(src, dst):
    """The same tensors with metadata claiming the OpenAI ViT-B/16 backbone."""
    meta = dict(read_info(src).meta, backbone="ViT-B-16", model="ViT-B-16-quickgelu", pretrained="openai")
    save_file(load_file(str(src)), str(dst), metadata={METADATA_KEY: json.dumps(meta)})


def test_cli_bad_inputs(cli_files, tmp_path, capsys, tiny_backbone):
    plain = str(cli_files / "plain.safetensors")
    photo = str(cli_files / "photo.png")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    _other_backbone_copy(cli_files / "plain.safetensors", tmp_path / "vitb.safetensors")
    save_prompt_set(_coop(tiny_backbone, 8, ["apple", "pear"]), tmp_path / "fruit.safetensors")
    cases = [
        ([str(notes), "--prompts", plain], "notes.txt"),
        ([photo, "--prompts", str(tmp_path / "missing.safetensors")], "missing.safetensors"),
        ([photo, "--prompts", plain, str(tmp_path / "vitb.safetensors")], "ViT-B-16"),
        ([photo, "--prompts", plain, "--target", "zebra"], "unknown target class 'zebra'"),
        ([photo, "--prompts", plain, str(tmp_path / "fruit.safetensors")], "different class lists"),
        ([photo, "--prompts", plain, "--segmenter", "magic"], "unknown segmenter 'magic'"),
        ([photo, "--prompts", plain, "--mask", str(tmp_path / "nomask.png")], "nomask.png"),
    ]
    for args, expected in cases:
        code, _, err = _run(capsys, ["analyze", *args, "--device", "cpu", "--out", str(tmp_path / "x.png")])
        assert code == 2, args
        assert err.startswith("error:") and expected in err, err
    assert not (tmp_path / "x.png").exists()
