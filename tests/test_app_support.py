"""The app's non-UI helpers: backbone choice, prompt-set catalogue, uploads, the training queue and runner."""

from __future__ import annotations

import json
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from dapt_core import app_support as support
from dapt_core.app_support import startup
from dapt_core.checkpoint import METADATA_KEY, save_prompt_set
from dapt_core.learners import build_learner
from dapt_core.objective import DaptConfig
from dapt_core.train import TrainingCancelled
from dapt_core.weights import WeightsNotFoundError

CLASSES = ["circle", "square", "triangle"]


def _png(path: Path, size: int = 16, colour: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(path)
    return path


@pytest.fixture()
def prompt_dirs(tmp_path, tiny_backbone):
    bundled, user = tmp_path / "prompts", tmp_path / "user"
    save_prompt_set(build_learner("maple", tiny_backbone, CLASSES, depth=1), bundled / "a-maple.safetensors")
    save_prompt_set(build_learner("coop", tiny_backbone, CLASSES, n_ctx=2), bundled / "b-coop.safetensors")
    save_prompt_set(build_learner("coop", tiny_backbone, CLASSES, n_ctx=2), bundled / "c-dapt.safetensors",
                    dapt=DaptConfig(cue="gradcam"))
    return bundled, user


def _foreign_copy(src: Path, dst: Path) -> Path:
    """The same tensors, but metadata saying another backbone made them."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    meta.update(backbone="ViT-B-16", model="ViT-B-16-quickgelu", pretrained="openai")
    save_file(load_file(str(src)), str(dst), metadata={METADATA_KEY: json.dumps(meta)})
    return dst


# --- backbone choice ----------------------------------------------------------------------------------------

def test_forced_test_backbone_carries_a_random_weights_banner():
    choice = support.choose_backbone("tiny-vit", device="cpu")
    assert choice.backbone is not None and choice.backbone.name == "tiny-vit"
    assert "random weights" in choice.banner and choice.error is None


def test_unknown_forced_backbone_is_an_error_page_not_a_crash():
    choice = support.choose_backbone("no-such-backbone", device="cpu")
    assert choice.backbone is None and "no-such-backbone" in choice.error


def _loader_missing(missing: set[str], backbone, asked: list[str]):
    def fake_load(name, **kwargs):
        asked.append(name)
        if name in missing:
            raise WeightsNotFoundError(f"{name} offline")
        return backbone
    return fake_load


# The fallback was synth-mini until issue 14: synth-mini ignores backgrounds, so its CoOp and CoOp+DAPT sets draw the
# same maps; synth-web has measured context bias, so the offline app falls back to it first and to synth-mini after.
def test_falls_back_to_synth_web_with_the_fetch_command(monkeypatch, tiny_backbone):
    asked = []
    monkeypatch.setattr(startup, "load_backbone", _loader_missing({"ViT-B-16"}, tiny_backbone, asked))
    choice = support.choose_backbone()
    assert asked == ["ViT-B-16", "synth-web"]
    assert choice.backbone is tiny_backbone and choice.error is None
    assert support.FETCH_COMMAND in choice.banner and "**synth-web**" in choice.banner
    assert "context bias" in choice.banner and "synth-mini" not in choice.banner


def test_falls_back_to_synth_mini_when_synth_web_is_missing_too(monkeypatch, tiny_backbone):
    asked = []
    monkeypatch.setattr(startup, "load_backbone", _loader_missing({"ViT-B-16", "synth-web"}, tiny_backbone, asked))
    choice = support.choose_backbone()
    assert asked == ["ViT-B-16", "synth-web", "synth-mini"]
    assert choice.backbone is tiny_backbone and "**synth-mini**" in choice.banner


def test_a_forced_bundled_backbone_says_what_it_is(monkeypatch, tiny_backbone):
    asked = []
    monkeypatch.setattr(startup, "load_backbone", _loader_missing(set(), tiny_backbone, asked))
    choice = support.choose_backbone("synth-mini")
    assert asked == ["synth-mini"] and "**synth-mini**" in choice.banner
    assert support.FETCH_COMMAND not in choice.banner  # asked for, not a fallback


def test_no_backbone_at_all_says_what_to_do(monkeypatch):
    asked = []
    monkeypatch.setattr(startup, "load_backbone", _loader_missing({"ViT-B-16", "synth-web", "synth-mini"}, None,
                                                                  asked))
    choice = support.choose_backbone()
    assert choice.backbone is None and asked == ["ViT-B-16", "synth-web", "synth-mini"]
    assert support.FETCH_COMMAND in choice.error and "--backbone tiny-vit" in choice.error
    assert "synth-web offline; synth-mini offline" in choice.error


def test_parse_classnames():
    assert support.parse_classnames("  ") is None
    assert support.parse_classnames("cat, dog ,, golden_retriever") == ["cat", "dog", "golden retriever"]
    with pytest.raises(ValueError, match="two class names"):
        support.parse_classnames("cat")


def test_examples_without_a_manifest_are_the_image_files(tmp_path):
    assert support.Examples(tmp_path / "missing").items == []
    _png(tmp_path / "b.png"), _png(tmp_path / "a.png"), _png(tmp_path / "a_mask.png")
    (tmp_path / "notes.txt").write_text("x")
    examples = support.Examples(tmp_path)
    assert [e.image.name for e in examples.items] == ["a.png", "b.png"]
    assert examples.exact_mask(tmp_path / "a.png") is None


def test_examples_manifest_gives_labels_views_and_exact_masks(tmp_path):
    folder = tmp_path / "examples"
    _png(folder / "00_x.png", size=8), _png(folder / "00_x_256.png", size=32)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 3:6] = 255
    Image.fromarray(mask).save(folder / "00_x_mask.png")
    (folder / "examples.json").write_text(json.dumps([
        {"file": "00_x.png", "view": "00_x_256.png", "mask": "00_x_mask.png", "split": "conflicting",
         "object": "star", "background": "cloud"}, {"file": "missing.png"}]))
    examples = support.Examples(folder)
    assert [(e.image.name, e.label) for e in examples.items] == [("00_x_256.png", "conflicting: star on cloud")]
    upload = tmp_path / "upload" / "whatever.png"  # the same bytes under another name, as Gradio stores it
    upload.parent.mkdir()
    upload.write_bytes((folder / "00_x_256.png").read_bytes())
    found = examples.exact_mask(upload)
    assert found.dtype == bool and found.sum() == 9 and found[2, 3] and not found[0, 0]
    assert examples.exact_mask(folder / "00_x.png") is None  # only the offered picture is recognised
    (folder / "examples.json").write_text("{broken")
    assert [e.image.name for e in support.Examples(folder).items] == ["00_x.png", "00_x_256.png"]


# --- catalogue ----------------------------------------------------------------------------------------------

def test_catalogue_lists_only_sets_that_fit_and_defaults_to_coop_and_dapt(prompt_dirs, tiny_backbone):
    bundled, user = prompt_dirs
    _foreign_copy(bundled / "b-coop.safetensors", bundled / "d-foreign.safetensors")
    catalog = support.PromptCatalog(tiny_backbone, bundled, user)
    keys = [e.key for e in catalog.entries()]
    assert keys == ["bundled/a-maple", "bundled/b-coop", "bundled/c-dapt"]
    assert catalog.default_keys() == ["bundled/b-coop", "bundled/c-dapt"]
    with pytest.raises(KeyError, match="refresh"):
        catalog.get("bundled/d-foreign")
    catalog.preferred = ("a-maple", "c-dapt")  # the examples' pair, when both are listed, comes first
    assert catalog.default_keys() == ["bundled/a-maple", "bundled/c-dapt"]
    assert catalog.view().selected == ["bundled/a-maple", "bundled/c-dapt"]
    catalog.preferred = ("a-maple", "e-gone")  # a pair with a set that is not listed: the usual default
    assert catalog.default_keys() == ["bundled/b-coop", "bundled/c-dapt"]


def test_examples_name_the_prompt_pair_their_numbers_are_of(tmp_path):
    _png(tmp_path / "00_x.png", size=8)
    manifest = {"cam_methods": ["relevance", "gradcam"], "rule": {"base": "maple", "dapt": "maple+dapt-mask"},
                "prompt_sets": {"coop": "web-coop", "maple": "web-maple", "maple+dapt-mask": "web-maple-dapt"},
                "examples": [{"file": "00_x.png"}]}
    (tmp_path / "examples.json").write_text(json.dumps(manifest))
    examples = support.Examples(tmp_path)
    assert (examples.prompt_pair, examples.cam_method) == (("web-maple", "web-maple-dapt"), "relevance")
    manifest["rule"]["dapt"] = "coop+dapt-mask"  # not among its prompt sets: no pair
    (tmp_path / "examples.json").write_text(json.dumps(manifest))
    assert support.Examples(tmp_path).prompt_pair is None


def test_cached_learners_are_never_shared_across_class_lists(prompt_dirs, tiny_backbone):
    catalog = support.PromptCatalog(tiny_backbone, *prompt_dirs)
    stored = catalog.learner("bundled/b-coop")
    assert catalog.learner("bundled/b-coop") is stored
    custom = catalog.learner("bundled/b-coop", ["cat", "dog"])
    assert custom is not stored
    assert custom.classnames == ["cat", "dog"] and stored.classnames == CLASSES


def test_install_refuses_bad_files_and_never_overwrites(prompt_dirs, tiny_backbone, tmp_path):
    bundled, user = prompt_dirs
    catalog = support.PromptCatalog(tiny_backbone, bundled, user)
    first = catalog.install(bundled / "b-coop.safetensors", "mine.safetensors")
    second = catalog.install(bundled / "c-dapt.safetensors", "mine.safetensors")
    assert (first.key, second.key) == ("user/mine", "user/mine-1")
    assert second.info.label == "CoOp + DAPT (gradcam)"  # the first file was not replaced
    assert catalog.get("user/mine").info.label == "CoOp"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(support.UploadError, match="junk.safetensors was refused"):
        catalog.install(junk, "junk.safetensors")
    with pytest.raises(support.UploadError, match=".safetensors files"):
        catalog.install(junk, "model.pth")
    foreign = _foreign_copy(bundled / "b-coop.safetensors", tmp_path / "foreign.safetensors")
    with pytest.raises(support.UploadError, match="ViT-B-16"):
        catalog.install(foreign, "foreign.safetensors")
    assert sorted(p.name for p in user.iterdir()) == ["mine-1.safetensors", "mine.safetensors"]


# --- uploads ------------------------------------------------------------------------------------------------

def _zip(path: Path, members: dict[str, bytes | None]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            if data is None:
                zf.writestr(zipfile.ZipInfo(name), b"")  # a directory entry (name ends with /)
            else:
                zf.writestr(name, data)
    return path


@pytest.fixture()
def png_bytes(tmp_path) -> bytes:
    return _png(tmp_path / "src.png").read_bytes()


def test_zip_with_a_wrapping_folder_becomes_an_image_folder(tmp_path, png_bytes):
    archive = _zip(tmp_path / "pets.zip", {"pets/cat/1.png": png_bytes, "pets/cat/2.png": png_bytes,
                                          "pets/dog/1.png": png_bytes, "pets/dog/readme.txt": b"hi",
                                          "__MACOSX/pets/._x.png": b"junk"})
    root = support.extract_labelled_zip(archive, tmp_path / "out")
    assert support.describe_folder(root) == {"cat": 2, "dog": 1}
    assert not (root / "dog" / "readme.txt").exists()


@pytest.mark.parametrize("members, message", [
    ({"cat/1.png": b"x"}, "not a readable image"),
    ({"cat/1.png": "PNG", "dog/": None}, "class 'dog' has no images"),
    ({"cat/1.png": "PNG"}, "at least two classes"),
    ({"1.png": "PNG", "2.png": "PNG"}, "not inside a class folder"),
    ({"../evil/1.png": "PNG", "cat/1.png": "PNG"}, "unsafe path"),
    ({"cat/notes.txt": b"x"}, "holds no images"),
])
def test_bad_zips_are_refused_with_a_reason(tmp_path, png_bytes, members, message):
    members = {k: (png_bytes if v == "PNG" else v) for k, v in members.items()}
    with pytest.raises(support.UploadError, match=message):
        support.extract_labelled_zip(_zip(tmp_path / "bad.zip", members), tmp_path / "out")


def test_not_a_zip_and_limits(tmp_path, png_bytes):
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(support.UploadError, match="not a zip"):
        support.extract_labelled_zip(fake, tmp_path / "out")
    archive = _zip(tmp_path / "ok.zip", {"a/1.png": png_bytes, "b/1.png": png_bytes, "b/2.png": png_bytes})
    with pytest.raises(support.UploadError, match="over the limit"):
        support.extract_labelled_zip(archive, tmp_path / "o2", support.UploadLimits(max_files=2))
    with pytest.raises(support.UploadError, match="pixels"):
        support.extract_labelled_zip(archive, tmp_path / "o3", support.UploadLimits(max_pixels=100))


def test_images_added_class_by_class(tmp_path):
    root = tmp_path / "images"
    img = _png(tmp_path / "x.png")
    assert support.add_labelled_images([img, img], " golden  retriever ", root) == 2
    with pytest.raises(support.UploadError, match="class name"):
        support.add_labelled_images([img], "a/b", root)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(support.UploadError, match="bad.jpg is not a readable image"):
        support.add_labelled_images([bad], "cat", root)
    with pytest.raises(support.UploadError, match="at least two classes"):
        support.check_image_folder(root)
    support.add_labelled_images([img], "cat", root)
    support.check_image_folder(root)
    assert support.describe_folder(root) == {"cat": 1, "golden retriever": 2}


# --- training queue -----------------------------------------------------------------------------------------

def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the queue"
        time.sleep(0.01)


def test_queue_runs_one_job_at_a_time_with_positions_and_cancel():
    release = threading.Event()
    running = []

    def runner(job):
        running.append(job.request)
        if job.request == "slow":
            while not release.is_set():
                if job.cancel.is_set():
                    raise TrainingCancelled("stopped")
                time.sleep(0.01)
        if job.request == "bad":
            raise ValueError("no classes")
        if job.request == "crash":
            raise RuntimeError("bug")
        return job.request.upper()

    queue = support.TrainingQueue(runner, max_waiting=3)
    slow = queue.submit("alice", "slow")
    _wait(lambda: slow.state == "running")
    bad, crash, ok = queue.submit("bob", "bad"), queue.submit("carol", "crash"), queue.submit("dave", "ok")
    assert [queue.position(j) for j in (slow, bad, crash, ok)] == [0, 1, 2, 3]
    with pytest.raises(support.QueueFullError):
        queue.submit("eve", "more")
    assert queue.cancel("carol") == 1
    assert crash.state == "cancelled" and queue.position(ok) == 2
    release.set()
    _wait(lambda: ok.finished)
    assert running == ["slow", "bad", "ok"]
    assert (slow.result, ok.result) == ("SLOW", "OK")
    assert bad.state == "failed" and bad.error == "no classes"
    release.clear()
    again = queue.submit("alice", "slow")
    _wait(lambda: again.state == "running")
    assert queue.cancel("alice") == 1
    _wait(lambda: again.finished)
    assert again.state == "cancelled" and "nothing was saved" in again.message


def test_internal_errors_are_logged_not_shown():
    queue = support.TrainingQueue(lambda job: 1 / 0)
    job = queue.submit("x", None)
    _wait(lambda: job.finished)
    assert job.state == "failed" and "server log" in job.message


def test_dapt_schedule_fits_short_runs():
    assert support.dapt_config("gradcam", 1).schedule == "joint"
    assert support.dapt_config("gradcam", 2).switch_epoch == 1
    assert support.dapt_config("mask", 10).switch_epoch == DaptConfig().switch_epoch
    assert not support.dapt_config("off", 3).enabled
    # the gradcam cue's masks come from the chosen method; the other cues use none, so they keep the default
    assert support.dapt_config("gradcam", 1).cam_method == "gradcam"
    assert [support.dapt_config("gradcam", n, "eigencam").cam_method for n in (1, 4)] == ["eigencam"] * 2
    assert support.dapt_config("mask", 4, "eigencam").cam_method == "gradcam"
    with pytest.raises(ValueError, match=r"unknown DAPT cue method 'gradcam\+'"):
        support.dapt_config("gradcam", 4, "gradcam+")


def test_loss_figure_draws_only_terms_that_moved():
    fig = support.loss_figure([{"total": 2.0, "ce": 1.5, "triplet": 0.0}, {"total": 1.0, "ce": 0.9, "triplet": 0.0}])
    assert sorted(line.get_label() for line in fig.axes[0].lines) == ["ce", "total"]


# --- training runner ----------------------------------------------------------------------------------------

def test_synthetic_run_saves_an_evaluated_prompt_set(tmp_path, tiny_backbone):
    catalog = support.PromptCatalog(tiny_backbone, tmp_path / "none", tmp_path / "user")
    steps = []
    req = support.TrainRequest(source="synthetic", learner="coop", cue="mask", shots=1, epochs=1, name="my run",
                               synth_test_per_class=1)
    result = support.run_training(req, tiny_backbone, catalog, tmp_path / "work", on_step=steps.append)
    assert result.key == "user/my-run" and result.path.is_file()
    assert set(result.metrics) == {"aligned_accuracy", "conflicting_accuracy", "balanced_accuracy"}
    assert steps and all(0 <= v <= 100 for v in result.metrics.values())
    info = catalog.get("user/my-run").info
    assert info.label == "CoOp + DAPT (mask)" and info.meta["train"]["shots"] == 1


def test_synthetic_source_on_synth_web_is_its_worlds_task(tmp_path, tiny_backbone, monkeypatch):
    from dapt_core.app_support import training
    from dapt_core.experiments.bias_worlds import web_task
    from dapt_core.world.web_shapes import WEB_OBJECT_CLASSES

    assert support.synthetic_world(tiny_backbone) == "synth"
    monkeypatch.setattr(training, "WEB_BACKBONE", tiny_backbone.name)  # tiny-vit standing in for synth-web
    assert support.synthetic_world(tiny_backbone) == "web"
    catalog = support.PromptCatalog(tiny_backbone, tmp_path / "none", tmp_path / "user")
    req = support.TrainRequest(source="synthetic", learner="coop", cue="mask", shots=1, epochs=1, name="web run",
                               synth_test_per_class=1, seed=3)
    seen = {}
    real = training.train_prompts

    def spy(learner, samples, cfg, dapt, masks=None, **kwargs):
        seen["samples"], seen["masks"] = samples, masks
        return real(learner, samples, cfg, dapt, masks=masks, **kwargs)

    monkeypatch.setattr(training, "train_prompts", spy)
    result = support.run_training(req, tiny_backbone, catalog, tmp_path / "work")
    info = catalog.get("user/web-run").info
    assert info.meta["classnames"] == list(WEB_OBJECT_CLASSES) and "rehomed web task" in result.note
    task = web_task(3, 1, 1, 64, variant="rehomed")
    samples = seen["samples"]
    assert [s.label for s in samples] == task.train.labels.tolist()
    for index in (0, len(samples) - 1):  # each written scene and mask, read back, is the task's
        image = np.asarray(Image.open(samples[index].path).convert("RGB"))
        assert (image == task.train.images[index]).all()
        assert (seen["masks"].get(index, samples[index]) > 0.5).tolist() == task.train.masks[index].tolist()
    assert set(result.metrics) == {"aligned_accuracy", "conflicting_accuracy", "balanced_accuracy"}


def test_folder_run_holds_out_images_only_when_every_class_has_some(tmp_path, tiny_backbone):
    catalog = support.PromptCatalog(tiny_backbone, tmp_path / "none", tmp_path / "user")
    root = tmp_path / "images"
    for i in range(2):
        _png(root / "red" / f"{i}.png", colour=200), _png(root / "blue" / f"{i}.png", colour=30)
    req = support.TrainRequest(source="folder", learner="coop", cue="off", shots=1, epochs=1, name="f",
                               folder=root, train={"batch_size": 2})
    result = support.run_training(req, tiny_backbone, catalog, tmp_path / "w1")
    assert list(result.metrics) == ["held_out_accuracy"] and "2 held-out" in result.note
    req.shots = 2
    result = support.run_training(req, tiny_backbone, catalog, tmp_path / "w2")
    assert result.metrics == {} and "not evaluated" in result.note
    assert result.key == "user/f-1"


def test_requests_that_cannot_run_are_refused_before_queueing(tmp_path):
    with pytest.raises(ValueError, match="needs their masks: press Make masks"):
        support.TrainRequest("folder", "coop", "mask", 1, 1, "x", folder=tmp_path).validate()
    with pytest.raises(ValueError, match="shots"):
        support.TrainRequest("synthetic", "coop", "off", 0, 1, "x").validate()
    with pytest.raises(support.UploadError, match="no labelled images"):
        support.TrainRequest("folder", "coop", "off", 1, 1, "x").validate()
    with pytest.raises(ValueError, match="unknown learner"):
        support.TrainRequest("synthetic", "vpt", "off", 1, 1, "x").validate()


# --- segmenters ---------------------------------------------------------------------------------------------

class _FakeSam:
    name = "sam"

    def estimated_seconds(self, image_shape, image_hash=None):
        return 24.0 if image_hash is None else 0.5


def test_segmenter_menu_explains_unavailable_ones_and_shows_sam_cost(monkeypatch):
    from dapt_core.app_support import segmenters

    monkeypatch.setattr(segmenters, "available_segmenters",
                        lambda: {"cam": None, "grabcut": None, "sam": "weights missing; fetch them"})
    menu = support.SegmenterMenu()
    labels = dict((value, label) for label, value in menu.choices())
    assert list(labels) == ["none", "cam", "grabcut", "sam", "exact"]
    assert labels["exact"] == "exact — unavailable" and menu.get("none") is None
    assert labels["sam"] == "sam — unavailable"
    with pytest.raises(ValueError, match="weights missing; fetch them"):
        menu.get("sam")
    with pytest.raises(ValueError, match="unknown segmenter"):
        menu.get("seem")
    assert menu.get("none") is None and menu.get("cam") is menu.get("cam")
    assert "unavailable" in menu.note("sam") and "instant" in menu.note("cam")

    monkeypatch.setattr(segmenters, "available_segmenters", lambda: {"cam": None, "grabcut": None, "sam": None})
    monkeypatch.setattr(segmenters, "get_segmenter", lambda name: _FakeSam())
    menu = support.SegmenterMenu()
    assert "~24 s per new image" in dict((v, l) for l, v in menu.choices())["sam"]
    assert "under a second" in menu.note("sam", np.zeros((8, 8, 3), np.uint8))  # its embedding is cached


def test_temp_files_prune_old_folders_and_vanish_with_their_owner():
    import gc
    import os

    files = support.TempFiles(max_age_s=60)
    old, fresh = files.new_dir(), files.new_dir()
    os.utime(old, (time.time() - 120, time.time() - 120))
    newest = files.new_dir()
    assert not old.exists() and fresh.exists() and newest.exists()
    root = files.root
    del files
    gc.collect()
    assert not root.exists()


def test_examples_follow_the_backbone(tiny_backbone):
    from dapt_core.app_support import EXAMPLE_DIR, PHOTO_DIR, WEB_EXAMPLE_DIR, Examples, example_dir_for
    from dapt_core.backbones import get_backbone_spec

    def named(name):
        return type(tiny_backbone)(spec=get_backbone_spec(name), model=tiny_backbone.model,
                                   tokenizer=tiny_backbone.tokenizer, image_size=32, mean=(0, 0, 0), std=(1, 1, 1))

    assert example_dir_for(tiny_backbone) == EXAMPLE_DIR
    assert example_dir_for(named("synth-mini")) == EXAMPLE_DIR
    assert example_dir_for(named("synth-web")) == WEB_EXAMPLE_DIR == EXAMPLE_DIR.parent / "examples_web"
    assert example_dir_for(named("ViT-B-16")) == PHOTO_DIR
    photos = Examples(PHOTO_DIR)
    assert {e.image.name for e in photos.items} == {"astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"}


def test_a_noted_example_fills_in_its_true_class_and_another_picture_clears_it(tmp_path):
    _png(tmp_path / "00_x.png", size=8), _png(tmp_path / "01_y.png", size=8, colour=90)
    manifest = {"cam_methods": ["relevance"], "examples": [
        {"file": "00_x.png", "object": "arrow", "note": "arrow's numbers"},
        {"file": "01_y.png", "object": "oval"}]}  # no note: nothing measured to reproduce, nothing filled in
    (tmp_path / "examples.json").write_text(json.dumps(manifest))
    examples = support.Examples(tmp_path)
    other = tmp_path / "upload.png"
    _png(other, size=8, colour=200)
    assert examples.target(tmp_path / "00_x.png", "") == "arrow"
    assert examples.target(tmp_path / "00_x.png", "cat") == "arrow"
    assert examples.target(tmp_path / "01_y.png", "cat") == "cat"
    assert examples.target(other, "arrow") == ""  # what an example filled in goes with it
    assert examples.target(other, "cat") == "cat"  # what the visitor typed stays
    assert examples.target(None, "cat") == "cat"
