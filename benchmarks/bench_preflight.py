"""What the checks before training cost: preflight.check_images against decoding every image in full.

Usage: python3 benchmarks/bench_preflight.py [--images 1600] [--size 500 375] [--runs 3]

Writes ``--images`` photos-like images (half PNG, half JPEG, ``--size`` pixels) into a temporary folder, then
times (median of ``--runs``) :func:`dapt_core.preflight.check_images` (header, PNG checksums, JPEG at 1/8), the
same check again on the unchanged files (train_prompts repeats the CLI's check: a stat per file) and
:func:`dapt_core.imageio.load_image` on each file, the full decode one epoch pays per image. 1600 images is a
16-shot run on 100 classes. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
from dapt_core.data.records import Sample  # noqa: E402
from dapt_core.imageio import load_image  # noqa: E402
from dapt_core import preflight  # noqa: E402
from dapt_core.preflight import check_images  # noqa: E402


def _write_images(folder: Path, n: int, size: tuple[int, int]) -> list[Sample]:
    rng = np.random.default_rng(0)
    base = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    samples = []
    for i in range(n):
        # a smooth gradient plus noise compresses like a photo, not like pure noise
        image = np.clip(base // 4 + np.linspace(0, 190, size[0], dtype=np.uint8)[None, :, None] + i % 7, 0, 255)
        path = folder / f"{i:05d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(image.astype(np.uint8)).save(path)
        samples.append(Sample(path, 0, "x"))
    return samples


def _median_s(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1600)
    parser.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        samples = _write_images(Path(folder), args.images, tuple(args.size))
        check_s = _median_s(lambda: (preflight._PASSED.clear(), check_images(samples)), args.runs)
        again_s = _median_s(lambda: check_images(samples), args.runs)  # unchanged files: one stat each
        decode_s = _median_s(lambda: [load_image(s.path) for s in samples], args.runs)
    result = {"images": args.images, "size": list(args.size), "check_s": round(check_s, 3),
              "again_s": round(again_s, 3), "full_decode_s": round(decode_s, 3), "check_ms_per_image": round(1000 * check_s / args.images, 3),
              "check_share_of_decode": round(check_s / decode_s, 3)}
    print(f"{'what':28s} {'seconds':>8s} {'ms/image':>9s}")
    print(f"{'check_images':28s} {check_s:8.3f} {1000 * check_s / args.images:9.3f}")
    print(f"{'check_images, files checked':28s} {again_s:8.3f} {1000 * again_s / args.images:9.3f}")
    print(f"{'load_image (full decode)':28s} {decode_s:8.3f} {1000 * decode_s / args.images:9.3f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
