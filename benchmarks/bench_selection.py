"""The data-efficient setting on the synthetic world: test accuracy of CoOp trained on a selected share.

Usage: python benchmarks/bench_selection.py [--shots 16] [--fractions 0.1 0.25 0.5] [--seeds 1 2 3]
                                            [--methods uniform herding kcenter uncertainty] [--epochs 5]
                                            [--ctx-init "a photo of a" | --random-ctx]

Builds a synthetic few-shot task (``dapt_core.world.make_task``: ``--shots`` training scenes per class, each
object on its paired background; the test split is ``test_balanced``, backgrounds independent of the object),
writes it as an image folder, and on the bundled ``synth-mini`` backbone trains CoOp (plain objective, last
epoch kept; context initialised from "a photo of a", so every run starts at zero-shot CLIP, or random with
``--random-ctx``) on the share of the training draw each selection method keeps, once per seed (the seed drives
the selection, the prompt initialisation and the shuffling). A run on every image (fraction 1.0) and zero-shot
CLIP are the references. Prints a table of mean and std of the test accuracy over seeds and the selection's
seconds, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dapt_core.backbones import load_backbone
from dapt_core.constants import ZERO_SHOT_CONTEXT
from dapt_core.data.folders import load_imagefolder
from dapt_core.learners import build_learner
from dapt_core.objective import DaptConfig
from dapt_core.selection import SELECT_METHODS, SelectionConfig, select_samples
from dapt_core.train import TrainConfig, evaluate, train_prompts
from dapt_core.world.export import export_imagefolder
from dapt_core.world.task import make_task

BACKBONE = "synth-mini"
TASK_SEED = 0


def run_one(backbone, splits, cfg: SelectionConfig, epochs: int, options: dict) -> dict:
    started = time.perf_counter()
    kept, record = select_samples(splits.train, cfg, backbone=backbone, classnames=splits.classnames)
    select_s = time.perf_counter() - started
    learner = build_learner("coop", backbone, splits.classnames, **options)
    train_prompts(learner, kept, TrainConfig(epochs=epochs, seed=cfg.seed, selection="last"), DaptConfig(),
                  progress=False)
    accuracy = evaluate(learner, splits.test)["accuracy"]
    return {"method": cfg.method, "fraction": cfg.fraction, "seed": cfg.seed, "kept": record["kept"],
            "of": record["of"], "accuracy": accuracy, "select_s": round(select_s, 3)}


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["fraction"]), []).append(r)
    out = []
    for (method, fraction), runs in groups.items():
        acc = [r["accuracy"] for r in runs]
        out.append({"method": method, "fraction": fraction, "kept": runs[0]["kept"], "of": runs[0]["of"],
                    "mean": round(statistics.mean(acc), 2), "std": round(statistics.pstdev(acc), 2),
                    "select_s": round(statistics.mean(r["select_s"] for r in runs), 3), "seeds": len(runs)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=16, help="training scenes per class in the task")
    parser.add_argument("--n-test", type=int, default=20, help="test scenes per class")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--methods", nargs="+", choices=SELECT_METHODS, default=list(SELECT_METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--random-ctx", action="store_true", help="CoOp's random context instead of the init words")
    args = parser.parse_args()
    options = {} if args.random_ctx else {"ctx_init": ZERO_SHOT_CONTEXT}
    task = make_task(TASK_SEED, args.shots, n_test=args.n_test)
    backbone = load_backbone(BACKBONE, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export_imagefolder(task.train, root / "train", root / "masks" / "train")
        export_imagefolder(task.test_balanced, root / "test", root / "masks" / "test")
        splits = load_imagefolder(root)
        zero_shot = evaluate(build_learner("coop", backbone, splits.classnames, ctx_init=ZERO_SHOT_CONTEXT),
                             splits.test)["accuracy"]
        rows = []
        for seed in args.seeds:
            rows.append(run_one(backbone, splits, SelectionConfig(fraction=1.0, seed=seed), args.epochs, options))
            for method in args.methods:
                for fraction in args.fractions:
                    rows.append(run_one(backbone, splits, SelectionConfig(fraction=fraction, method=method,
                                                                          seed=seed), args.epochs, options))
    table = summarise(rows)
    print(f"synthetic task: {len(splits.classnames)} classes x {args.shots} shots, test_balanced "
          f"{len(splits.test)} images; zero-shot {zero_shot:.2f}%; CoOp {args.epochs} epochs "
          f"({'random' if args.random_ctx else ZERO_SHOT_CONTEXT!r} context), seeds {args.seeds}")
    print(f"{'method':12s} {'fraction':>8s} {'kept':>9s} {'accuracy %':>14s} {'select s':>9s}")
    for r in table:
        print(f"{r['method']:12s} {r['fraction']:>8g} {r['kept']:>4d}/{r['of']:<4d} "
              f"{r['mean']:>7.2f} ± {r['std']:<5.2f} {r['select_s']:>9.3f}")
    print(json.dumps({"backbone": BACKBONE, "shots": args.shots, "epochs": args.epochs, "zero_shot": zero_shot,
                      "context": "random" if args.random_ctx else ZERO_SHOT_CONTEXT, "summary": table, "runs": rows}))


if __name__ == "__main__":
    main()
