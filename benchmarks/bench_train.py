"""One training step of CoOp, MaPLe and each with DAPT, in seconds and in units of one frozen image forward of
the same batch, measured in the same run; DAPT's cost over its base method as a ratio within the run.

    python benchmarks/bench_train.py [--backbone ViT-B-16-random] [--classes 37] [--batch 4] [--repeats 5]
                                     [--device cpu|cuda] [--paths fast plain] [--out FILE]

Random weights of the chosen architecture are enough for timing. ``coop+dapt`` and ``maple+dapt`` run the joint
schedule, so every term is computed (DAPT-S: the mask cue, masks given). The fast path is also timed in the two
phases of the official schedule: ``@triplet`` (epochs 0-6: the triplet term alone; over CoOp a constant, left out)
and ``@align`` (epochs 7-9: the foreground and background terms); their weighted mean over the official 10 epochs
is a whole official run's step over its base method's (``official_run_over_base``). The measurements are
interleaved (one round times every configuration once), so a change of
machine load hits all of them alike; each figure is the median over the rounds, with the fastest round and the
median CPU time of the process beside it (on a shared CPU these two move least with the load). On a GPU the
steps run under bf16 autocast and the benchmark also prints images per second and the peak GPU memory of each
configuration.
``--paths`` picks the exact fast paths, the plain reference paths (``learner.fast_paths = False`` and
``dapt_losses(..., fast=False)``: full-length text, every view with autograd, background prompts tokenised every
step; the code before issue 13 did the same work), or both, interleaved in one run (the default), so that each
step is also given as the plain path's step over the fast one's, in image forwards of that run. Prints one line
per configuration and a final JSON line (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dapt_core.backbones import load_backbone  # noqa: E402
from dapt_core.constants import OFFICIAL_EPOCHS, OFFICIAL_SWITCH_EPOCH  # noqa: E402
from dapt_core.learners import build_learner  # noqa: E402
from dapt_core.objective import DaptConfig, dapt_losses  # noqa: E402

# name -> (learner, DAPT cue, schedule, epoch); every one is timed on the paths asked for
CONFIGS = {"coop": ("coop", "off", "joint", 0), "coop+dapt": ("coop", "mask", "joint", 0),
           "maple": ("maple", "off", "joint", 0), "maple+dapt": ("maple", "mask", "joint", 0)}
# the official schedule's two phases, on the fast path only
PHASES = {f"{kind}+dapt@{phase}": (kind, "mask", "official", epoch) for kind in ("coop", "maple")
          for phase, epoch in (("triplet", 0), ("align", OFFICIAL_SWITCH_EPOCH))}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rounds(fns: dict[str, Callable[[], None]], repeats: int,
                 device: torch.device) -> dict[str, dict[str, float]]:
    """Per function, over ``repeats`` interleaved rounds after one warm-up call each: the median and the
    fastest wall-clock seconds, and the median CPU seconds of this process (every thread; on a shared CPU it
    counts only the time the step ran, not the time it waited for a core)."""
    for fn in fns.values():
        fn()
    _sync(device)
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: {"median": statistics.median(wall[name]), "min": min(wall[name]),
                   "cpu": statistics.median(cpu[name])} for name in fns}


def peak_gpu_mb(fn: Callable[[], None], device: torch.device) -> float | None:
    """Peak GPU memory (MiB) of one call, or None off the GPU."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def make_step(config: tuple[str, str, str, int], backbone, classnames, images, masks, labels,
              plain: bool) -> Callable[[], None]:
    """One optimiser step of a fresh learner (SGD, the official learning rate) at one epoch of a schedule."""
    kind, cue, schedule, epoch = config
    learner = build_learner(kind, backbone, classnames)
    if plain and hasattr(learner, "fast_paths"):
        learner.fast_paths = False
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.0035)
    cfg = DaptConfig(cue=cue, schedule=schedule)
    options = {"fast": False} if plain and "fast" in inspect.signature(dapt_losses).parameters else {}

    def step() -> None:
        with backbone.autocast():
            terms = dapt_losses(learner, images, masks, labels, epoch, cfg, OFFICIAL_EPOCHS, **options)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()

    return step


def _report(name: str, got: dict[str, float], unit: dict[str, float], results: dict, device: torch.device,
            batch: int, fn: Callable[[], None]) -> None:
    """Adds one configuration's figures to ``results`` and prints its line."""
    results.update({f"step_s/{name}": got["median"], f"step_units/{name}": got["median"] / unit["median"],
                    f"step_units_min/{name}": got["min"] / unit["min"],
                    f"step_units_cpu/{name}": got["cpu"] / unit["cpu"]})
    line = (f"one training step, {name:20s}: {got['median']:.3f} s = {got['median'] / unit['median']:.2f} "
            f"image forwards (fastest: {got['min'] / unit['min']:.2f}, CPU time: {got['cpu'] / unit['cpu']:.2f})")
    if device.type == "cuda":
        results[f"images_per_s/{name}"] = batch / got["median"]
        results[f"peak_gpu_mb/{name}"] = peak_gpu_mb(fn, device)
        line += f", {results[f'images_per_s/{name}']:.1f} images/s, peak {results[f'peak_gpu_mb/{name}']:.0f} MiB"
    print(line, flush=True)


