"""Cost of the SAM segmenter on this machine: a new image (encoder + prompts) vs a cached one (prompts only).

Usage: python3 benchmarks/bench_sam.py [--model vit_b] [--size 480] [--repeats 1] [--device cpu]

The model is architecture-exact (``sam_model_registry[model](checkpoint=None)``) with RANDOM weights: the
time does not depend on the values of the weights. Prints one line per figure, then one JSON line with the
same figures (for scripts that collect results).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segment_anything import sam_model_registry  # noqa: E402

from dapt_core.segment import SegmentContext  # noqa: E402
from dapt_core.segment.sam import SamSegmenter  # noqa: E402
from dapt_core.world import render_scene  # noqa: E402

CAM_BLUR_SHARE = 0.05  # the fake CAM is the object mask blurred by this share of the image side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    parser.add_argument("--size", type=int, default=480, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=1, help="new images to time (each also timed cached)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    start = time.perf_counter()
    model = sam_model_registry[args.model](checkpoint=None).to(args.device).eval()
    build = time.perf_counter() - start
    segmenter = SamSegmenter(args.model, model=model)
    estimate_before = segmenter.estimated_seconds((args.size, args.size, 3))
    rng = np.random.default_rng(0)
    firsts, encoders, cached, cpu = [], [], [], []
    for _ in range(args.repeats):
        scene = render_scene("star", "grass", args.size, rng)
        cam = cv2.GaussianBlur(scene.mask.astype(np.float32), (0, 0), sigmaX=CAM_BLUR_SHARE * args.size)
        ctx = SegmentContext(cam=cam / cam.max())
        cpu_start = time.process_time()
        first = segmenter.segment(scene.image, ctx)
        cpu.append(time.process_time() - cpu_start)
        again = segmenter.segment(scene.image, ctx)
        assert not first.info["embedding_cached"] and again.info["embedding_cached"]
        firsts.append(first.seconds)
        encoders.append(first.info["encoder_seconds"])
        cached.append(again.seconds)
    figures = {
        "benchmark": "sam_segmenter", "model": args.model, "device": args.device, "image_size": args.size,
        "threads": torch.get_num_threads(), "repeats": args.repeats, "build_seconds": round(build, 3),
        "estimate_before_seconds": round(estimate_before, 3),
        "first_call_seconds": round(float(np.median(firsts)), 3),
        "encoder_seconds": round(float(np.median(encoders)), 3),
        "first_call_cpu_seconds": round(float(np.median(cpu)), 3),
        "cached_call_seconds": round(float(np.median(cached)), 3),
        "queries": len(segmenter.config.queries),
        "estimate_after_seconds": round(segmenter.estimated_seconds((args.size, args.size, 3)), 3),
    }
    print(f"SAM {args.model} build (random weights): {figures['build_seconds']:.2f} s")
    print(f"new image, whole segment call: {figures['first_call_seconds']:.2f} s "
          f"(encoder {figures['encoder_seconds']:.2f} s) on {args.device}, {figures['threads']} threads")
    print(f"new image, CPU time of the process (all threads): {figures['first_call_cpu_seconds']:.1f} s "
          "(wall time on an idle machine is about this divided by the threads)")
    print(f"same image again (embedding cached, {figures['queries']} prompt queries): "
          f"{figures['cached_call_seconds']:.3f} s")
    print(f"estimate before any run: {figures['estimate_before_seconds']:.1f} s; "
          f"after: {figures['estimate_after_seconds']:.1f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
