"""The background-shift benchmark's trained prompt sets on disk: the bundled ones and a run's (seed, shots) task.

Each trained method of a task is saved as ``<stem>.safetensors`` (:func:`dapt_core.checkpoint.save_prompt_set`),
``synth-<method>`` in the synth world (the sets bundled in ``checkpoints/prompts``) and
``<world>-<task variant>-<method>`` in another, with the training and DAPT settings, the task's home backgrounds
and that run's benchmark metrics in its metadata.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from dapt_core.backbones import Backbone, load_backbone
from dapt_core.checkpoint import save_prompt_set
from dapt_core.experiments.background_shift import (
    METHODS,
    BenchConfig,
    Method,
    Reporter,
    TaskData,
    TrainedHook,
    run_task_methods,
)
from dapt_core.learners.base import PromptLearner

# File stem (after the world's prefix) of each method's prompt set; "dapt" alone means the ground-truth mask cue.
PROMPT_SET_SUFFIXES = {
    "coop": "coop",
    "coop+dapt-mask": "coop-dapt",
    "coop+dapt-gradcam": "coop-dapt-gradcam",
    "maple": "maple",
    "maple+dapt-mask": "maple-dapt",
    "maple+dapt-gradcam": "maple-dapt-gradcam",
}
PROMPT_SET_STEMS = {method: f"synth-{suffix}" for method, suffix in PROMPT_SET_SUFFIXES.items()}  # the bundled ones


def prompt_set_stem(cfg: BenchConfig, method: str) -> str:
    """``synth-<suffix>`` (:data:`PROMPT_SET_STEMS`) in the synth world, ``<world>-<task variant>-<suffix>`` else."""
    prefix = "synth" if cfg.world == "synth" else f"{cfg.world}-{cfg.task_variant}"
    return f"{prefix}-{PROMPT_SET_SUFFIXES[method]}"


def prompt_set_saver(out_dir: str | Path, cfg: BenchConfig, seed: int, shots: int,
                     written: list[Path]) -> TrainedHook:
    """A hook for a task's runs that saves each trained method as ``out_dir/<prompt_set_stem>.safetensors`` (and
    appends the path to ``written``); the metadata holds the training and DAPT settings, the task's homes and the
    benchmark metrics of that run (accuracies in percent, attention in [0, 1], BG-Gap in points)."""
    out_dir = Path(out_dir)

    def save(method: Method, learner: PromptLearner, metrics: dict, history: list[dict], data: TaskData) -> None:
        if not method.trained:
            return
        if cfg.world == "synth":
            where = {"data": f"synth spurious task, seed {seed}"}
            homes = {"pairing": {c: bgs[0] for c, bgs in data.task.homes.items()}}
        else:
            where = {"data": data.task.description}
            homes = {"homes": {c: list(bgs) for c, bgs in data.task.homes.items()}}
        train_meta = {**asdict(cfg.train_config(seed)), **where, "shots": shots, "n_test_per_class": cfg.n_test,
                      **homes, "history": history}
        dapt = cfg.dapt(method.cue) if method.cue != "off" else None
        stem = prompt_set_stem(cfg, method.name)
        written.append(save_prompt_set(learner, out_dir / f"{stem}.safetensors", dapt=dapt, train_config=train_meta,
                                       metrics=metrics, name=stem))

    return save


def train_prompt_sets(out_dir: str | Path, cfg: BenchConfig, *, backbone: Backbone | None = None,
                      report: Reporter | None = None) -> list[Path]:
    """Train the configured methods on the task of ``(cfg.seeds[0], cfg.shots[0])`` and save each as a prompt set
    (:func:`prompt_set_saver`)."""
    trainable = [m for m in cfg.methods if METHODS[m].trained]
    if not trainable:
        raise ValueError(f"methods: none of {list(cfg.methods)} is trained; nothing to save")
    cfg = replace(cfg, methods=tuple(trainable))
    backbone = backbone or load_backbone(cfg.backbone, weights_path=cfg.weights, device=cfg.device)
    seed, shots = cfg.seeds[0], cfg.shots[0]
    written: list[Path] = []
    run_task_methods(backbone, cfg, seed, shots, on_trained=prompt_set_saver(out_dir, cfg, seed, shots, written),
                     report=report)
    return written
