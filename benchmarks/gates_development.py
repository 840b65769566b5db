"""Development runs behind the gates' registrations v2 and v3 (issue 14): what was tried on development seeds only.

Three parts, each printing one JSON line per measurement (run pinned to one core, one torch thread):

    python benchmarks/gates_development.py variants --seed 100    # CoOp on variants of the downstream task
    python benchmarks/gates_development.py recipe --seed 100      # CoOp's recipe and options on the v1 task
    python benchmarks/gates_development.py recipe --seed 100 --task rehomed               # ... on the v3 task
    python benchmarks/gates_development.py attention --seed 100 --task rehomed --class-specific  # v3 controls
    python benchmarks/gates_development.py attention --seed 100   # the attention gate: every method, 3 pairs

``variants``: the web task with the training split's home probability changed, larger objects, a look-alike
subset of classes, or another camera (a pixel transform of every scene), each trained with the official CoOp
recipe as the gates train it (:func:`dapt_core.experiments.bias_gates.train_coop`). ``recipe``: the v1 task with
10x the learning rate, 16 random context vectors (CoOp's own default) or class-specific context. ``attention``:
three control pairs of the seed (``control_scenes`` repeats 0-2), every prompt-following attribution method,
energy share and pointing game, one pair and pooled. The seeds used for the registration: 100, 101, 102 (never
7, the v1 verdict seed, nor the v2 verdict seed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dapt_core.backbones import load_backbone  # noqa: E402
from dapt_core.experiments import bias_gates  # noqa: E402
from dapt_core.experiments.bias_suite import paired_interval  # noqa: E402
from dapt_core.experiments.bias_worlds import TASK_VARIANTS, TEST_SPLITS, LabelledScenes, _web_parts  # noqa: E402
from dapt_core.world.web_shapes import LOOKALIKE_GROUPS, WEB_OBJECT_CLASSES  # noqa: E402

CAMERAS = {
    "invert": lambda x: (255 - x).astype(np.uint8),
    "gray": lambda x: np.repeat(x.mean(-1, keepdims=True), 3, -1).astype(np.uint8),
    "low-contrast": lambda x: np.clip(128 + 0.4 * (x.astype(np.float32) - 128), 0, 255).astype(np.uint8),
}
# name -> (WebWorldConfig changes for the training split, for every split, classes, camera)
VARIANTS = {
    "v1 task": ({}, {}, WEB_OBJECT_CLASSES, None),
    "balanced training (p_home 0.125)": ({"p_home": 0.125}, {}, WEB_OBJECT_CLASSES, None),
    "objects 10-25% of the image": ({}, {"min_area": 0.1}, WEB_OBJECT_CLASSES, None),
    "objects 20-25%, balanced training": ({"p_home": 0.125}, {"min_area": 0.2}, WEB_OBJECT_CLASSES, None),
    "look-alikes crescent/dome/drop/heart": ({}, {}, LOOKALIKE_GROUPS[4], None),
    "look-alikes crescent/..., balanced training": ({"p_home": 0.125}, {}, LOOKALIKE_GROUPS[4], None),
    **{f"camera {name}": ({}, {}, WEB_OBJECT_CLASSES, name) for name in CAMERAS},
}
VARIANT_STREAM = 999  # spawn key of the variants' scenes
VERDICT_SEEDS = (7, 11, 13)  # v1's, v2's and v3's verdict seeds, fixed before their runs


def _scenes(seed: int, split: int, classes, count: int, changes: dict, camera: str | None) -> LabelledScenes:
    """``count`` scenes per class: split 0 trains (home as the config says), 1 aligned, 2 balanced, 3 conflicting."""
    from dapt_core.world.task import cycled
    from dapt_core.world.web import DEFAULT_WEB_CONFIG, WEB_BACKGROUND_CLASSES, sample_spec, with_background

    cfg = replace(DEFAULT_WEB_CONFIG, **changes)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(VARIANT_STREAM, split)))
    items = []
    for label, name in enumerate(classes):
        picks = cycled(rng, WEB_BACKGROUND_CLASSES, count) if split == 2 else [None] * count
        for bg in picks:
            spec = sample_spec(rng, cfg, object=name, home={0: None, 1: True, 2: None, 3: False}[split])
            parts = _web_parts(spec if bg is None else with_background(spec, bg))
            items.append((parts.image, parts.mask, label, parts.state[0].background))
    scenes = LabelledScenes.stack(items)
    if camera:
        scenes.images = CAMERAS[camera](scenes.images)
    return scenes


def _accuracies(learner, train: LabelledScenes, tests: dict) -> dict:
    found = {"train": round(bias_gates.accuracy(learner, train), 2)}
    found.update({split: round(bias_gates.accuracy(learner, scenes), 2) for split, scenes in tests.items()})
    return found


def run_variants(backbone, seed: int) -> None:
    for name, (train_changes, changes, classes, camera) in VARIANTS.items():
        train = _scenes(seed, 0, classes, 16, {**changes, **train_changes}, camera)
        tests = {split: _scenes(seed, i + 1, classes, 20, changes, camera) for i, split in enumerate(TEST_SPLITS)}
        zero = bias_gates.train_coop(backbone, tuple(classes), None, seed)
        history: list = []
        coop = bias_gates.train_coop(backbone, tuple(classes), train, seed, history=history)
        zs, tuned = _accuracies(zero, train, tests), _accuracies(coop, train, tests)
        print(json.dumps({"seed": seed, "variant": name, "zero_shot": zs, "coop": tuned,
                          "gain_test_balanced": round(tuned["test_balanced"] - zs["test_balanced"], 2),
                          "loss_per_epoch": [round(e["ce"], 3) for e in history]}), flush=True)


def _train_options(backbone, task, seed: int, lr: float, options: dict):
    from dapt_core.learners import build_learner
    from dapt_core.objective import DaptConfig
    from dapt_core.train import TrainConfig, seed_everything, train_prompts

    seed_everything(seed)
    learner = build_learner("coop", backbone, list(task.classnames), **options)
    cfg = TrainConfig(epochs=10, batch_size=4, lr=lr, seed=seed, crop_min=1.0, selection="last")
    with tempfile.TemporaryDirectory(prefix="dapt-dev-") as tmp:
        samples = bias_gates._write_samples(task.train, task.classnames, Path(tmp))
        history = train_prompts(learner, samples, cfg, DaptConfig(cue="off"), progress=False)
    learner.eval()
    return learner, history


def run_recipe(backbone, seed: int, variant: str = "home") -> None:
    from dapt_core.experiments.bias_worlds import web_task

    task = web_task(seed, 16, 20, backbone.image_size, variant=variant)
    zero = bias_gates.train_coop(backbone, task.classnames, None, seed)
    print(json.dumps({"seed": seed, "task": variant, "recipe": "zero-shot",
                      "coop": _accuracies(zero, task.train, task.tests)}), flush=True)
    runs = {"official (lr 0.0035, 'a photo of a')": (0.0035, {"ctx_init": "a photo of a"}),
            "lr 0.035": (0.035, {"ctx_init": "a photo of a"}),
            "16 random context vectors": (0.0035, {"n_ctx": 16}),
            "class-specific context": (0.0035, {"ctx_init": "a photo of a", "class_specific": True})}
    for name, (lr, options) in runs.items():
        learner, history = _train_options(backbone, task, seed, lr, options)
        print(json.dumps({"seed": seed, "task": variant, "recipe": name,
                          "coop": _accuracies(learner, task.train, task.tests),
                          "loss_per_epoch": [round(e["ce"], 3) for e in history]}), flush=True)


def run_attention(backbone, seed: int, repeats: int = 3, settings=None) -> None:
    """``settings``: the registration whose task variant and CoOp options are used (None: v1's)."""
    from dapt_core.experiments.bias_worlds import web_task, web_world

    settings = settings or bias_gates.SETTINGS
    methods = ("gradcam", "gradcam++", "layercam", "legrad", "relevance")
    world, task = web_world(), web_task(seed, 16, 20, backbone.image_size, variant=settings.task)
    conflicting = task.tests["test_conflicting"]
    found: dict = {(m, k): [] for m in methods for k in bias_gates.CONTROL_KINDS}
    for repeat in range(repeats):
        for kind in bias_gates.CONTROL_KINDS:
            scenes = bias_gates.control_scenes(world, kind, 16, seed, backbone.image_size, repeat)
            learner = bias_gates.train_coop(backbone, world.classnames, scenes, bias_gates.control_seed(seed, repeat),
                                            settings)
            for method in methods:
                found[(method, kind)].append(bias_gates.attention_per_scene(learner, conflicting, method))
    for method in methods:
        row = {"seed": seed, "method": method, "repeats": repeats, "task": settings.task,
               "class_specific": settings.class_specific}
        for i, metric in enumerate(("energy_share", "pointing")):
            runs = {k: np.stack([f[i] for f in found[(method, k)]]) for k in bias_gates.CONTROL_KINDS}
            single = [paired_interval(runs["balanced"][r] - runs["background"][r]) for r in range(repeats)]
            pooled = paired_interval(np.nanmean(runs["balanced"], 0) - np.nanmean(runs["background"], 0))
            row[metric] = {"pooled": [round(v, 4) for v in pooled],
                           "per_pair": [[round(v, 4) for v in s] for s in single]}
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("variants", "recipe", "attention"))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--task", choices=TASK_VARIANTS, default="home",
                        help="attention, recipe: the web task's variant (attention: whose conflicting split)")
    parser.add_argument("--class-specific", action="store_true",
                        help="attention: the control prompt sets get one CoOp context per class")
    args = parser.parse_args()
    if args.seed in VERDICT_SEEDS:
        raise SystemExit(f"seeds {', '.join(map(str, VERDICT_SEEDS))} are the gates' verdict seeds (v1, v2, v3): "
                         "development runs never use them")
    torch.set_num_threads(args.threads)
    backbone = load_backbone("synth-web")
    if args.part == "attention":
        settings = replace(bias_gates.SETTINGS, task=args.task, class_specific=args.class_specific)
        run_attention(backbone, args.seed, settings=settings)
        return
    if args.part == "recipe":
        run_recipe(backbone, args.seed, args.task)
        return
    run_variants(backbone, args.seed)


if __name__ == "__main__":
    main()
