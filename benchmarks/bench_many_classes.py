"""Peak memory and time of ``analyze`` with a long class list (5,000 classes by default) on the ViT-B/16
architecture: the class prompts' text features in chunks (the library's path) against one text batch.

    python benchmarks/bench_many_classes.py [--classes 5000] [--modes chunked batched plain] [--sets 2]
                                            [--out FILE]

Each mode runs in a fresh subprocess: it loads ``ViT-B-16-random``, builds ``--sets`` CoOp prompt sets over
``--classes`` names, then analyses one 480 x 640 picture with them (segmenter ``cam``, Grad-CAM), the first
call, which encodes every class prompt. Peak memory is the process's peak resident set during the analysis
(``VmHWM``, reset just before it through ``/proc/self/clear_refs``); the resident set before it (model and
prompt sets loaded) is printed beside it, and the growth is peak minus that. Modes:

- ``chunked``: the library as it is (exact fast text path, ``TEXT_CHUNK`` = 256 prompts per text call);
- ``batched``: the same fast text path with every prompt in one text batch (what the chunks alone save);
- ``plain``: every prompt at all 77 positions in one text batch, the path before issue 13. Memory only: every
  text block has the same sizes and frees its activations (no gradients), so the peak is reached in the
  first one, and the run stops when that block returns (a full run takes about 15 times the fast path's
  text time); its peak is a lower bound of the whole analysis's, its time is not reported.

Prints one line per mode, then one JSON line (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BACKBONE = "ViT-B-16-random"
IMAGE_SHAPE = (480, 640, 3)
MODES = ("chunked", "batched", "plain")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class _FirstBlockDone(Exception):
    """Stops the plain mode's analysis once the first text block has run (its peak is reached there)."""


def _stop_after_first_text_block(backbone) -> None:
    def hook(module, inputs, output):
        raise _FirstBlockDone

    backbone.model.transformer.resblocks[0].register_forward_hook(hook)


def _worker(mode: str, classes: int, sets: int) -> dict:
    """One analysis in this process; returns its figures."""
    import torch

    from dapt_core.analysis import analyze
    from dapt_core.backbones import load_backbone
    from dapt_core.learners import base, build_learner

    backbone = load_backbone(BACKBONE, device="cpu")
    names = [f"class {i}" for i in range(classes)]
    learners = []
    for seed in range(sets):
        torch.manual_seed(seed)
        learner = build_learner("coop", backbone, names)
        learner.fast_paths = mode != "plain"
        learners.append((f"coop {seed}", learner))
    if mode != "chunked":
        base.TEXT_CHUNK = classes  # one text batch
    if mode == "plain":
        _stop_after_first_text_block(backbone)
    rng = np.random.default_rng(0)
    image = (rng.random(IMAGE_SHAPE) * 80).astype(np.uint8)
    image[120:360, 200:440] = (220, 60, 40)
    before = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
    started = time.perf_counter()
    row = {"mode": mode, "classes": classes, "sets": sets, "rss_before_mb": round(before, 1),
           "threads": torch.get_num_threads()}
    try:
        result = analyze(image, learners, segmenter="cam")
    except _FirstBlockDone:
        return {**row, "peak_rss_mb": round(_status_mb("VmHWM"), 1), "stopped_after_first_text_block": True}
    return {**row, "peak_rss_mb": round(_status_mb("VmHWM"), 1),
            "seconds": round(time.perf_counter() - started, 2), "text_s": round(result.timings["text"], 2),
            "top1": [r.top5[0][0] for r in result.results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=5000)
    parser.add_argument("--sets", type=int, default=2, help="CoOp prompt sets analysed together")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON line to this file")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.classes, args.sets)))
        return
    load_before = list(os.getloadavg())
    rows = []
    for mode in args.modes:
        out = subprocess.run([sys.executable, __file__, "--worker", mode, "--classes", str(args.classes),
                              "--sets", str(args.sets)], check=True, capture_output=True, text=True, cwd=ROOT)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        growth = row["peak_rss_mb"] - row["rss_before_mb"]
        timing = ("stopped after the first text block: memory only" if row.get("stopped_after_first_text_block")
                  else f"{row['seconds']:.1f} s, text {row['text_s']:.1f} s")
        print(f"{mode:8s}: {row['classes']} classes x {row['sets']} sets: peak RSS {row['peak_rss_mb']:.0f} MB, "
              f"{growth:.0f} MB over the {row['rss_before_mb']:.0f} MB before the analysis ({timing})", flush=True)
    line = json.dumps({"backbone": BACKBONE, "load_average_before": load_before,
                       "load_average_after": list(os.getloadavg()), "runs": rows})
    print(line)
    if args.out:
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
