"""Time of one training step for CoOp, MaPLe and each with DAPT, and DAPT's batched three-view encoder call
against three sequential calls. Random weights of the chosen architecture are enough for timing.

    python benchmarks/bench_train.py [--backbone ViT-B-16-random] [--classes 10] [--batch 4] [--repeats 3]

Prints one line per measurement and a final JSON line. Ratios are taken within one run.
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

from dapt_core.backbones import load_backbone  # noqa: E402
from dapt_core.learners import build_learner  # noqa: E402
from dapt_core.objective import DaptConfig, dapt_losses  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-B-16-random")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    backbone = load_backbone(args.backbone, device=args.device)
    size = backbone.image_size
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, size, size, device=backbone.device)
    masks = (torch.rand(args.batch, 1, size, size, device=backbone.device) > 0.5).float()
    labels = torch.randint(0, args.classes, (args.batch,), device=backbone.device)
    classnames = [f"class {i}" for i in range(args.classes)]
    results: dict[str, float] = {}
    for kind in ("coop", "maple"):
        for cue in ("off", "mask"):
            learner = build_learner(kind, backbone, classnames)
            optimizer = torch.optim.SGD(learner.parameters(), lr=0.0035)
            cfg = DaptConfig(cue=cue, schedule="joint")

            def step():
                with backbone.autocast():
                    terms = dapt_losses(learner, images, masks, labels, 0, cfg)
                optimizer.zero_grad()
                terms["total"].backward()
                optimizer.step()

            name = kind if cue == "off" else f"{kind}+dapt"
            results[f"step_s/{name}"] = median_seconds(step, args.repeats)
            print(f"one training step, {name:11s}: {results[f'step_s/{name}']:.3f} s", flush=True)

        learner = build_learner(kind, backbone, classnames)
        fg, bg = images * masks, images * (1 - masks)

        def batched():
            learner.encode_image(torch.cat([images, fg, bg])).sum().backward()

        def sequential():
            sum(learner.encode_image(x).sum() for x in (images, fg, bg)).backward()

        if kind == "coop":  # the frozen tower has nothing to back-propagate into: time the forward only
            def batched():  # noqa: F811
                with torch.no_grad():
                    learner.encode_image(torch.cat([images, fg, bg]))

            def sequential():  # noqa: F811
                with torch.no_grad():
                    for x in (images, fg, bg):
                        learner.encode_image(x)

        b, s = median_seconds(batched, args.repeats), median_seconds(sequential, args.repeats)
        results[f"three_views_batched_s/{kind}"] = b
        results[f"three_views_sequential_s/{kind}"] = s
        results[f"batched_over_sequential/{kind}"] = b / s
        print(f"three views, {kind}: batched {b:.3f} s, sequential {s:.3f} s, ratio {b / s:.2f}", flush=True)
    for kind in ("coop", "maple"):
        results[f"dapt_over_base/{kind}"] = results[f"step_s/{kind}+dapt"] / results[f"step_s/{kind}"]
    print(json.dumps({"backbone": args.backbone, "device": str(backbone.device), "batch": args.batch,
                      "classes": args.classes, "threads": torch.get_num_threads(),
                      **{k: round(v, 4) for k, v in results.items()}}))


if __name__ == "__main__":
    main()
