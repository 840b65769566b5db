"""The few-shot tuning tab without a UI: the form made into a request, the progress a visitor sees, and a
watcher that leaves cancelling its job."""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dapt_core import app_support as support
from dapt_core.app_support import trainer
from dapt_core.train import StepReport, TrainingCancelled


def _form(tmp_path, source="synthetic", archive=None, cue="mask", shots=2.0, epochs=3.0, name="", seed=5.0,
          folder=None):
    return support.request_from_form(source, archive, "coop", cue, shots, epochs, name, seed, folder,
                                     tmp_path / "work")


def test_the_form_becomes_a_checked_request(tmp_path):
    req = _form(tmp_path)
    assert (req.source, req.learner, req.cue, req.shots, req.epochs, req.seed, req.folder, req.name) == \
        ("synthetic", "coop", "mask", 2, 3, 5, None, "coop-mask-2shot")
    assert type(req.shots) is int and type(req.seed) is int  # sliders and number boxes send floats
    assert _form(tmp_path, name="  my pets  ").name == "my pets"
    with pytest.raises(ValueError, match="Upload a zip"):
        _form(tmp_path, source="zip")
    with pytest.raises(ValueError, match=r"unknown data source 'web'; choose from synthetic, zip, images$"):
        _form(tmp_path, source="web")
    with pytest.raises(support.UploadError, match="no labelled images"):
        _form(tmp_path, source="images", cue="off")
    with pytest.raises(ValueError, match="shots must be between"):
        _form(tmp_path, shots=0)
    assert _form(tmp_path).cam_method == "gradcam"  # the official cue when the form names none
    req = support.request_from_form("synthetic", None, "coop", "gradcam", 1, 1, "", 1, None, tmp_path / "w",
                                    cue_method="layercam")
    assert req.cam_method == "layercam"
    with pytest.raises(ValueError, match="unknown DAPT cue method 'nope'"):  # refused before it is queued
        support.request_from_form("synthetic", None, "coop", "gradcam", 1, 1, "", 1, None, tmp_path / "w",
                                  cue_method="nope")


def test_a_zip_is_unpacked_into_the_jobs_folder(tmp_path):
    png = tmp_path / "x.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(png)
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for member in ("cat/1.png", "dog/1.png"):
            zf.write(png, member)
    req = _form(tmp_path, source="zip", archive=archive, cue="off")
    assert req.source == "folder" and req.folder == tmp_path / "work" / "images"
    assert support.describe_folder(req.folder) == {"cat": 1, "dog": 1}
    with pytest.raises(ValueError, match="needs their masks: press Make masks"):
        _form(tmp_path / "again", source="zip", archive=archive, cue="mask")


def _view(state, steps=(), message="", result=None, error=None):
    return support.JobView(state, list(steps), message, result, error, 1)


def test_progress_text_for_each_state(tmp_path):
    assert support.progress_text(_view("waiting"), 2, 3) == "Waiting for the trainer: **2** job(s) ahead of yours."
    assert support.progress_text(_view("waiting"), 0, 3) == "Starting…"
    step = {"epoch": 1, "step": 4, "steps": 10, "lr": 0.002, "total": 1.23456}
    assert support.progress_text(_view("running", [step], "Training CoOp…"), 0, 3) == \
        "Training CoOp…\n\nEpoch 2/3, step 5/10, loss 1.2346"
    assert support.progress_text(_view("running", [], "Preparing the data…"), 0, 3) == "Preparing the data…"
    assert support.progress_text(_view("cancelled", [step], "Training cancelled."), 0, 3) == "Training cancelled."
    done = support.TrainResult("user/pets", tmp_path / "pets.safetensors", ["cat", "dog", "owl"], {}, "2 held out",
                               [])
    assert support.progress_text(_view("done", [step], result=done), 0, 3) == \
        "Saved **user/pets** (3 classes). It is listed in the compare tab now. 2 held out."


def test_step_record_keeps_the_position_rate_and_every_loss():
    report = StepReport(epoch=2, step=7, steps_per_epoch=9, lr=0.01, losses={"total": 1.5, "ce": 1.0})
    assert support.step_record(report) == {"epoch": 2, "step": 7, "steps": 9, "lr": 0.01, "total": 1.5, "ce": 1.0}


