"""Peak memory of importing an official MaPLe/DAPT checkpoint that holds the whole ViT-B/16 CustomCLIP.

Usage: python benchmarks/bench_import.py [--classes 1000] [--keep DIR]

Writes a synthetic ``model-best.pth.tar`` in the layout of Dassl's ``save_checkpoint``: the state dict of the
whole CustomCLIP (random ViT-B/16 CLIP weights as ``image_encoder.*`` / ``text_encoder.*``, MaPLe's prompt
learner with ``token_prefix``/``token_suffix`` for ``--classes`` classes), an SGD optimizer over every
parameter, and Dassl's constant warm-up scheduler wrapping a cosine one (its state dict pickles the cosine
scheduler and the optimizer). Then, each in a fresh process, it measures the peak resident memory (Linux
``VmHWM``, reset through ``/proc/self/clear_refs`` after the imports) of:

- ``read (mmap)``: ``dapt_core.official.read_official_prompts``, the importer's reader;
- ``read (no mmap)``: the same restricted unpickler reading every storage into memory, for comparison;
- ``import_official``: the whole command path onto a random ViT-B/16 backbone (loaded before the reset).

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BACKBONE = "openclip:ViT-B-16-quickgelu"  # no tag: random weights of the official architecture
CLASSES = ["dog", "cat", "fish"]
MIB = 1024 * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


def _dassl_scheduler(optimizer, successor, warmup_epoch: int, cons_lr: float):
    """Dassl's ConstantWarmupScheduler (constant rate for ``warmup_epoch`` epochs, then ``successor``); its
    state dict, what Dassl saves, holds ``successor`` as an object."""
    from torch.optim.lr_scheduler import LRScheduler

    class ConstantWarmupScheduler(LRScheduler):
        def __init__(self):
            self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
            super().__init__(optimizer)

        def get_lr(self):
            return [self.cons_lr for _ in self.base_lrs]

    return ConstantWarmupScheduler()


def write(path: Path, n_classes: int) -> None:
    import torch

    from dapt_core.backbones import load_backbone
    from dapt_core.learners import build_learner

    backbone = load_backbone(BACKBONE, device="cpu")
    learner = build_learner("maple", backbone, CLASSES)
    width = backbone.text_width
    state = {f"prompt_learner.{k}": v for k, v in learner.state_dict().items()}
    state["prompt_learner.token_prefix"] = torch.randn(n_classes, 1, width)
    state["prompt_learner.token_suffix"] = torch.randn(n_classes, 76 - learner.n_ctx, width)
    state.update((f"image_encoder.{k}", v) for k, v in backbone.visual.state_dict().items())
    state.update((f"text_encoder.{k}", v) for k, v in backbone.model.transformer.state_dict().items())
    state["logit_scale"] = backbone.model.logit_scale.detach()
    optimizer = torch.optim.SGD(list(learner.parameters()) + list(backbone.model.parameters()), lr=0.0035,
                                momentum=0.9)
    scheduler = _dassl_scheduler(optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 10.0), 1, 1e-5)
    torch.save({"state_dict": state, "epoch": 5, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "val_result": 70.0}, path)


def measure(mode: str, path: Path, out: Path) -> None:
    import torch

    from dapt_core import official

    backbone = None
    if mode == "import_official":
        from dapt_core.backbones import load_backbone

        backbone = load_backbone(BACKBONE, device="cpu")
    _reset_peak()
    before = _status_kib("VmRSS")
    if mode == "read (mmap)":
        state, _ = official.read_official_prompts(path)
    elif mode == "read (no mmap)":
        raw = official.load_official(path, mmap=False)  # every storage in memory, then the same selection
        prefix = official.OFFICIAL_PREFIX
        state = {k[len(prefix):]: v.clone() for k, v in raw["state_dict"].items()
                 if k.startswith(prefix) and k[len(prefix):] not in official.DROPPED_OFFICIAL_KEYS}
    else:
        official.import_official(path, backbone, CLASSES, out)
        state = None
    peak = _status_kib("VmHWM")
    if state is None:  # measured after the peak was read: only to report the prompts' size
        state = official.read_official_prompts(path)[0]
    n_bytes = sum(v.numel() * v.element_size() for v in state.values())
    print(json.dumps({"mode": mode, "rss_before_mib": round(before / 1024, 1),
                      "peak_increase_mib": round((peak - before) / 1024, 1),
                      "prompt_mib": round(n_bytes / MIB, 2), "torch": torch.__version__}))


def _child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000, help="classes of token_prefix/suffix (ImageNet)")
    parser.add_argument("--keep", default=None, help="write the checkpoint here and keep it")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "FILE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--write", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        write(Path(args.write), args.classes)
        return
    if args.child:
        measure(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        src = folder / "model-best.pth.tar"
        subprocess.run([sys.executable, __file__, "--write", str(src), "--classes", str(args.classes)],
                       check=True)
        file_mib = src.stat().st_size / MIB
        rows = [_child(mode, str(src), str(folder / "imported.safetensors"))
                for mode in ("read (mmap)", "read (no mmap)", "import_official")]
    print(f"checkpoint: {file_mib:.0f} MiB ({args.classes} classes in token_prefix/suffix)")
    print(f"{'mode':18s} {'RSS before':>12s} {'peak increase':>14s} {'prompts':>9s}")
    for r in rows:
        print(f"{r['mode']:18s} {r['rss_before_mib']:>8.0f} MiB {r['peak_increase_mib']:>10.1f} MiB "
              f"{r['prompt_mib']:>5.2f} MiB")
    print(json.dumps({"file_mib": round(file_mib, 1), "classes": args.classes, "rows": rows}))


if __name__ == "__main__":
    main()
