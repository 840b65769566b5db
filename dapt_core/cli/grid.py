"""``python -m dapt_core grid CONFIG``: the paper's experiments as one grid of training runs, on Ray.

CONFIG is a YAML file or a preset (few_shot, base_to_novel, data_efficient). Each cell trains, evaluates and
writes its prompt set and metrics into its own folder under --out; re-running skips the finished cells and
resumes the interrupted ones; the tables and the figure are written at the end. ``--dry-run`` prints the
number of runs and an estimate of their time from a short calibration, and runs nothing.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dapt_core.cli.common import print_json

log = logging.getLogger(__name__)

DESCRIPTION = ("Run data sets x shots x seeds x methods (x selection fractions) from a YAML config or a preset "
               "on Ray. Each cell writes its prompt set and metrics into its own folder under --out; a re-run "
               "skips finished cells and resumes interrupted ones; the tables (Markdown, CSV) and the figure "
               "are written at the end, the published figures beside ours.")
STEPS = {"all": ("masks", "train", "aggregate"), "masks": ("masks",), "train": ("train", "aggregate"),
         "aggregate": ("aggregate",)}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``grid`` to the ``python -m dapt_core`` parser."""
    p = sub.add_parser("grid", help="run a grid of training runs (the paper's settings) on Ray",
                       description=DESCRIPTION)
    p.add_argument("config", help="grid config (YAML) or preset: few_shot, base_to_novel, data_efficient")
    p.add_argument("--out", default=None, help="output folder (default: the config's `out`)")
    p.add_argument("--data-root", default=None, help="CoOp's DATA folder (overrides the config's data_root)")
    p.add_argument("--mask-root", default=None, help="DAPT-S mask folder, one tree per data set "
                                                      "(default: the config's, else OUT/masks)")
    p.add_argument("--dry-run", action="store_true", help="count the runs, estimate their time, run nothing")
    p.add_argument("--no-calibration", action="store_true", help="with --dry-run: count only, no timing")
    p.add_argument("--step", choices=tuple(STEPS), default="all",
                   help="masks (DAPT-S masks only), train (then the tables), aggregate (tables only), or all")
    p.add_argument("--ray-address", default=None,
                   help="join an existing Ray cluster (auto, HOST:PORT, ray://HOST:10001); default: start a "
                        "local Ray with every core and GPU of this machine")
    p.add_argument("--sequential", action="store_true", help="no Ray: one run after another in this process")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs per trial (default: the config's)")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs per trial, 0.5 shares one (default: config)")
    p.add_argument("--max-retries", type=int, default=None, help="runs of a failed trial after the first")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace):
    from dapt_core.grid.config import GridConfigError, load_config

    cfg = load_config(args.config, {"data_root": args.data_root, "mask_root": args.mask_root, "out": args.out})
    if args.max_retries is not None and args.max_retries < 0:
        raise GridConfigError(f"--max-retries must be >= 0, got {args.max_retries}")
    if args.num_cpus is not None and not args.num_cpus > 0:
        raise GridConfigError(f"--num-cpus must be > 0, got {args.num_cpus}")
    if args.num_gpus is not None and not args.num_gpus >= 0:
        raise GridConfigError(f"--num-gpus must be >= 0, got {args.num_gpus}")
    if args.num_cpus is not None:
        cfg.resources.num_cpus = args.num_cpus
    if args.num_gpus is not None:
        cfg.resources.num_gpus = args.num_gpus
    if not cfg.out:
        raise GridConfigError("no output folder: pass --out DIR or set `out` in the config")
    return cfg


def duration(seconds: float) -> str:
    """A readable length of time: seconds, minutes or hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def dry_run(cfg, args: argparse.Namespace) -> int:
    """Prints the grid's size, what is finished, and (unless --no-calibration) the time estimate."""
    from dapt_core.grid.calibrate import estimate, local_resources
    from dapt_core.grid.cells import expand, plan
    from dapt_core.grid.engine import cluster_resources, ray_session
    from dapt_core.grid.masks import mask_jobs
    from dapt_core.grid.runner import trial_resources

    cells = expand(cfg, cfg.out)
    finished, todo = plan(cells)
    axes = [f"{len(cfg.datasets)} data sets", f"{len(cfg.methods)} methods", f"{len(cfg.shots)} shot counts"]
    if cfg.setting == "data_efficient":
        axes += [f"{len(cfg.selection_methods)} selection methods", f"{len(cfg.fractions)} fractions"]
    print(f"{cfg.setting}: {len(cells)} runs ({' x '.join(axes + [f'{len(cfg.seeds)} seeds'])}); "
          f"{len(finished)} finished, {len(todo)} to run; {len(mask_jobs(cfg, todo))} mask job(s)")
    result = {"setting": cfg.setting, "runs": len(cells), "finished": len(finished), "to_run": len(todo)}
    if not args.no_calibration and todo:
        if args.ray_address and not args.sequential:
            with ray_session(args.ray_address) as ray:
                total = cluster_resources(ray)
        else:
            total = local_resources()
        est = estimate(cfg, todo, trial_resources(cfg), {"CPU": 1.0, "GPU": 0.0} if args.sequential else total)
        for method, points in est.timings.items():
            shown = ", ".join(f"{t.train_seconds:.4f} s train / {t.eval_seconds:.4f} s eval per image at "
                              f"{t.n_classes} classes" for t in points)
            print(f"  calibration {method}: {shown}")
        print(f"estimated {duration(est.total_seconds)} of trial time; {est.parallel} trial(s) at once "
              f"-> about {duration(est.wall_seconds)}" + (" (mask jobs not included)" if cfg.needs_masks else ""))
        result.update(trial_hours=round(est.total_seconds / 3600, 3), parallel=est.parallel,
                      wall_hours=round(est.wall_seconds / 3600, 3))
    print_json(result)
    return 0


def run(args: argparse.Namespace) -> int:
    """Runs (or, with --dry-run, sizes) the grid; prints what ran and failed, then one JSON line."""
    from dapt_core.grid.runner import report_lines, run_grid

    cfg = _config(args)
    if args.dry_run:
        return dry_run(cfg, args)
    report = run_grid(cfg, Path(cfg.out), backend="sequential" if args.sequential else "ray",
                      address=args.ray_address, max_retries=args.max_retries, steps=STEPS[args.step])
    for line in report_lines(report):
        print(line)
    print_json({"setting": report.setting, "out": report.out, "runs": report.total,
                "finished_before": len(report.already_finished), "ran": len(report.ran),
                "failed": len(report.failed), "outputs": report.outputs})
    return 1 if report.failed else 0
