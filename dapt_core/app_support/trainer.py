"""The few-shot tuning tab's work: a visitor's form made into a training request, queued behind the others,
watched (place in line, epoch, losses) until the saved prompt set can be handed over, or cancelled."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np

from dapt_core.app_support.catalog import PromptCatalog
from dapt_core.app_support.errors import disk_full
from dapt_core.app_support.jobs import JobView, TrainingQueue, TrainJob, loss_figure
from dapt_core.app_support.startup import TempFiles
from dapt_core.app_support.training import TrainRequest, TrainResult, run_training
from dapt_core.app_support.uploads import add_labelled_images, extract_labelled_zip, folder_summary
from dapt_core.app_support.user_masks import UserMasks
from dapt_core.attention.descriptions import DEFAULT_METHOD
from dapt_core.backbones import Backbone
from dapt_core.train import StepReport
from dapt_core.viz.figure import figure_to_array

FORM_SOURCES = ("synthetic", "zip", "images")  # where the form's labelled images come from
WAITING_TEXT = "Starting…"  # shown while a job at the head of the line is about to run
NO_DOWNLOAD_COPY = (" No copy to download could be made (the server's disk is full); the set itself is saved "
                    "and listed.")


class TrainProgress(NamedTuple):
    """What a watcher of one training job shows, in the order of the app's outputs."""

    text: str  # markdown status: place in line, status line and latest step, or what was saved
    plot: np.ndarray | None  # (h, w, 3) uint8 loss chart once there are steps
    metrics: dict | None  # held-out accuracy (percent) per split, with the evaluation note and key, once done
    download: str | None  # path of a copy of the saved prompt set, once done


def request_from_form(source: str, archive: Path | None, learner: str, cue: str, shots: float, epochs: float,
                      name: str | None, seed: float, folder: Path | None, workdir: Path,
                      reviewed_masks: Callable[[Path, Path], Path] | None = None,
                      cue_method: str | None = None) -> TrainRequest:
    """A checked :class:`TrainRequest` from the tab's fields; a zip is extracted into ``workdir/images``.

    Args:
        source: one of :data:`FORM_SOURCES`: the synthetic task, an uploaded zip, or images added class by class.
        archive: the uploaded zip (source "zip").
        folder: the visitor's image folder (source "images").
        name: the new prompt set's name; empty: ``<learner>-<cue>-<shots>shot``.
        reviewed_masks: for the mask cue on a zip or folder, ``(image root, mask root) -> mask root`` writing
            the masks the visitor reviewed (:meth:`UserMasks.reviewed`).
        cue_method: the attribution method whose maps make the gradcam cue's masks; None: Grad-CAM, the
            official one (the other cues use none).

    Raises:
        ValueError: a missing zip, an unknown source, or a request that cannot run (:meth:`TrainRequest.validate`).
    """
    shots, epochs, seed = (_whole_number(v, n) for v, n in ((shots, "shots"), (epochs, "epochs"), (seed, "seed")))
    data = None
    if source == "zip":
        if archive is None:
            raise ValueError("Upload a zip with one folder of images per class first.")
        data = extract_labelled_zip(archive, workdir / "images")
    elif source == "images":
        data = folder
    elif source != "synthetic":
        raise ValueError(f"unknown data source {source!r}; choose from {', '.join(FORM_SOURCES)}")
    masks = None
    if cue == "mask" and data is not None and reviewed_masks is not None:
        masks = reviewed_masks(data, workdir / "masks")
    req = TrainRequest(source="synthetic" if source == "synthetic" else "folder", learner=learner, cue=cue,
                       shots=shots, epochs=epochs, folder=data, seed=seed,
                       name=(name or "").strip() or f"{learner}-{cue}-{shots}shot", masks=masks,
                       cam_method=cue_method or DEFAULT_METHOD)
    req.validate()
    return req