@pytest.fixture()
def service(monkeypatch, tiny_backbone, tmp_path):
    """A training service whose runner is a fake one that each test steers."""
    calls = {}

    def fake_run(req, backbone, catalog, workdir, *, on_step, cancel, status):
        calls.update(req=req, backbone=backbone, workdir=workdir, cancel=cancel)
        return calls["behaviour"](req, on_step, cancel, status, workdir)

    monkeypatch.setattr(trainer, "run_training", fake_run)
    catalog = support.PromptCatalog(tiny_backbone, tmp_path / "bundled", tmp_path / "user")
    svc = support.TrainingService(tiny_backbone, catalog, support.TempFiles(), max_waiting=2, redraw_s=0.01)
    svc.calls = calls
    return svc


def test_a_watcher_sees_the_steps_and_gets_the_saved_set(service, tiny_backbone):
    def behaviour(req, on_step, cancel, status, workdir):
        status("Training…")
        for i in range(3):
            on_step(StepReport(0, i, 3, 0.1, {"total": 3.0 - i, "ce": 1.0}))
        saved = workdir / "pets.safetensors"
        saved.write_bytes(b"prompt tensors")
        return support.TrainResult("user/pets", saved, ["cat", "dog"], {"held_out_accuracy": 50.0}, "2 held out",
                                   [])

    service.calls["behaviour"] = behaviour
    job = service.submit("alice", "synthetic", None, "coop", "off", 1.0, 1.0, "pets", 1.0, None)
    shown = list(service.watch(job))
    final = shown[-1]
    assert final.text.startswith("Saved **user/pets** (2 classes)")
    assert final.metrics == {"held_out_accuracy": 50.0, "evaluation": "2 held out", "key": "user/pets"}
    assert Path(final.download).read_bytes() == b"prompt tensors"
    assert Path(final.download).parent.parent == service.files.root and Path(final.download).name == \
        "pets.safetensors"
    assert final.plot.ndim == 3 and final.plot.dtype == np.uint8
    assert job.steps[-1] == {"epoch": 0, "step": 2, "steps": 3, "lr": 0.1, "total": 1.0, "ce": 1.0}
    assert service.calls["backbone"] is tiny_backbone and service.calls["req"].name == "pets"
    assert all(p.metrics is None and p.download is None for p in shown[:-1])


def test_a_failed_job_raises_its_message_for_the_visitor(service):
    def behaviour(req, on_step, cancel, status, workdir):
        raise ValueError("class 'dog' has no images")

    service.calls["behaviour"] = behaviour
    job = service.submit("bob", "synthetic", None, "coop", "off", 1.0, 1.0, "", 1.0, None)
    with pytest.raises(ValueError, match="^class 'dog' has no images$"):
        list(service.watch(job))


def test_a_watcher_that_leaves_cancels_its_job(service):
    started = threading.Event()

    def behaviour(req, on_step, cancel, status, workdir):
        started.set()
        status("Training…")
        if not cancel.wait(10):
            raise AssertionError("never cancelled")
        raise TrainingCancelled("stopped")

    service.calls["behaviour"] = behaviour
    job = service.submit("carol", "synthetic", None, "coop", "off", 1.0, 1.0, "", 1.0, None)
    watching = service.watch(job)
    next(watching)
    assert started.wait(10)
    assert not job.cancel.is_set()
    watching.close()  # what Gradio does when the visitor's page goes away
    assert job.cancel.is_set()
    deadline = time.monotonic() + 10
    while not job.finished:
        assert time.monotonic() < deadline, "the job never ended"
        job.wait(job.version, 0.1)
    assert job.state == "cancelled" and "nothing was saved" in job.message


def test_cancel_says_whether_there_was_a_job(service):
    assert service.cancel("nobody") == "No training job of yours is waiting or running."


def test_images_added_class_by_class_are_summed_up(service, tmp_path):
    png = tmp_path / "x.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(png)
    root, summary = service.add_images([png, png], "dog", None)
    assert root.parent.parent == service.files.root and summary == "Images so far: **dog** (2)"
    same, summary = service.add_images([png], "cat", root)
    assert same == root and summary == "Images so far: **cat** (1), **dog** (2)"
    assert support.folder_summary(None) == support.NO_IMAGES_YET == support.folder_summary(tmp_path / "none")
