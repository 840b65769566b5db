"""DAPT's fine cue on a visitor's own images: masks made by the segmenter menu, cached by content, reviewed in a
gallery, and exactly those masks read by the training run."""

from __future__ import annotations

import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dapt_core import app_support as support
from dapt_core.app_support import training
from dapt_core.app_support.segmenters import SegmenterMenu
from dapt_core.app_support.user_masks import SEED_PROMPT, UserMasks
from dapt_core.data.masks import MaskCache
from dapt_core.data.records import Sample
from dapt_core.learners import build_learner
from dapt_core.segment import get_segmenter
from dapt_core.segment.bulk import learner_context_fn
from dapt_core.world import OBJECT_CLASSES, render_scene

CLASSES = list(OBJECT_CLASSES[:2])
METHOD = "gradcam"


def _folder(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        for i, background in enumerate(("grass", "sky")):
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(render_scene(name, background, 48, rng).image).save(path)
    return root


@pytest.fixture()
def masks(tiny_backbone, tmp_path):
    return UserMasks(tiny_backbone, SegmenterMenu(), tmp_path / "cache", cam_method=METHOD)


def _expected(tiny_backbone, path: Path, label: int, segmenter: str) -> np.ndarray:
    """The mask the segmenter makes when seeded by zero-shot CLIP's map of the image's true class."""
    learner = build_learner("coop", tiny_backbone, CLASSES, ctx_init=SEED_PROMPT)
    image = np.asarray(Image.open(path).convert("RGB"))
    ctx = learner_context_fn(learner, cam_method=METHOD, score=False)(Sample(path, label, CLASSES[label]), image)
    return get_segmenter(segmenter).segment(image, ctx).mask.astype(bool)


@pytest.mark.parametrize("segmenter", ["grabcut", "cam"])
def test_masks_are_the_seeded_segmenters_and_cached_by_content(masks, tiny_backbone, tmp_path, segmenter):
    images = _folder(tmp_path / "images")
    made = masks.make(images, segmenter, tmp_path / "m1")
    assert (made.computed, made.cached, len(made.samples)) == (4, 0, 4)
    for sample in made.samples:
        np.testing.assert_array_equal(made.mask(sample), _expected(tiny_backbone, sample.path, sample.label,
                                                                   segmenter))
    # the same pictures under other names, elsewhere: nothing is segmented again
    copy = tmp_path / "copy"
    for sample in made.samples:
        target = copy / sample.classname / f"renamed-{sample.path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample.path, target)
    seg = masks.segmenters.get(segmenter)
    original = seg.segment
    seg.segment = lambda *a, **k: pytest.fail("a cached image was segmented again")
    try:
        again = masks.make(copy, segmenter, tmp_path / "m2")
    finally:
        seg.segment = original
    assert (again.computed, again.cached) == (0, 4)
    for first, second in zip(made.samples, again.samples):
        np.testing.assert_array_equal(made.mask(first), again.mask(second))
    # one picture changed: only it is segmented
    Image.fromarray(render_scene(CLASSES[0], "water", 48, np.random.default_rng(9)).image).save(
        copy / CLASSES[0] / "renamed-0.png")
    assert masks.make(copy, segmenter, tmp_path / "m3").computed == 1
    gallery = made.gallery(32)
    assert len(gallery) == 4 and gallery[0][0].shape == (32, 32, 3)
    assert gallery[0][1] == f"{made.samples[0].classname}: 0.png (object {made.mask(made.samples[0]).mean():.0%})"


def test_training_reads_exactly_the_reviewed_masks(masks, tiny_backbone, tmp_path, monkeypatch):
    images = _folder(tmp_path / "images")
    made = masks.make(images, "grabcut", tmp_path / "made")
    # the cache, not a new segmentation, is what training reads: overwrite one entry with a hand-made mask
    edited = made.samples[1]
    square = np.zeros((48, 48), bool)
    square[8:24, 10:30] = True
    MaskCache(masks.cache("grabcut").root).put(masks.key(edited), square)
    seen = {}

    def spy(learner, samples, cfg, dapt, *, masks, **kwargs):
        seen.update(cue=dapt.cue, masks={s.path.name + s.classname: masks.get(i, s) for i, s in enumerate(samples)})
        return [{"epoch": 0, "val_accuracy": None, "loss": 0.0}]

    monkeypatch.setattr(training, "train_prompts", spy)
    monkeypatch.setattr(training, "model_selection", lambda history, selection: "last")
    req = support.request_from_form("images", None, "coop", "mask", 2, 1, "own-masks", 1, images, tmp_path / "w",
                                    lambda root, mask_root: masks.reviewed(root, mask_root, "grabcut"))
    assert req.masks == tmp_path / "w" / "masks"
    catalog = support.PromptCatalog(tiny_backbone, tmp_path / "bundled", tmp_path / "user")
    support.run_training(req, tiny_backbone, catalog, tmp_path / "w")
    assert seen["cue"] == "mask" and len(seen["masks"]) == 4
    for sample in made.samples:
        want = square if sample == edited else made.mask(sample)
        np.testing.assert_array_equal(seen["masks"][sample.path.name + sample.classname], want.astype(np.float32))


def test_bad_input_is_refused_with_a_message_and_writes_nothing(masks, tmp_path):
    images = _folder(tmp_path / "images")
    with pytest.raises(ValueError, match=r"4 of 4 images have no grabcut mask yet .*press Make masks"):
        masks.reviewed(images, tmp_path / "r", "grabcut")
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="unknown mask segmenter 'none'"):
        masks.make(images, "none", tmp_path / "m")
    with pytest.raises(ValueError, match="synthetic task comes with exact masks"):
        masks.make_for_form("synthetic", None, None, "grabcut", tmp_path / "w")
    with pytest.raises(ValueError, match="Upload a zip"):
        masks.make_for_form("zip", None, None, "grabcut", tmp_path / "w")
    with pytest.raises(support.UploadError, match="Add images class by class first"):
        masks.make_for_form("images", None, None, "grabcut", tmp_path / "w")
    with pytest.raises(ValueError, match="needs at least 2 class sub-folders"):
        masks.make(images / CLASSES[0], "grabcut", tmp_path / "m")
    assert not (tmp_path / "m").exists() and not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="press Make masks"):
        support.TrainRequest("folder", "coop", "mask", 1, 1, "x", folder=images).validate()


