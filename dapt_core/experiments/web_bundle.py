"""What the app bundles for the ``synth-web`` backbone: prompt sets trained on the rehomed web task, and example
scenes picked from that task's conflicting split by a stated rule, each with its own numbers beside the benchmark's.

One (seed, shots) task of :func:`dapt_core.experiments.bias_worlds.build_task` (``world="web"``,
``variant="rehomed"``) is trained with the background-shift benchmark's recipe and learners
(:func:`~dapt_core.experiments.background_shift.run_task_methods`: official 10 epochs, batch 4, lr 0.0035, official
schedule, flips only, class-specific CoOp context, DAPT-S with the exact masks) and each trained method is saved as
``web-rehomed-<method>.safetensors`` (:func:`~dapt_core.experiments.background_shift_prompts.prompt_set_saver`). The
same run measures, on every conflicting test scene, the share of the true class's map energy inside the exact
object mask, for each configured map (:data:`BUNDLE_CAMS`: the relevance map first, the map of the gates'
registration v3; then Grad-CAM, the issue's).

The example scenes are picked by :data:`PICK_RULE`: rank the conflicting scenes by the difference DAPT minus base
(:data:`PICK_PAIR`: MaPLe+DAPT-S minus MaPLe by default, MaPLe being the method the official DAPT wraps) of that
share under the first map, and take the scenes at the 10th, 50th and 90th percentiles
(:func:`~dapt_core.experiments.background_shift_results.quantile_picks`: a scene of that rank, never an
interpolation). The 10th percentile is there so that a visitor also sees where DAPT moves the map off the object.
A `bench synth --world web` result, when given, supplies the aggregate over its seeds (mean and 95% interval per
method, and of the paired DAPT-minus-base difference); its recipe must be the bundle's. Writing the files is
:mod:`~dapt_core.experiments.web_bundle_report`'s. The app's attribution method defaults to the first map of the
manifest written (:class:`dapt_core.app_support.startup.Examples`), so to the relevance map by default.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dapt_core.backbones import Backbone, load_backbone
from dapt_core.experiments.background_shift import (
    METHODS,
    BenchConfig,
    Method,
    Reporter,
    TaskData,
    run_task_methods,
)
from dapt_core.experiments.background_shift_prompts import prompt_set_saver, prompt_set_stem
from dapt_core.experiments.background_shift_results import PER_SCENE_KEY, paired_difference, scenes_at_quantiles
from dapt_core.experiments.bias_worlds import DownstreamTask
from dapt_core.experiments.web_bundle_rule import BUNDLE_CAMS, BUNDLE_METHODS, PICK_PAIR, PICK_QUANTILES
from dapt_core.learners.base import PromptLearner
from dapt_core.metric_units import map_metric_key

SPLIT = "test_conflicting"  # the split the examples come from: every object on a background home to it in no map
SHARE_KEY = "object_attention"  # the per-scene energy share in the benchmark's records
PICK_RULE = ("the conflicting test scenes of the task are ranked by the difference DAPT minus base in the share of "
             "the true class's {cam} energy inside the exact object mask; the examples are the scenes of rank "
             "q * (n - 1), rounded half up, for q = {quantiles} (no interpolation): a low quantile shows a scene "
             "where DAPT fares worst against its base (below zero, DAPT moved the map off the object), the median a "
             "typical one, a high quantile one where DAPT moved the map onto the object the most")
# settings of a benchmark result that must be the bundle's for its aggregate to stand beside the bundle's numbers
SAME_RECIPE = ("world", "task_variant", "backbone", "coop_class_specific", "coop_ctx_init", "epochs", "batch_size",
               "lr", "schedule", "switch_epoch", "crop_min", "n_test", "n_classes")


def bundle_config(seed: int = 1, shots: int = 16, **overrides) -> BenchConfig:
    """The benchmark's configuration of the bundle's one task: the rehomed web task of (``seed``, ``shots``), the
    benchmark's class-specific CoOp, :data:`BUNDLE_METHODS`, :data:`BUNDLE_CAMS` and no bias suite (its BG-Gap is
    not shown with the examples); ``overrides`` are further :class:`BenchConfig` fields."""
    fields = {"world": "web", "task_variant": "rehomed", "coop_class_specific": True, "methods": BUNDLE_METHODS,
              "cam_methods": BUNDLE_CAMS, "suite_per_class": 0, **overrides, "shots": (shots,), "seeds": (seed,)}
    return BenchConfig(**fields)


def share_key(cfg_cams: Sequence[str], cam: str) -> str | None:
    """The record key of the energy share of map ``cam`` in a run whose maps are ``cfg_cams`` (the first map's is
    plain, the others' ``object_attention@<map>``); None when the run did not measure that map."""
    return map_metric_key(cfg_cams, SHARE_KEY, cam) if cam in cfg_cams else None


def check_pick(cfg: BenchConfig, pair: Sequence[str], quantiles: Sequence[float]) -> None:
    """Refuses a pick the configured run cannot make: a pair outside its methods, or a quantile outside [0, 1]."""
    base, dapt = pair
    missing = [m for m in (base, dapt) if m not in cfg.methods or not METHODS[m].trained]
    if missing:
        raise ValueError(f"pick pair: {missing} not among the trained methods {list(cfg.methods)}")
    if METHODS[base].cue != "off" or METHODS[dapt].cue == "off":
        raise ValueError(f"pick pair: expected (a method without DAPT, one with), got {tuple(pair)}")
    bad = [q for q in quantiles if not 0.0 <= q <= 1.0]
    if not quantiles or bad:
        raise ValueError(f"quantiles: need one or more values in [0, 1], got {list(quantiles)}")


def _config_value(value):
    """A setting as JSON gives it back (tuples as lists), to compare a loaded result's config with a live one."""
    return json.loads(json.dumps(value))


def recipe_differences(result_config: dict, cfg: BenchConfig) -> dict[str, tuple]:
    """The :data:`SAME_RECIPE` settings in which a benchmark result's config differs from ``cfg``:
    ``{field: (benchmark's, bundle's)}``."""
    ours = _config_value(asdict(cfg))
    return {k: (result_config.get(k), ours[k]) for k in SAME_RECIPE if result_config.get(k) != ours[k]}


def _stats(stats: dict | None) -> dict | None:
    if stats is None:
        return None
    return {"mean": round(stats["mean"], 6), "ci95": None if stats["ci95"] is None else
            [round(v, 6) for v in stats["ci95"]], "n": stats["n"]}


def benchmark_aggregate(result: dict, cfg: BenchConfig, pair: Sequence[str], source: str) -> dict:
    """The aggregate of a `bench synth --world web` result that goes beside the bundle's numbers.

    Args:
        result: the result JSON (with its per-scene values when they were beside it).
        cfg: the bundle's configuration; the result must share its :data:`SAME_RECIPE` settings and shot count.
        pair: (base, DAPT) methods whose paired difference over seeds is reported.
        source: how the result is named in the manifest (its file name).

    Returns:
        ``source``, ``seeds``, ``shots``, ``cam_methods`` (the benchmark's maps), per method of the bundle that the
        benchmark ran: ``conflicting_acc`` (percent) and ``energy_share`` per bundle map, each
        ``{"mean", "ci95", "n"}`` over seeds (``ci95`` None for one seed; a map the benchmark did not measure is
        None); and ``difference``: per map, DAPT minus base paired by seed, the same statistics.

    Raises:
        ValueError: another recipe or task, or no run at the bundle's shot count.
    """
    config = result.get("config") or {}
    differ = recipe_differences(config, cfg)
    if differ:
        raise ValueError(f"the benchmark result {source} was run with other settings than the bundle: "
                         + "; ".join(f"{k}: {theirs!r} there, {ours!r} here" for k, (theirs, ours) in differ.items()))
    shots = cfg.shots[0]
    per_method = (result.get("summary") or {}).get(str(shots))
    if not per_method:
        raise ValueError(f"the benchmark result {source} has no run at {shots} shots (it has "
                         f"{sorted((result.get('summary') or {}), key=int)})")
    cams = tuple(config["cam_methods"])
    keys = {cam: share_key(cams, cam) for cam in cfg.cam_methods}
    methods = {}
    for method in cfg.methods:
        stats = per_method.get(method)
        if stats is not None:
            methods[method] = {"conflicting_acc": _stats(stats.get("conflicting_acc")),
                               "energy_share": {cam: _stats(stats.get(key)) if key else None
                                                for cam, key in keys.items()}}
    return {"source": source, "seeds": config.get("seeds"), "shots": shots, "cam_methods": list(cams),
            "methods": methods, "difference": _paired_difference(result["runs"], shots, pair, keys)}


def _paired_difference(runs: list[dict], shots: int, pair: Sequence[str], keys: dict[str, str | None]) -> dict:
    """Per map, the statistics over seeds of DAPT minus base (the seeds where both ran)."""
    base, dapt = ({r["seed"]: r for r in runs if r["shots"] == shots and r["method"] == m} for m in pair)
    out = {}
    for cam, key in keys.items():
        found = paired_difference(base, dapt, key) if key else None
        out[cam] = _stats(found) if found else None
    return out


def per_scene_agreement(result: dict, records: list[dict], cfg: BenchConfig) -> dict | None:
    """How far the bundle's per-scene shares are from the benchmark's own run of the same (seed, shots), when the
    benchmark ran that task and kept its per-scene values: per method and map, the largest absolute difference
    (0.0: the bundle reproduced the benchmark's run). None when the benchmark has no such run."""
    seed, shots = cfg.seeds[0], cfg.shots[0]
    theirs = {r["method"]: r[PER_SCENE_KEY] for r in result.get("runs", [])
              if r["shots"] == shots and r["seed"] == seed and PER_SCENE_KEY in r}
    cams = tuple(result["config"]["cam_methods"])
    out: dict = {}
    for record in records:
        scenes = theirs.get(record["method"])
        if scenes is None:
            continue
        for cam in cfg.cam_methods:
            ours_key, theirs_key = share_key(cfg.cam_methods, cam), share_key(cams, cam)
            if theirs_key is None or len(scenes[theirs_key]) != len(record[PER_SCENE_KEY][ours_key]):
                continue
            gap = np.nanmax(np.abs(np.asarray(scenes[theirs_key], dtype=np.float64)
                                   - np.asarray(record[PER_SCENE_KEY][ours_key], dtype=np.float64)))
            out.setdefault(record["method"], {})[cam] = round(float(gap), 6)
    return out or None


def pick_examples(records: list[dict], cfg: BenchConfig, pair: Sequence[str] = PICK_PAIR,
                  quantiles: Sequence[float] = PICK_QUANTILES) -> list[dict]:
    """The conflicting scenes at ``quantiles`` of the per-scene DAPT-minus-base share under the first map.

    Returns:
        Per quantile: ``quantile``, ``index`` (in the task's conflicting split), ``label``, ``background``,
        ``base``, ``dapt`` and ``difference`` (see
        :func:`~dapt_core.experiments.background_shift_results.scenes_at_quantiles`).
    """
    seed, shots = cfg.seeds[0], cfg.shots[0]
    return scenes_at_quantiles({"runs": records}, pair[0], pair[1], shots, seed, key=SHARE_KEY,
                               quantiles=tuple(quantiles))


def scene_numbers(records: list[dict], cfg: BenchConfig, classnames: Sequence[str], index: int) -> dict:
    """One conflicting scene's own numbers, per trained method: its prompt set's stem, the predicted class, whether
    it is right, and the energy share on the object per map (None for an all-zero map)."""
    out = {}
    for record in records:
        scenes = record[PER_SCENE_KEY]
        prediction = int(scenes["prediction"][index])
        shares = {}
        for cam in cfg.cam_methods:
            value = float(scenes[share_key(cfg.cam_methods, cam)][index])
            shares[cam] = None if np.isnan(value) else round(value, 6)
        out[record["method"]] = {"prompt_set": prompt_set_stem(cfg, record["method"]),
                                 "prediction": classnames[prediction],
                                 "correct": prediction == int(scenes["label"][index]), "energy_share": shares}
    return out


def train_bundle(cfg: BenchConfig, prompts_dir: str | Path, *, backbone: Backbone | None = None,
                 report: Reporter | None = None) -> tuple[list[dict], DownstreamTask, list[Path]]:
    """Trains and measures every configured method on the bundle's task and saves each as a prompt set.

    Returns:
        The run records (with their per-scene values), the task (its scenes: for the example images) and the
        prompt-set files written.
    """
    backbone = backbone or load_backbone(cfg.backbone, weights_path=cfg.weights, device=cfg.device)
    seed, shots = cfg.seeds[0], cfg.shots[0]
    written: list[Path] = []
    save = prompt_set_saver(prompts_dir, cfg, seed, shots, written)
    seen: list[DownstreamTask] = []

    def keep(method: Method, learner: PromptLearner, metrics: dict, history: list[dict], data: TaskData) -> None:
        save(method, learner, metrics, history, data)
        if not seen:
            seen.append(data.task)

    records = run_task_methods(backbone, cfg, seed, shots, on_trained=keep, report=report)
    return records, seen[0], written
