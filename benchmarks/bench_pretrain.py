"""Pre-training step time of the bundled mini-CLIP's recipe with each attention kernel and precision.

Usage: python3 benchmarks/bench_pretrain.py [--steps 15] [--batch-size 256] [--threads 2]
                                            [--precisions bf16 fp32] [--attention math auto]

Runs ``dapt_core.minclip.pretrain`` from scratch for ``--steps`` steps (no probes, nothing saved) once per
precision and attention kernel, all in one process one after another, and reports seconds per step (rendering
the scenes included) and each kernel's time relative to ``auto`` (PyTorch's own pick) at the same precision.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dapt_core.minclip.config import PretrainConfig
from dapt_core.minclip.pretrain import ATTENTION, pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="optimiser steps per run")
    parser.add_argument("--batch-size", type=int, default=PretrainConfig.batch_size)
    parser.add_argument("--threads", type=int, default=PretrainConfig.threads, help="torch CPU threads")
    parser.add_argument("--precisions", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"])
    parser.add_argument("--attention", nargs="+", choices=sorted(ATTENTION), default=["math", "auto"])
    args = parser.parse_args()
    base = replace(PretrainConfig(), steps=args.steps, batch_size=args.batch_size, threads=args.threads,
                   eval_every=0)
    rows = []
    for precision in args.precisions:
        for attention in args.attention:
            summary = pretrain(replace(base, precision=precision, attention=attention), progress=False)
            rows.append({"precision": precision, "attention": attention,
                         "s_per_step": round(summary["wall_s"] / args.steps, 3)})
    auto = {r["precision"]: r["s_per_step"] for r in rows if r["attention"] == "auto"}
    print(f"pre-training, batch {args.batch_size}, {args.steps} steps per run, {args.threads} threads")
    print("| precision | attention | s per step | vs auto |")
    print("|---|---|---|---|")
    for row in rows:
        ref = auto.get(row["precision"])
        row["vs_auto"] = round(row["s_per_step"] / ref, 2) if ref else None
        ratio = f"{row['vs_auto']:.2f}x" if ref else ""
        print(f"| {row['precision']} | {row['attention']} | {row['s_per_step']:.2f} | {ratio} |")
    print(json.dumps({"benchmark": "synth_pretrain", "batch_size": args.batch_size, "steps": args.steps,
                      "threads": args.threads, "runs": rows}))


if __name__ == "__main__":
    main()
