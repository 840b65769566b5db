"""Time of ``analyze`` with two CoOp prompt sets on the ViT-B/16 architecture: shared vs separate image forwards.

Usage: python3 benchmarks/bench_analyze.py [--reps 5] [--classes 10] [--device cpu] [--threads 0]

Random weights (``ViT-B-16-random``) are enough for timing: the arithmetic is that of CLIP ViT-B/16. Each mode
runs once untimed, then ``--reps`` times, the two modes taking turns; the medians and their ratio are printed, then one JSON line. Class
text features are cached per prompt set, so the very first call (timed on its own) pays for the text tower and
the timed runs do not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dapt_core.analysis import analyze  # noqa: E402
from dapt_core.backbones import load_backbone  # noqa: E402
from dapt_core.learners import build_learner  # noqa: E402

BACKBONE = "ViT-B-16-random"
IMAGE_SHAPE = (480, 640, 3)  # a typical photo; it is squashed to 224 x 224 anyway
SEGMENTER = "cam"
N_PROMPT_SETS = 2
STAGES = ("text", "forward", "cam", "segment", "total")
MODES = {"shared": True, "separate": False}  # share_forward of each mode


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = (rng.random(IMAGE_SHAPE) * 80).astype(np.uint8)
    image[120:360, 200:440] = (220, 60, 40)  # an object for the segmenter to find
    return image


def _time_modes(image: np.ndarray, sets: list, reps: int) -> dict[str, dict[str, float]]:
    """Median stage times per mode; the modes alternate run by run, so a busy machine slows both alike."""
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for mode, share in MODES.items():
        analyze(image, sets, segmenter=SEGMENTER, share_forward=share)  # warm-up: lazy imports, allocator
    for _ in range(reps):
        for mode, share in MODES.items():
            runs[mode].append(analyze(image, sets, segmenter=SEGMENTER, share_forward=share).timings)
    return {mode: {stage: statistics.median(run.get(stage, 0.0) for run in found) for stage in STAGES}
            for mode, found in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per mode")
    parser.add_argument("--classes", type=int, default=10, help="number of classes of the prompt sets")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone(BACKBONE, device=args.device)
    classes = [f"class {i}" for i in range(args.classes)]
    sets = []
    for seed in range(N_PROMPT_SETS):
        torch.manual_seed(seed)
        sets.append((f"coop {seed}", build_learner("coop", backbone, classes)))
    image = _image(0)
    first = analyze(image, sets, segmenter=SEGMENTER).timings
    print(f"first call (text features computed): text {first['text']:.3f}, total {first['total']:.3f} (seconds)")
    results = _time_modes(image, sets, args.reps)
    for mode in MODES:
        stages = ", ".join(f"{s} {results[mode][s]:.3f}" for s in STAGES)
        print(f"{mode:8s} forwards: median of {args.reps}: {stages} (seconds)")
    image_part = {m: results[m]["forward"] + results[m]["cam"] for m in results}
    ratio_total = results["separate"]["total"] / results["shared"]["total"]
    ratio_image = image_part["separate"] / image_part["shared"]
    print(f"separate / shared: total {ratio_total:.2f}x, image forward + CAM {ratio_image:.2f}x "
          f"({N_PROMPT_SETS} CoOp sets, {args.classes} classes, {BACKBONE} on {backbone.device}, "
          f"{torch.get_num_threads()} threads)")
    print(json.dumps({"benchmark": "analyze_shared_forward", "backbone": BACKBONE, "device": str(backbone.device),
                      "threads": torch.get_num_threads(), "prompt_sets": N_PROMPT_SETS, "classes": args.classes,
                      "reps": args.reps, "segmenter": SEGMENTER,
                      "first_call_seconds": {s: round(first.get(s, 0.0), 4) for s in STAGES},
                      "median_seconds": {m: {s: round(v, 4) for s, v in r.items()} for m, r in results.items()},
                      "ratio_total": round(ratio_total, 3), "ratio_image_forward_cam": round(ratio_image, 3)}))


if __name__ == "__main__":
    main()
