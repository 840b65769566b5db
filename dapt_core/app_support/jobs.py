"""A one-at-a-time training queue: jobs wait in line with a visible position, report progress, can be cancelled."""

from __future__ import annotations

import logging
import math
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dapt_core.app_support.errors import DISK_FULL, QueueFullError, disk_full
from dapt_core.viz.figure import FIGURE_DPI
from dapt_core.train import TrainingCancelled

log = logging.getLogger(__name__)

FINISHED = ("done", "failed", "cancelled")  # states a job never leaves
LOSS_TERMS = ("total", "ce", "triplet", "foreground", "background")  # keys of dapt_losses, drawn in this order
LOSS_FIGURE_SIZE_IN = (5.0, 2.6)


@dataclass(frozen=True)
class JobView:
    """One consistent reading of a job's progress."""

    state: str  # waiting, running, done, failed, cancelled
    steps: list[dict]  # one per finished training step
    message: str  # the latest status line
    result: object  # the runner's return value once done
    error: str | None  # why it failed
    version: int  # the job's change counter when read

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


@dataclass(eq=False)  # a job is equal only to itself
class TrainJob:
    """One training request and everything a watcher shows about it."""

    owner: str  # who may cancel it (the visitor's session)
    request: object  # what to train (the runner's argument)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "waiting"  # waiting, running, done, failed, cancelled
    steps: list[dict] = field(default_factory=list)  # one per training step: epoch, step, lr, loss terms
    message: str = ""  # the latest human-readable status line
    result: object = None  # what the runner returned
    error: str | None = None  # why it failed, for the user
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    version: int = 0  # bumped on every change, so watchers know when to redraw
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def update(self, **changes) -> None:
        with self._changed:
            for name, value in changes.items():
                setattr(self, name, value)
            self.version += 1
            self._changed.notify_all()

    def add_step(self, record: dict) -> None:
        with self._changed:
            self.steps.append(record)
            self.version += 1
            self._changed.notify_all()

    def snapshot(self) -> JobView:
        """A consistent copy of what a watcher shows (the job keeps changing on the worker thread)."""
        with self._changed:
            return JobView(self.state, list(self.steps), self.message, self.result, self.error, self.version)

    def wait(self, seen_version: int, timeout: float) -> int:
        """Blocks until the job changes after ``seen_version`` or ``timeout`` seconds pass; returns the version."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != seen_version, timeout)
            return self.version


class TrainingQueue:
    """Runs training jobs one at a time, first come first served, on one worker thread.

    ``runner(job)`` does the work: it reads ``job.request``, reports through ``job.add_step`` / ``job.update``,
    checks ``job.cancel`` and returns the result. Anything it raises marks the job failed; ``ValueError`` and
    ``TrainingCancelled`` carry messages meant for the user, a full disk is said as such (:data:`DISK_FULL`),
    other errors are logged with their traceback.
    """

    def __init__(self, runner: Callable[[TrainJob], object], max_waiting: int = 8) -> None:
        self.runner = runner
        self.max_waiting = max_waiting
        self._pending: list[TrainJob] = []
        self._running: TrainJob | None = None
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None

    def submit(self, owner: str, request: object) -> TrainJob:
        """Puts a job in line (starting the worker if needed) and returns it for watching.

        Raises:
            QueueFullError: ``max_waiting`` jobs are waiting already.
        """
        with self._cond:
            if len(self._pending) >= self.max_waiting:
                raise QueueFullError(f"{len(self._pending)} training jobs are waiting already; try again later")
            job = TrainJob(owner, request)
            self._pending.append(job)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="dapt-train-worker", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        return job

    def position(self, job: TrainJob) -> int:
        """Jobs that run before ``job`` (the running one included); 0 once it runs or ended."""
        with self._cond:
            if job not in self._pending:
                return 0
            return self._pending.index(job) + (self._running is not None)

    def cancel(self, owner: str) -> int:
        """Cancels every job of ``owner``, waiting or running; returns how many."""
        with self._cond:
            waiting = [j for j in self._pending if j.owner == owner]
            self._pending = [j for j in self._pending if j.owner != owner]
            running = self._running if self._running is not None and self._running.owner == owner else None
        for job in waiting:
            job.cancel.set()
            job.update(state="cancelled", message="Cancelled before it started.")
        if running is not None:
            running.cancel.set()
            running.update(message="Cancelling after the current step…")
        return len(waiting) + (running is not None)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
                job = self._running = self._pending.pop(0)
            job.update(state="running", message="Preparing the data…")
            self._run(job)
            with self._cond:
                self._running = None
                self._cond.notify_all()

    def _run(self, job: TrainJob) -> None:
        try:
            if job.cancel.is_set():
                raise TrainingCancelled("cancelled before it started")
            result = self.runner(job)
            job.update(state="done", result=result, message="Finished.")
        except TrainingCancelled as err:
            job.update(state="cancelled", message=f"Training cancelled ({err}); nothing was saved.")
        except ValueError as err:
            log.warning("training job %s refused: %s", job.id, err)
            job.update(state="failed", error=str(err), message=f"Training failed: {err}")
        except Exception as err:  # the worker must survive any failure of one job
            if disk_full(err):  # the save is atomic: the user folder holds no part of this job's set
                log.error("training job %s failed, the disk is full: %s", job.id, err)
                job.update(state="failed", error=DISK_FULL, message=f"Training failed: {DISK_FULL}")
                return
            log.exception("training job %s failed", job.id)
            job.update(state="failed", error=f"{type(err).__name__}: {err}",
                       message="Training failed with an internal error; the details are in the server log.")


def loss_figure(steps: list[dict], keys: tuple[str, ...] = LOSS_TERMS) -> Figure:
    """A small line chart of the loss terms per step; terms that stayed at zero (off in this phase) are left out.

    Returns:
        A matplotlib ``Figure`` with an Agg canvas (no pyplot, so any thread may draw one).
    """
    fig = Figure(figsize=LOSS_FIGURE_SIZE_IN, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = list(range(1, len(steps) + 1))
    for key in keys:
        values = [s.get(key, math.nan) for s in steps]
        if any(not math.isnan(v) and v != 0.0 for v in values):
            ax.plot(x, values, label=key, linewidth=1.2)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("loss", fontsize=8)
    ax.tick_params(labelsize=7)
    if ax.lines:
        ax.legend(fontsize=7, loc="upper right")
    ax.set_title("training losses", fontsize=9)
    return fig
