"""Paired DAPT-minus-base differences of a `bench synth` result, with 95% t intervals over its seeds.

Each seed trains a method and its DAPT counterpart on the same task, so the difference is taken seed by seed before
the mean and the interval (Student's t, n - 1 degrees of freedom). Prints a markdown table per shot count:

    python benchmarks/web_bench_paired.py docs/results/web_rehomed_bench.json [more results: ablations ...]

Later results may hold only DAPT methods (an ablation run with ``--methods``): their DAPT method is paired with the
base method of the first result, on the same seeds and shots.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dapt_core.experiments.background_shift_results import paired_difference  # noqa: E402

PAIRS = (("coop", "coop+dapt-mask"), ("coop", "coop+dapt-gradcam"), ("maple", "maple+dapt-mask"),
         ("maple", "maple+dapt-gradcam"))
METRICS = (("conflicting_acc", "conflicting acc (points)", 1), ("balanced_acc", "balanced acc (points)", 1),
           ("aligned_acc", "aligned acc (points)", 1), ("object_attention", "Grad-CAM energy share", 3),
           ("object_attention@relevance", "relevance energy share", 3), ("bg_gap", "BG-Gap (points)", 1))


def paired(base: dict, dapt: dict, metric: str) -> tuple[float, float, float] | None:
    """Mean and 95% interval of dapt - base over the seeds both have (None with fewer than two)."""
    found = paired_difference(base, dapt, metric)
    if found is None or found["ci95"] is None:
        return None
    return found["mean"], *found["ci95"]


def table(runs: dict, shots: int, pairs, label: str) -> list[str]:
    lines = [f"| {label} | " + " | ".join(title for _, title, _ in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for base, dapt, name in pairs:
        if (shots, base) not in runs or (shots, dapt) not in runs:
            continue
        cells = []
        for metric, _, decimals in METRICS:
            found = paired(runs[(shots, base)], runs[(shots, dapt)], metric)
            cells.append("-" if found is None else
                         f"{found[0]:+.{decimals}f} [{found[1]:+.{decimals}f}, {found[2]:+.{decimals}f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="the main result first, then ablation results")
    args = parser.parse_args()
    main_runs: dict = {}
    for run in json.loads(Path(args.results[0]).read_text())["runs"]:
        main_runs.setdefault((run["shots"], run["method"]), {})[run["seed"]] = run
    for shots in sorted({s for s, _ in main_runs}):
        print(f"\n### {shots} shot(s) per class: {args.results[0]}\n")
        print("\n".join(table(main_runs, shots, [(b, d, f"{d} - {b}") for b, d in PAIRS], "DAPT - base, seed by seed")))
    for path in args.results[1:]:
        found: dict = {}
        for run in json.loads(Path(path).read_text())["runs"]:
            found.setdefault((run["shots"], run["method"]), {})[run["seed"]] = run
        merged = {**main_runs, **{(s, f"{m} ({Path(path).stem})"): v for (s, m), v in found.items()}}
        pairs = [(b, f"{d} ({Path(path).stem})", f"{d} ({Path(path).stem}) - {b}") for b, d in PAIRS
                 if any(m == d for _, m in found)]
        for shots in sorted({s for s, _ in found}):
            print(f"\n### {shots} shot(s) per class, ablation: {path}\n")
            print("\n".join(table(merged, shots, pairs, "ablated DAPT - base")))


if __name__ == "__main__":
    main()
