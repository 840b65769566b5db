"""The background-shift benchmark's run records summed up: means and 95% intervals over seeds, the summary line,
merged runs, and the conflicting scenes at chosen quantiles of a DAPT-minus-base attention difference."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

# The fields of the command's last stdout line, per method (means over seeds).
SUMMARY_FIELDS = ("aligned_acc", "balanced_acc", "conflicting_acc", "object_attention", "pointing_game")


CI_LEVEL = 0.95  # two-sided level of the intervals over seeds


def t_quantile(df: int, level: float = CI_LEVEL) -> float:
    """The ``t`` with P(|T| <= t) = ``level`` for Student's t with ``df`` degrees of freedom (2.0 0.95: 4.303).

    Uses the closed forms of P(|T| <= t) for whole ``df`` (Abramowitz & Stegun 26.7.3-4) and bisection.
    """
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df: expected an integer >= 1, got {df!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a value in (0, 1), got {level}")
    low, high = 0.0, 1.0
    while _t_within(high, df) < level:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        low, high = (mid, high) if _t_within(mid, df) < level else (low, mid)
    return (low + high) / 2.0


def _t_within(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` degrees of freedom (A&S 26.7.3 for odd ``df``, 26.7.4 for even)."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    term = series = 1.0
    if df % 2 == 0:
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * cos2
            series += term
        return math.sin(theta) * series
    for k in range(1, (df - 1) // 2):
        term *= (2 * k) / (2 * k + 1) * cos2
        series += term
    tail = math.sin(theta) * math.cos(theta) * series if df > 1 else 0.0
    return 2.0 / math.pi * (theta + tail)


def aggregate(records: list[dict]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Mean, sample standard deviation (ddof=1; 0 for one seed) and 95% t interval of the mean over seeds.

    Returns:
        ``{shots: {method: {metric: {"mean", "std", "n", "ci95"}}}}`` with shots as a string key; ``ci95`` is
        ``[low, high]``, None with fewer than two seeds.
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
            mean = float(values.mean()) if len(values) else math.nan
            half = t_quantile(len(values) - 1) * std / math.sqrt(len(values)) if len(values) > 1 else None
            stats[k] = {"mean": mean, "std": std, "n": len(values),
                        "ci95": None if half is None else [mean - half, mean + half]}
        out.setdefault(str(shots), {})[method] = stats
    return out


def paired_difference(base: Mapping[int, dict], dapt: Mapping[int, dict], key: str) -> dict | None:
    """``dapt[seed][key] - base[seed][key]`` over the seeds where both have a value, summed up as :func:`aggregate`
    sums up a metric (mean, std, n, 95% t interval); None when no seed has both."""
    rows = [{"shots": 0, "seed": seed, "method": "difference", "value": float(dapt[seed][key] - base[seed][key])}
            for seed in sorted(base.keys() & dapt.keys())
            if base[seed].get(key) is not None and dapt[seed].get(key) is not None]
    return aggregate(rows)["0"]["difference"]["value"] if rows else None


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


PER_SCENE_KEY = "per_scene"  # a run record's values per conflicting scene (kept beside the main JSON on disk)


def split_per_scene(result: dict) -> tuple[dict, list[dict]]:
    """The result without its records' per-scene values, and those values as one line per record (with the
    record's shots, seed and method)."""
    lines = [{"shots": r["shots"], "seed": r["seed"], "method": r["method"], PER_SCENE_KEY: r[PER_SCENE_KEY]}
             for r in result.get("runs", []) if PER_SCENE_KEY in r]
    runs = [{k: v for k, v in r.items() if k != PER_SCENE_KEY} for r in result.get("runs", [])]
    return (dict(result, runs=runs) if "runs" in result else dict(result)), lines


def attach_per_scene(result: dict, lines: Sequence[dict]) -> dict:
    """The result with each record's per-scene values put back from `split_per_scene`'s lines.

    Raises:
        ValueError: a line names a (shots, seed, method) the result has no record of.
    """
    by_key = {(line["shots"], line["seed"], line["method"]): line[PER_SCENE_KEY] for line in lines}
    runs = []
    for r in result["runs"]:
        key = (r["shots"], r["seed"], r["method"])
        runs.append(dict(r, **{PER_SCENE_KEY: by_key.pop(key)}) if key in by_key else r)
    if by_key:
        raise ValueError(f"per-scene values of runs the result does not hold: {sorted(by_key)}")
    return dict(result, runs=runs)


def quantile_picks(differences: Sequence[float], quantiles: Sequence[float]) -> list[int]:
    """Per quantile q, the index of the value of rank ``q * (n - 1)`` (rounded half up) among the n finite
    differences in ascending order (ties keep their order): a scene at that quantile, never an interpolation."""
    d = np.asarray(differences, dtype=np.float64)
    finite = np.flatnonzero(~np.isnan(d))
    if not len(finite):
        raise ValueError("quantile_picks: no finite difference to rank")
    order = finite[np.argsort(d[finite], kind="stable")]
    bad = [q for q in quantiles if not 0.0 <= q <= 1.0]
    if bad:
        raise ValueError(f"quantiles: each must lie in [0, 1], got {bad}")
    return [int(order[math.floor(q * (len(order) - 1) + 0.5)]) for q in quantiles]


def scenes_at_quantiles(result: dict, base: str, dapt: str, shots: int, seed: int, *, key: str = "object_attention",
                        quantiles: Sequence[float] = (0.5, 0.9)) -> list[dict]:
    """The conflicting scenes at given quantiles of the per-scene difference ``dapt - base`` in ``key``, within
    the task of (seed, shots): a rule to pick example scenes by, instead of picking them by eye.

    Returns:
        Per quantile: ``quantile``, ``index`` (the scene's position in the task's test_conflicting split, which
        ``bench_task`` rebuilds from the seed), ``label``, ``background``, ``base``, ``dapt`` and ``difference``.

    Raises:
        ValueError: the result holds no per-scene values of one of the two runs.
    """
    runs = {r["method"]: r for r in result["runs"] if r["shots"] == shots and r["seed"] == seed}
    missing = [m for m in (base, dapt) if PER_SCENE_KEY not in runs.get(m, {})]
    if missing:
        raise ValueError(f"no per-scene values of {missing} at shots={shots}, seed={seed}")
    values = {m: np.asarray(runs[m][PER_SCENE_KEY][key], dtype=np.float64) for m in (base, dapt)}
    scenes = runs[dapt][PER_SCENE_KEY]
    differences = values[dapt] - values[base]
    return [{"quantile": q, "index": i, "label": scenes["label"][i], "background": scenes["background"][i],
             "base": float(values[base][i]), "dapt": float(values[dapt][i]), "difference": float(differences[i])}
            for q, i in zip(quantiles, quantile_picks(differences, quantiles))]
