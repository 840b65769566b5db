"""A whole grid: plan the cells, make the missing DAPT-S masks, run the unfinished cells, write the tables.

Everything a run writes lies under its output folder ``OUT``:

- ``OUT/<setting>/<data set>/<method>/<variant>/seed<k>/``: one folder per cell (see :mod:`dapt_core.grid.cells`);
- ``OUT/masks/<data set>/``: DAPT-S masks, unless the config names a ``mask_root``;
- ``OUT/<setting>/results.md`` and ``results.csv``: the tables (:mod:`dapt_core.grid.aggregate`);
- ``OUT/<setting>/<figure>.png``: the figure (:mod:`dapt_core.grid.plots`);
- ``OUT/<setting>/run_report.json``: what the last invocation ran, skipped and why trials failed.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from dapt_core.fileio import atomic_path
from dapt_core.grid.aggregate import build_tables, to_csv, to_markdown
from dapt_core.grid.cells import Cell, expand, plan, read_finished
from dapt_core.grid.config import GridConfig
from dapt_core.grid.engine import RunReport, TrialResources, ray_session, run_jobs
from dapt_core.grid.masks import mask_jobs, missing_images, run_mask_job
from dapt_core.grid.methods import get_method
from dapt_core.grid.plots import plot_tables
from dapt_core.grid.trial import run_cell, with_threads, write_json

log = logging.getLogger(__name__)

STEPS = ("masks", "train", "aggregate")
RESULTS_MD = "results.md"
RESULTS_CSV = "results.csv"
RUN_REPORT = "run_report.json"


@dataclass
class GridReport:
    """What one invocation of a grid did."""

    setting: str
    out: str
    total: int  # cells in the grid
    already_finished: list[str] = field(default_factory=list)  # skipped: finished by an earlier invocation
    ran: list[str] = field(default_factory=list)  # finished by this invocation
    failed: dict[str, str] = field(default_factory=dict)  # cell or mask job -> its last error
    masks: dict[str, Any] = field(default_factory=dict)  # mask job -> what it wrote
    outputs: list[str] = field(default_factory=list)  # tables and figure
    seconds: float = 0.0


def trial_resources(cfg: GridConfig) -> TrialResources:
    """What one trial holds on Ray, from the config's ``resources``."""
    return TrialResources(num_cpus=cfg.resources.num_cpus, num_gpus=cfg.resources.num_gpus)


def datasets_of(cells: list[Cell]) -> list[str]:
    return list(dict.fromkeys(c.dataset for c in cells))


def write_summary(cfg: GridConfig, cells: list[Cell], out: str | Path) -> list[Path]:
    """Writes the setting's tables (Markdown, CSV) and figure from the finished cells; returns their paths."""
    records = [r for r in (read_finished(c) for c in cells) if r is not None]
    datasets = datasets_of(cells)
    tables = build_tables(cfg, records, datasets)
    folder = Path(out) / cfg.setting
    written = []
    for name, text in ((RESULTS_MD, to_markdown(cfg, tables, datasets)), (RESULTS_CSV, to_csv(cfg, tables))):
        with atomic_path(folder / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written.append(folder / name)
    if records:
        written.append(plot_tables(cfg, tables, folder))
    log.info("grid tables from %d finished cell(s) of %d: %s", len(records), len(cells),
             ", ".join(str(p) for p in written))
    return written


def _make_masks(cfg: GridConfig, todo: list[Cell], report: GridReport, run: Callable[..., RunReport]) -> set[str]:
    """Runs the mask jobs that have images without masks; returns the data sets whose job failed."""
    jobs = [job for job in mask_jobs(cfg, todo) if missing_images(job)]
    result = run(run_mask_job, {job.key: job for job in jobs}, desc="masks")
    report.masks.update(result.results)
    report.failed.update(result.failed)
    return {key.split("/", 1)[1] for key in result.failed}


def _train(todo: list[Cell], blocked: set[str], trial: Callable[[Cell], dict], report: GridReport,
           run: Callable[..., RunReport]) -> None:
    """Runs the cells to run, except the mask-cue cells of data sets whose masks failed (reported)."""
    runnable = []
    for cell in todo:
        if cell.dataset in blocked and get_method(cell.method).cue == "mask":
            report.failed[cell.key] = f"not run: the masks of {cell.dataset} failed"
        else:
            runnable.append(cell)
    result = run(trial, {c.key: c for c in runnable}, desc="trials")
    report.ran = sorted(result.results)
    report.failed.update(result.failed)


def run_grid(cfg: GridConfig, out: str | Path, *, backend: str = "ray", address: str | None = None,
             resources: TrialResources | None = None, max_retries: int | None = None,
             steps: tuple[str, ...] = STEPS, trial: Callable[[Cell], dict] = run_cell,
             progress: bool = True) -> GridReport:
    """Runs every unfinished cell of the grid and writes its tables.

    Args:
        cfg: the checked grid config.
        out: the output folder.
        backend: ``ray`` or ``sequential`` (see :func:`dapt_core.grid.engine.run_jobs`).
        address: Ray cluster to join; None starts a local Ray (unless one is initialised already).
        resources: per trial; default: the config's.
        max_retries: default: the config's.
        steps: which of masks, train, aggregate to do.
        trial: the function that runs one cell (:func:`dapt_core.grid.trial.run_cell`; tests wrap it).
        progress: show progress bars.

    Returns:
        What ran, what was skipped, what failed and why, and the files written.

    Raises:
        GridConfigError: a cell folder holds a run with other settings (nothing runs).
        ValueError: an unknown step or backend, or per-trial resources the cluster cannot give.
    """
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown grid step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    started = time.perf_counter()
    out = Path(out)
    cells = expand(cfg, out)
    finished, todo = plan(cells)
    report = GridReport(cfg.setting, str(out), len(cells), already_finished=[c.key for c in finished])
    log.info("grid %s: %d cells, %d finished before, %d to run", cfg.setting, len(cells), len(finished), len(todo))
    options = {"backend": backend, "resources": resources or trial_resources(cfg), "address": address,
               "max_retries": cfg.max_retries if max_retries is None else max_retries, "progress": progress}

    threads = max(1, int(options["resources"].num_cpus))

    def run(fn, jobs, desc):
        return run_jobs(partial(with_threads, fn, threads), jobs, desc=desc, **options)

    busy = ("masks" in steps and cfg.needs_masks) or ("train" in steps and todo)
    with ray_session(address) if backend == "ray" and busy else nullcontext():
        blocked: set[str] = set()
        if "masks" in steps and cfg.needs_masks:
            blocked = _make_masks(cfg, todo, report, run)
        if "train" in steps:
            _train(todo, blocked, trial, report, run)
    if "aggregate" in steps:
        report.outputs = [str(p) for p in write_summary(cfg, cells, out)]
    report.seconds = round(time.perf_counter() - started, 3)
    write_json(out / cfg.setting / RUN_REPORT, asdict(report))
    return report


def report_lines(report: GridReport) -> list[str]:
    """A human summary of a grid report, a line each."""
    lines = [f"{report.setting}: {report.total} cells; {len(report.already_finished)} finished before, "
             f"{len(report.ran)} run now, {len(report.failed)} failed ({report.seconds:.1f} s)"]
    lines += [f"  failed {key}: {error}" for key, error in sorted(report.failed.items())]
    lines += [f"  wrote {path}" for path in report.outputs]
    return lines


def report_json(report: GridReport) -> str:
    return json.dumps(asdict(report))
