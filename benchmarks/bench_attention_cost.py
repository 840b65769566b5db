"""Cost per image of every attribution method on the ViT-B/16 architecture, CoOp and MaPLe, on the CPU.

Usage: python3 benchmarks/bench_attention_cost.py [--reps 3] [--batch 2] [--classes 10] [--threads 0]

Random weights (``ViT-B-16-random``) are enough for timing: the arithmetic is that of CLIP ViT-B/16 at 224 px
(MaPLe at the official depth 9, two prompt tokens). Class text features are computed once per learner and
passed in, so only the image side is timed. Each method runs once untimed, then ``--reps`` times, the methods
taking turns so a busy machine slows all alike; the median seconds per image and the ratio to Grad-CAM (the
official cue) are printed per learner, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dapt_core.attention.cam import CAM_METHODS, compute_cams  # noqa: E402
from dapt_core.backbones import load_backbone  # noqa: E402
from dapt_core.learners import build_learner  # noqa: E402

BACKBONE = "ViT-B-16-random"
REFERENCE = "gradcam"


def _time_methods(learner, images: torch.Tensor, text: torch.Tensor, reps: int) -> dict[str, float]:
    """Median seconds per image of each method."""
    targets = [0] * images.shape[0]
    for method in CAM_METHODS:
        compute_cams(learner, images, targets, method=method, text_features=text)  # warm-up
    runs: dict[str, list[float]] = {method: [] for method in CAM_METHODS}
    for _ in range(reps):
        for method in CAM_METHODS:
            tick = time.perf_counter()
            compute_cams(learner, images, targets, method=method, text_features=text)
            runs[method].append((time.perf_counter() - tick) / images.shape[0])
    return {method: statistics.median(seconds) for method, seconds in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per method")
    parser.add_argument("--batch", type=int, default=2, help="images per call")
    parser.add_argument("--classes", type=int, default=10, help="number of classes of the prompt sets")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone(BACKBONE, device="cpu")
    classes = [f"class {i}" for i in range(args.classes)]
    images = torch.randn(args.batch, 3, backbone.image_size, backbone.image_size,
                         generator=torch.Generator().manual_seed(0))
    found = {}
    for kind in ("coop", "maple"):
        torch.manual_seed(0)
        learner = build_learner(kind, backbone, classes)
        with torch.no_grad():
            text = learner.text_features()
        seconds = _time_methods(learner, images, text, args.reps)
        found[kind] = {m: {"seconds_per_image": round(s, 4), "ratio_to_gradcam": round(s / seconds[REFERENCE], 3)}
                       for m, s in seconds.items()}
        print(f"{kind} (threads {torch.get_num_threads()}, batch {args.batch}, {args.reps} reps):")
        for method, row in found[kind].items():
            print(f"  {method:10s} {row['seconds_per_image']:8.3f} s/image  {row['ratio_to_gradcam']:6.2f}x gradcam")
    print(json.dumps({"backbone": BACKBONE, "device": "cpu", "threads": torch.get_num_threads(),
                      "batch": args.batch, "reps": args.reps, "methods": found}))


if __name__ == "__main__":
    main()
