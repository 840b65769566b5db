"""The background-shift benchmark's run records summed up: means over seeds, the summary line, merged runs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# The fields of the command's last stdout line, per method (means over seeds).
SUMMARY_FIELDS = ("aligned_acc", "balanced_acc", "conflicting_acc", "object_attention", "pointing_game")


def aggregate(records: list[dict]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Mean and sample standard deviation (ddof=1; 0 for one seed) over seeds.

    Returns:
        ``{shots: {method: {metric: {"mean", "std", "n"}}}}`` with shots as a string key.
    """
    grouped: dict[tuple[int, str], list[dict]] = {}
    for r in records:
        grouped.setdefault((r["shots"], r["method"]), []).append(r)
    out: dict = {}
    for (shots, method), runs in grouped.items():
        metrics = [k for k, v in runs[0].items() if isinstance(v, float) and k not in ("seconds", "train_seconds")]
        stats = {}
        for k in metrics:
            values = np.array([r[k] for r in runs], dtype=np.float64)
            values = values[~np.isnan(values)]
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            stats[k] = {"mean": float(values.mean()) if len(values) else math.nan, "std": std, "n": len(values)}
        out.setdefault(str(shots), {})[method] = stats
    return out


def summary_line(aggregated: dict, shots: int) -> dict[str, dict[str, float]]:
    """The command's last stdout line: per method, the means of `SUMMARY_FIELDS` at one shot count; attention
    fields as fractions in [0, 1], accuracies in percent."""
    return {method: {k: round(stats[k]["mean"], 4) for k in SUMMARY_FIELDS}
            for method, stats in aggregated[str(shots)].items()}


# Config fields that may differ between runs that are merged into one table.
MERGEABLE_FIELDS = ("seeds", "device")


def merge_results(results: Sequence[dict]) -> dict:
    """Merge the results of runs that differ only in their seeds (e.g. one process per seed) into one.

    Raises:
        ValueError: the runs differ in another setting, or two runs hold the same (shots, seed, method).
    """
    if not results:
        raise ValueError("merge_results: nothing to merge")
    first = {k: v for k, v in results[0]["config"].items() if k not in MERGEABLE_FIELDS}
    records, seen = [], set()
    for i, result in enumerate(results):
        other = {k: v for k, v in result["config"].items() if k not in MERGEABLE_FIELDS}
        diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if diff:
            raise ValueError(f"results[{i}]: differs from results[0] in {diff}; only seeds may differ")
        for r in result["runs"]:
            key = (r["shots"], r["seed"], r["method"])
            if key in seen:
                raise ValueError(f"results[{i}]: (shots, seed, method) {key} appears twice")
            seen.add(key)
            records.append(r)
    seeds = sorted({r["seed"] for r in records})
    # a run stopped part-way still counts only the (shots, seed) tasks it finished
    done = {(r["shots"], r["seed"]) for r in records}
    return dict(results[0], config={**results[0]["config"], "seeds": seeds}, runs=records,
                summary=aggregate(records), tasks_done=len(done),
                tasks_total=len(results[0]["config"]["shots"]) * len(seeds),
                seconds=round(sum(r["seconds"] for r in results), 1))
