"""Throughput of the synthetic world: scenes per second on one core.

Usage: python3 benchmarks/bench_world.py [--n 3000] [--size 64] [--seed 0]

Prints one plain line, then one JSON line with the same figures (for scripts that collect results).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Pin numerical libraries to one thread before they are imported, so the figure is per core.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import cv2  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dapt_core.world import iter_scenes  # noqa: E402

# Scenes rendered before timing starts, so caches and lazy imports do not count.
WARMUP_SCENES = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="scenes to time")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="generation seed")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    for _ in iter_scenes(WARMUP_SCENES, seed=args.seed + 1, size=args.size):
        pass
    start = time.perf_counter()
    count = sum(1 for _ in iter_scenes(args.n, seed=args.seed, size=args.size))
    elapsed = time.perf_counter() - start
    rate = count / elapsed
    print(f"synthetic world: {count} scenes at {args.size} px in {elapsed:.2f} s = {rate:.0f} images/s (1 thread)")
    print(json.dumps({"benchmark": "synth_world", "size": args.size, "n": count, "seconds": round(elapsed, 4),
                      "images_per_second": round(rate, 1), "threads": 1}))


if __name__ == "__main__":
    main()