def _whole_number(value: object, name: str) -> int:
    """A form's number (a slider sends 2.0) as an int; anything else (text, NaN, infinity, 2.5) is refused."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def progress_text(view: JobView, ahead: int, epochs: int) -> str:
    """The status of a job: its place in line while waiting, what was saved once done, else the latest status
    line with (while running) the epoch, step and total loss of the last step."""
    if view.state == "waiting":
        return f"Waiting for the trainer: **{ahead}** job(s) ahead of yours." if ahead else WAITING_TEXT
    if view.state == "done":
        result: TrainResult = view.result
        return (f"Saved **{result.key}** ({len(result.classnames)} classes). It is listed in the compare tab now. "
                f"{result.note}.")
    line = view.message
    if view.steps and view.state == "running":
        s = view.steps[-1]
        line += (f"\n\nEpoch {s['epoch'] + 1}/{epochs}, step {s['step'] + 1}/{s['steps']}, "
                 f"loss {s.get('total', float('nan')):.4f}")
    return line


def step_record(report: StepReport) -> dict:
    """What a job keeps of one training step: epoch, step, steps per epoch, learning rate and each loss term."""
    return {"epoch": report.epoch, "step": report.step, "steps": report.steps_per_epoch, "lr": report.lr,
            **report.losses}


class TrainingService:
    """Trains one job at a time on the shared backbone for every visitor; each visitor watches their own.

    Args:
        max_waiting: jobs that may wait in line (more are refused with :class:`QueueFullError`).
        redraw_s: a watcher redraws at most once per this many seconds, however fast the steps come.
        masks: the visitors' reviewed masks, for the mask cue on their own images (None: not offered).
    """

    def __init__(self, backbone: Backbone, catalog: PromptCatalog, files: TempFiles, *, max_waiting: int,
                 redraw_s: float, masks: UserMasks | None = None) -> None:
        self.backbone = backbone
        self.masks = masks
        self.catalog = catalog
        self.files = files
        self.redraw_s = redraw_s
        self.queue = TrainingQueue(self._run_job, max_waiting=max_waiting)

    def _run_job(self, job: TrainJob) -> TrainResult:
        request, workdir = job.request
        return run_training(request, self.backbone, self.catalog, workdir,
                            on_step=lambda report: job.add_step(step_record(report)), cancel=job.cancel,
                            status=lambda message: job.update(message=message))

    def add_images(self, files: list[Path], classname: str, folder: Path | None) -> tuple[Path, str]:
        """Adds images under a class name to a visitor's image folder (a new one when None); returns the folder
        and a summary line.

        Raises:
            UploadError: no class name, no files, or a file that is not a readable image.
        """
        root = folder if folder is not None else self.files.new_dir() / "images"
        add_labelled_images(files, classname, root)
        return root, folder_summary(root)

    def submit(self, owner: str, source: str, archive: Path | None, learner: str, cue: str, shots: float,
               epochs: float, name: str | None, seed: float, folder: Path | None,
               mask_segmenter: str | None = None, cue_method: str | None = None) -> TrainJob:
        """Checks the form (see :func:`request_from_form`) and puts the job in line for ``owner``; the mask
        cue on a zip or folder trains on the masks ``mask_segmenter`` made and the visitor reviewed, the
        gradcam cue on ``cue_method``'s maps.

        Raises:
            ValueError: the form cannot be trained on. QueueFullError: too many jobs wait already.
        """
        workdir = self.files.new_dir()
        reviewed = None
        if self.masks is not None and mask_segmenter:
            def reviewed(images: Path, mask_root: Path) -> Path:
                return self.masks.reviewed(images, mask_root, mask_segmenter)
        req = request_from_form(source, archive, learner, cue, shots, epochs, name, seed, folder, workdir,
                                reviewed, cue_method)
        return self.queue.submit(owner, (req, workdir))

    def watch(self, job: TrainJob) -> Iterator[TrainProgress]:
        """Yields the job's progress whenever it changes (and while it waits, as its place moves) until it
        ends. Closing the generator early (the visitor left) cancels the job: nobody would see its result.

        Raises:
            ValueError: the job failed; the message is for the visitor.
        """
        view, shown = job.snapshot(), -1
        try:
            while True:
                if view.version != shown or view.state == "waiting":
                    yield self.progress(job, view)
                    shown = view.version
                if view.finished:
                    break
                time.sleep(self.redraw_s)
                job.wait(view.version, self.redraw_s)
                view = job.snapshot()
        finally:
            if not view.finished:
                job.cancel.set()
        if view.state == "failed":
            raise ValueError(view.error)

    def progress(self, job: TrainJob, view: JobView) -> TrainProgress:
        """One drawing of ``view``: status text, loss chart, and once done the metrics and a download copy."""
        request: TrainRequest = job.request[0]
        ahead = self.queue.position(job) if view.state == "waiting" else 0
        text = progress_text(view, ahead, request.epochs)
        if view.state == "waiting":
            return TrainProgress(text, None, None, None)
        plot = figure_to_array(loss_figure(view.steps)) if view.steps else None
        if view.state != "done":
            return TrainProgress(text, plot, None, None)
        result: TrainResult = view.result
        metrics = {**result.metrics, "evaluation": result.note, "key": result.key}
        download = None
        try:
            download = self.files.new_dir() / result.path.name
            shutil.copyfile(result.path, download)
        except OSError as err:  # the set is saved: saying that nothing was saved would be wrong
            if not disk_full(err):
                raise
            if download is not None:
                download.unlink(missing_ok=True)
            return TrainProgress(text + NO_DOWNLOAD_COPY, plot, metrics, None)
        return TrainProgress(text, plot, metrics, str(download))

    def cancel(self, owner: str) -> str:
        """Cancels ``owner``'s jobs, waiting or running; says whether there was any."""
        cancelled = self.queue.cancel(owner)
        return "Cancelling…" if cancelled else "No training job of yours is waiting or running."
