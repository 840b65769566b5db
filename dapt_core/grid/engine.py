"""Runs independent jobs on Ray (tasks with retries), or one after another in this process.

Ray is the engine, not a scheduler of ours: each job is a Ray task holding ``num_cpus`` CPUs and
``num_gpus`` GPUs; a task whose worker dies (killed, out of memory) or that raises runs again up to
``max_retries`` times (Ray's ``max_retries`` and ``retry_exceptions``), then its error is reported and the
other jobs go on. By default a local Ray instance is started with every core and GPU of this machine;
``address`` joins an existing cluster (``auto``, ``HOST:PORT`` or ``ray://HOST:10001``). The sequential
mode runs the same function in this process with the same retries, for debugging and for comparison.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

BACKENDS = ("ray", "sequential")
LOCAL = "local"  # ray.init's address for a new local instance


AUTO = "auto"


@dataclass
class TrialResources:
    num_cpus: float = 1.0  # CPU cores one job holds
    num_gpus: float | str = AUTO  # GPUs one job holds (a fraction shares a GPU); auto: 1 if the cluster has one


def resolve_resources(resources: TrialResources, total: Mapping[str, float]) -> TrialResources:
    """``resources`` with ``auto`` GPUs made a number: one GPU per job where the cluster has any, else none."""
    if resources.num_gpus != AUTO:
        return resources
    return TrialResources(resources.num_cpus, 1.0 if total.get("GPU", 0) >= 1 else 0.0)


@dataclass
class RunReport:
    """What a run of jobs did."""

    results: dict[str, Any] = field(default_factory=dict)  # key -> the function's return value
    failed: dict[str, str] = field(default_factory=dict)  # key -> the last error, after every retry
    seconds: float = 0.0


@contextmanager
def ray_session(address: str | None = None, **init_options) -> Iterator[Any]:
    """Ray, initialised for the block: the running instance if there is one (left running), else a new
    local one or a connection to ``address`` (shut down at the end)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(address=address or LOCAL, **init_options)
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_resources(ray) -> dict[str, float]:
    """Total CPUs and GPUs of the cluster Ray is connected to."""
    total = ray.cluster_resources()
    return {"CPU": float(total.get("CPU", 0)), "GPU": float(total.get("GPU", 0))}


def check_fits(resources: TrialResources, total: Mapping[str, float]) -> None:
    """Raises ValueError when no node could ever give one job its resources (Ray would wait forever)."""
    if resources.num_cpus > total.get("CPU", 0):
        raise ValueError(f"a trial asks for {resources.num_cpus:g} CPUs but the cluster has {total.get('CPU', 0):g}")
    if resources.num_gpus > total.get("GPU", 0):
        raise ValueError(f"a trial asks for {resources.num_gpus:g} GPUs but the cluster has {total.get('GPU', 0):g}; "
                         "use num_gpus 0 (--num-gpus 0) to train on CPUs")


def describe_error(err: BaseException) -> str:
    """One line for a report: the original exception of a Ray task error, else the error itself."""
    cause = getattr(err, "cause", None)
    shown = cause if isinstance(cause, BaseException) else err
    text = str(shown).strip().splitlines()
    return f"{type(shown).__name__}: {text[-1] if text else ''}".rstrip(": ")


def call(fn: Callable[[Any], Any], payload: Any) -> Any:
    """What a Ray task runs: ``fn(payload)`` (``fn`` travels as an argument, so it may be a partial)."""
    return fn(payload)


def _run_sequential(fn: Callable[[Any], Any], jobs: Mapping[str, Any], max_retries: int,
                    report: RunReport, bar) -> None:
    for key, payload in jobs.items():
        for attempt in range(max_retries + 1):
            try:
                report.results[key] = fn(payload)
                break
            except Exception as err:  # a failed job is retried, then reported; the others go on
                log.warning("%s failed (attempt %d of %d): %s", key, attempt + 1, max_retries + 1, err,
                            exc_info=log.isEnabledFor(logging.DEBUG))
                if attempt == max_retries:
                    report.failed[key] = describe_error(err)
        bar.update(1)


def _run_ray(fn: Callable[[Any], Any], jobs: Mapping[str, Any], resources: TrialResources, max_retries: int,
             report: RunReport, bar, ray) -> None:
    total = cluster_resources(ray)
    resources = resolve_resources(resources, total)
    check_fits(resources, total)
    log.info("Ray cluster: %g CPUs, %g GPUs; each trial holds %g CPUs and %g GPUs", total["CPU"], total["GPU"],
             resources.num_cpus, resources.num_gpus)
    remote = ray.remote(call).options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
                                      max_retries=max_retries, retry_exceptions=True)
    refs = {remote.remote(fn, payload): key for key, payload in jobs.items()}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            key = refs[ref]
            try:
                report.results[key] = ray.get(ref)
            except Exception as err:  # RayTaskError, WorkerCrashedError, ... after every retry
                report.failed[key] = describe_error(err)
                log.warning("%s failed after %d attempt(s): %s", key, max_retries + 1, report.failed[key])
            bar.update(1)


def run_jobs(fn: Callable[[Any], Any], jobs: Mapping[str, Any], *, backend: str = "ray",
             resources: TrialResources | None = None, max_retries: int = 2, address: str | None = None,
             progress: bool = True, desc: str = "trials") -> RunReport:
    """Runs ``fn(payload)`` for every job and collects the results.

    Args:
        fn: a function of one payload, or a partial of one (it is pickled to the workers: a module-level
            function travels by reference, so the workers must be able to import its module).
        jobs: key -> payload; keys name the jobs in the report.
        backend: ``ray`` or ``sequential`` (this process, one job after another).
        resources: what one job holds on Ray.
        max_retries: how often a failed job runs again before it is reported.
        address: Ray cluster to join; None starts a local instance (unless Ray is already initialised).
        progress: show a tqdm bar of finished jobs.

    Returns:
        The results of the jobs that succeeded and the errors of those that failed.

    Raises:
        ValueError: an unknown backend, or resources no node of the cluster has.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    started = time.perf_counter()
    report = RunReport()
    with tqdm(total=len(jobs), desc=desc, unit="run", disable=not progress or not jobs) as bar:
        if backend == "sequential":
            _run_sequential(fn, jobs, max_retries, report, bar)
        elif jobs:
            with ray_session(address) as ray:
                _run_ray(fn, jobs, resources or TrialResources(), max_retries, report, bar, ray)
    report.seconds = time.perf_counter() - started
    return report