def test_masks_of_a_zip_follow_its_content(masks, tmp_path):
    images = _folder(tmp_path / "images")
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(images.rglob("*.png")):
            zf.write(path, path.relative_to(images))
    made = masks.make_for_form("zip", archive, None, "cam", tmp_path / "w1")
    assert (made.computed, len(made.samples)) == (4, 4)
    # training extracts the zip again elsewhere; the reviewed masks are found by content
    req = support.request_from_form("zip", archive, "coop", "mask", 1, 1, "", 1, None, tmp_path / "w2",
                                    lambda root, mask_root: masks.reviewed(root, mask_root, "cam"))
    for sample in made.samples:
        relative = sample.path.relative_to(made.image_root)
        got = np.asarray(Image.open((req.masks / relative).with_suffix(".png"))) > 127
        np.testing.assert_array_equal(got, made.mask(sample))


def test_the_tuning_tab_makes_masks_then_trains_on_them(tiny_backbone, tmp_path):
    """Through the app's API: the masks of a zip as a gallery, then the mask cue trains on them; training
    before the masks exist is refused with the way out."""
    gradio_client = pytest.importorskip("gradio_client")
    import app

    images = _folder(tmp_path / "images")
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(images.rglob("*.png")):
            zf.write(path, path.relative_to(images))
    demo = app.build_app(tiny_backbone, bundled_dir=tmp_path / "bundled", user_dir=tmp_path / "user",
                         examples_dir=tmp_path / "none")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        zip_arg = gradio_client.handle_file(str(archive))
        with pytest.raises(gradio_client.exceptions.AppError, match="press Make masks"):
            client.predict("zip", zip_arg, "coop", "mask", 1, 1, "", 1, "cam", api_name="/train")
        gallery, note = client.predict("zip", zip_arg, "cam", api_name="/make_masks")
        assert len(gallery) == 4 and note.startswith("4 masks (cam, seeded by")
        assert [g["caption"].split(" (")[0] for g in gallery] == \
            [f"{c}: {i}.png" for c in sorted(CLASSES) for i in (0, 1)]
        status, *_ = client.predict("zip", zip_arg, "coop", "mask", 1, 1, "own masks", 1, "cam", api_name="/train")
        assert "user/own-masks" in status
        with pytest.raises(gradio_client.exceptions.AppError, match="synthetic task comes with exact masks"):
            client.predict("synthetic", None, "cam", api_name="/make_masks")
    finally:
        demo.close()
