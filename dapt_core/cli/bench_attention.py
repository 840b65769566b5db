"""``python -m dapt_core bench attention``: every attribution method x prompt set on conflicting synthetic scenes.

The parser is built without torch (the method names come from :mod:`dapt_core.attention.descriptions`); the
benchmark itself is :mod:`dapt_core.experiments.attention_bench`.
"""

from __future__ import annotations

import argparse
import logging

from dapt_core import paths
from dapt_core.cli.common import CAM_METHOD_NAMES, add_backbone_args, print_json

log = logging.getLogger(__name__)

DEFAULT_NAME = "attention_bench"
DEFAULT_PER_CLASS = 10  # 110 scenes per seed: three seeds fit about ten CPU minutes on synth-mini
DEFAULT_STEPS = 8  # deletion/insertion points after the start (dapt_core.attention.faithfulness.DEFAULT_STEPS)
DEFAULT_THREADS = 1  # the models are small; on a shared CPU more threads mostly add contention


def add_attention_parser(bsub: argparse._SubParsersAction) -> None:
    """Adds ``attention`` to the ``bench`` sub-commands."""
    p = bsub.add_parser("attention", help="attribution methods on conflicting scenes with exact masks",
                        description="Every attribution method on every prompt set, on synthetic scenes whose "
                                    "objects sit on backgrounds other than the ones the prompt sets were "
                                    "trained with: pointing game, energy share on the object and its lift over "
                                    "the object's area share, top-k intersection, deletion/insertion AUC. "
                                    "Writes <name>.md/.png/.json; the last stdout line is a JSON object of the "
                                    "per-method means.")
    add_backbone_args(p, "synth-mini")
    p.add_argument("--seed", type=int, nargs="+", default=[1, 2, 3], help="scene seeds; default: 1 2 3")
    p.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS,
                   help="scenes per object class and seed; default: %(default)s")
    p.add_argument("--prompts", nargs="+", default=None, metavar="CKPT",
                   help="prompt sets (.safetensors); default: every one in checkpoints/prompts for the backbone")
    p.add_argument("--methods", nargs="+", choices=CAM_METHOD_NAMES, default=list(CAM_METHOD_NAMES),
                   help="attribution methods; default: all")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="deletion/insertion steps; default: %(default)s")
    p.add_argument("--top-k", type=int, default=None,
                   help="top-k intersection's k in pixels; default: the object's area")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch CPU threads; default: %(default)s")
    p.add_argument("--out", default=str(paths.PROJECT_DIR / "docs" / "results"),
                   help="results folder; default: docs/results")
    p.add_argument("--name", default=DEFAULT_NAME, help="file stem; default: %(default)s")
    p.set_defaults(func=run_bench_attention)

    p = bsub.add_parser("attention-readme", help="copy the attention benchmark's table into README.md",
                        description="Replace the lines between README.md's attention-bench markers with the "
                                    "per-method table of a `bench attention` result.")
    p.add_argument("--result", default=str(paths.PROJECT_DIR / "docs" / "results" / f"{DEFAULT_NAME}.json"),
                   help="result JSON; default: docs/results/attention_bench.json")
    p.add_argument("--readme", default=str(paths.PROJECT_DIR / "README.md"), help="file to update")
    p.set_defaults(func=run_attention_readme)


def run_bench_attention(args: argparse.Namespace) -> int:
    import torch

    from dapt_core.experiments.attention_bench import AttentionBenchConfig, run_attention_bench, write_report
    from dapt_core.experiments.attention_bench_report import method_means

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    cfg = AttentionBenchConfig(backbone=args.backbone, weights=args.weights, device=args.device,
                               prompt_sets=tuple(args.prompts or ()), methods=tuple(args.methods),
                               seeds=tuple(args.seed), per_class=args.per_class, steps=args.steps, top_k=args.top_k)
    torch.set_num_threads(args.threads)
    result = run_attention_bench(cfg)
    written = write_report(result, args.out, args.name)
    log.info("wrote %s", ", ".join(written.values()))
    means = method_means(result)
    print_json({"backbone": result["backbone"], "n_scenes": result["n_scenes"], "seeds": list(cfg.seeds),
                "cpu_seconds": result["cpu_seconds"],
                "methods": {m: {"pointing": v["pointing"], "lift": v["lift"]} for m, v in means.items()}})
    return 0


def run_attention_readme(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from dapt_core.experiments.attention_bench_report import README_MARKERS, readme_block
    from dapt_core.experiments.background_shift_report import replace_marked
    from dapt_core.fileio import write_bytes_atomic

    try:
        result = json.loads(Path(args.result).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the attention benchmark result {args.result}: {err}") from err
    readme = Path(args.readme)
    text = replace_marked(readme.read_text(encoding="utf-8"), readme_block(result), README_MARKERS)
    write_bytes_atomic(readme, text.encode("utf-8"))
    print_json({"readme": str(readme), "result": args.result})
    return 0
