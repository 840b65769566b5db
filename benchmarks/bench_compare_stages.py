"""Where the time of one ``/compare`` goes, without the web server: ``analyze`` stage by stage, then the app's
``present`` (the pictures shrunk for the browser, the overlays, and the comparison figure drawn and saved as PNG).

    python benchmarks/bench_compare_stages.py [--reps 3] [--classes 10] [--device cpu|cuda]

Two random CoOp prompt sets on ``ViT-B-16-random``, one 480 x 640 picture, segmenter ``cam``, Grad-CAM: the
app's default comparison. One untimed call first (it encodes the class prompts, which later calls reuse),
then ``--reps`` calls; the medians of each stage and its share of the total are printed, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dapt_core.analysis import analyze  # noqa: E402
from dapt_core.app_support.compare import present  # noqa: E402
from dapt_core.backbones import load_backbone  # noqa: E402
from dapt_core.learners import build_learner  # noqa: E402

BACKBONE = "ViT-B-16-random"
IMAGE_SHAPE = (480, 640, 3)
DISPLAY_SIDE = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the model runs")
    args = parser.parse_args()
    load_before = list(os.getloadavg())
    backbone = load_backbone(BACKBONE, device=args.device)
    names = [f"class {i}" for i in range(args.classes)]
    sets = []
    for seed in range(2):
        torch.manual_seed(seed)
        sets.append((f"coop {seed}", build_learner("coop", backbone, names)))
    rng = np.random.default_rng(0)
    image = (rng.random(IMAGE_SHAPE) * 80).astype(np.uint8)
    image[120:360, 200:440] = (220, 60, 40)
    stages: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        for rep in range(args.reps + 1):
            result = analyze(image, sets, segmenter="cam", cam_method="gradcam")
            started = time.perf_counter()
            present(result, ["a", "b"], "two prompt sets", Path(tmp) / f"figure-{rep}.png", DISPLAY_SIDE)
            timings = {**result.timings, "present": time.perf_counter() - started}
            timings["all"] = timings["total"] + timings["present"]
            if rep:  # the first call encodes the class prompts
                for name, seconds in timings.items():
                    stages.setdefault(name, []).append(seconds)
    medians = {name: statistics.median(values) for name, values in stages.items()}
    for name, seconds in medians.items():
        print(f"{name:8s}: {seconds:7.3f} s  ({seconds / medians['all']:.0%} of analyze + present)")
    print(json.dumps({"backbone": BACKBONE, "device": str(backbone.device), "classes": args.classes, "reps": args.reps,
                      "threads": torch.get_num_threads(), "load_average_before": load_before,
                      "load_average_after": list(os.getloadavg()),
                      "median_s": {k: round(v, 3) for k, v in medians.items()}}))


if __name__ == "__main__":
    main()