def _ratios(results: dict, paths: list[str]) -> None:
    """DAPT over its base method per path, and the plain path's step over the fast one's (in image forwards)."""
    for path in paths:
        tag = "" if path == "fast" else "/plain"
        for kind in ("coop", "maple"):
            for suffix, key in (("", "step_s"), ("_min", "step_units_min"), ("_cpu", "step_units_cpu")):
                results[f"dapt_over_base{suffix}/{kind}{tag}"] = (results[f"{key}/{kind}+dapt{tag}"]
                                                                   / results[f"{key}/{kind}{tag}"])
            print(f"{kind}+dapt / {kind} ({path}): {results[f'dapt_over_base/{kind}{tag}']:.2f} (fastest: "
                  f"{results[f'dapt_over_base_min/{kind}{tag}']:.2f}, CPU time: "
                  f"{results[f'dapt_over_base_cpu/{kind}{tag}']:.2f})", flush=True)
    if "fast" in paths:
        _official_run(results)
    if set(paths) == {"fast", "plain"}:
        for name in CONFIGS:
            for suffix in ("", "_min", "_cpu"):
                results[f"plain_over_fast{suffix}/{name}"] = (results[f"step_units{suffix}/{name}/plain"]
                                                              / results[f"step_units{suffix}/{name}"])
            print(f"{name:11s}: plain / fast step {results[f'plain_over_fast/{name}']:.2f} (fastest: "
                  f"{results[f'plain_over_fast_min/{name}']:.2f}, CPU time: "
                  f"{results[f'plain_over_fast_cpu/{name}']:.2f})", flush=True)


def _official_run(results: dict) -> None:
    """Each learner's mean DAPT step over an official 10-epoch run (epochs before the switch in the triplet phase,
    the rest in the alignment phase), over its base method's step."""
    share = OFFICIAL_SWITCH_EPOCH / OFFICIAL_EPOCHS
    for kind in ("coop", "maple"):
        for suffix, key in (("", "step_s"), ("_min", "step_units_min"), ("_cpu", "step_units_cpu")):
            mean = (share * results[f"{key}/{kind}+dapt@triplet"] + (1 - share) * results[f"{key}/{kind}+dapt@align"])
            results[f"official_run_over_base{suffix}/{kind}"] = mean / results[f"{key}/{kind}"]
        print(f"{kind}+dapt / {kind} over an official run ({OFFICIAL_SWITCH_EPOCH} triplet + "
              f"{OFFICIAL_EPOCHS - OFFICIAL_SWITCH_EPOCH} alignment epochs, fast): "
              f"{results[f'official_run_over_base/{kind}']:.2f} (fastest: "
              f"{results[f'official_run_over_base_min/{kind}']:.2f}, CPU time: "
              f"{results[f'official_run_over_base_cpu/{kind}']:.2f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-B-16-random")
    parser.add_argument("--classes", type=int, default=37)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the GPU when there is one)")
    parser.add_argument("--paths", nargs="+", choices=("fast", "plain"), default=["fast", "plain"],
                        help="the fast paths, the plain reference paths, or both in one run (the default)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON line to this file")
    args = parser.parse_args()
    load_before = list(os.getloadavg())

    backbone = load_backbone(args.backbone, device=args.device)
    device, size = backbone.device, backbone.image_size
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, size, size, device=device)
    masks = (torch.rand(args.batch, 1, size, size, device=device) > 0.5).float()
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    classnames = [f"class {i}" for i in range(args.classes)]

    def frozen_forward() -> None:
        with torch.no_grad(), backbone.autocast():
            backbone.visual(images)

    fns: dict[str, Callable[[], None]] = {"frozen_image_forward": frozen_forward}
    for path in args.paths:
        for name, config in {**CONFIGS, **(PHASES if path == "fast" else {})}.items():
            fns[name + ("" if path == "fast" else "/plain")] = make_step(config, backbone, classnames, images, masks,
                                                                        labels, path == "plain")
    seconds = timed_rounds(fns, args.repeats, device)
    unit = seconds.pop("frozen_image_forward")
    print(f"frozen image forward (batch {args.batch}): median {unit['median']:.3f} s, fastest {unit['min']:.3f} s, "
          f"CPU {unit['cpu']:.3f} s", flush=True)
    results: dict[str, float] = {"frozen_image_forward_s": unit["median"], "frozen_image_forward_min_s": unit["min"],
                                 "frozen_image_forward_cpu_s": unit["cpu"]}
    for name, got in seconds.items():
        _report(name, got, unit, results, device, args.batch, fns[name])
    _ratios(results, args.paths)
    line = json.dumps({"backbone": args.backbone, "device": str(device), "batch": args.batch,
                       "classes": args.classes, "repeats": args.repeats, "paths": args.paths,
                       "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
                       "threads": torch.get_num_threads(), "load_average_before": load_before,
                       "load_average_after": list(os.getloadavg()),
                       **{k: round(v, 4) for k, v in results.items()}})
    print(line)
    if args.out:
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
