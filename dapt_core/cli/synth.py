"""``python -m dapt_core synth pretrain | zeroshot``: pre-train the bundled mini-CLIP; its zero-shot accuracy."""

from __future__ import annotations

import argparse
from dataclasses import replace

from dapt_core.cli.common import add_backbone_args, load_backbone, print_json
from dapt_core.constants import ZERO_SHOT_CONTEXT
from dapt_core.minclip.config import DEFAULT_EVAL_SEED, PretrainConfig

SYNTH_BACKBONE = "synth-mini"
ATTENTION_KERNELS = ("math", "auto")  # dapt_core.minclip.pretrain.ATTENTION
PRECISIONS = ("bf16", "fp32")
POSITIVES = ("own", "all_true")  # dapt_core.minclip.losses.clip_loss


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``synth`` and its actions to the ``python -m dapt_core`` parser."""
    p = sub.add_parser("synth", help="the synthetic world's mini-CLIP: pre-train it, measure it")
    ssub = p.add_subparsers(dest="action", required=True)
    _add_pretrain(ssub)
    zs = ssub.add_parser("zeroshot", help="zero-shot object and background accuracy; prints a JSON line",
                         description=f"Object accuracy (prompts '{ZERO_SHOT_CONTEXT} {{object}}.') and background "
                                     "accuracy (prompts 'a photo of {background phrase}.') in percent, on "
                                     "fresh scenes whose background is independent of the object.")
    add_backbone_args(zs, SYNTH_BACKBONE)
    zs.add_argument("--n", type=int, default=2000, help="number of scenes; default: %(default)s")
    zs.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED, help="seed of the scenes; default: %(default)s")
    zs.set_defaults(func=run_zeroshot)


def _add_pretrain(ssub: argparse._SubParsersAction) -> None:
    defaults = PretrainConfig()
    pre = ssub.add_parser("pretrain", help="pre-train the mini-CLIP contrastively on rendered scenes",
                          description="Train a CLIP from scratch on image-caption pairs rendered on the fly "
                                      "(backgrounds independent of objects) and write its weights as "
                                      "safetensors. The defaults reproduce "
                                      "checkpoints/synth-mini.safetensors.")
    pre.add_argument("--seed", type=int, default=defaults.seed)
    pre.add_argument("--steps", type=int, default=defaults.steps)
    pre.add_argument("--batch-size", type=int, default=defaults.batch_size)
    pre.add_argument("--lr", type=float, default=defaults.lr)
    pre.add_argument("--warmup", type=int, default=defaults.warmup_steps, help="linear warm-up steps")
    pre.add_argument("--group-size", type=int, default=defaults.group_size,
                     help="scenes per look-alike group (shared background and colour); 1 = none")
    pre.add_argument("--positives", choices=POSITIVES, default=defaults.positives,
                     help="own: one positive per image, other true captions left out; all_true: every "
                          "caption true of an image is its positive")
    pre.add_argument("--probe-head-weight", type=float, default=defaults.probe_head_weight,
                     help="weight of the auxiliary linear object/background heads on the image tower (0 = off)")
    pre.add_argument("--class-caption-weight", type=float, default=defaults.class_caption_weight,
                     help="weight of the InfoNCE against one caption per class (0 = off)")
    pre.add_argument("--model", default=defaults.model_name, help="open_clip model config; default: %(default)s")
    pre.add_argument("--eval-every", type=int, default=defaults.eval_every,
                     help="steps between quick zero-shot probes (0 = none)")
    pre.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads")
    pre.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                     help="bf16: bf16 autocast for both towers (weights and optimiser stay fp32); default: %(default)s")
    pre.add_argument("--attention", choices=ATTENTION_KERNELS, default=defaults.attention,
                     help="math: plain attention kernel (faster at these short sequences on a CPU); auto: "
                          "PyTorch's pick; default: %(default)s")
    pre.add_argument("--out", default=None, help="weights to write (.safetensors); default: the bundled checkpoint")
    pre.set_defaults(func=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    """Pre-trains from scratch and writes the weights; prints one JSON line with the losses and last probe."""
    from dapt_core.minclip.pretrain import default_out, pretrain

    cfg = replace(PretrainConfig(), seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                  warmup_steps=args.warmup, group_size=args.group_size, positives=args.positives,
                  model_name=args.model, eval_every=args.eval_every, threads=args.threads,
                  precision=args.precision, probe_head_weight=args.probe_head_weight,
                  class_caption_weight=args.class_caption_weight, attention=args.attention)
    out = args.out if args.out is not None else default_out()
    summary = pretrain(cfg, out)
    summary.pop("model")
    last = summary["probes"][-1] if summary["probes"] else {}
    print_json({"out": str(out), "steps": cfg.steps, "seed": cfg.seed, "wall_s": summary["wall_s"],
                "first_loss": round(summary["first_loss"], 4), "last_loss": round(summary["last_loss"], 4),
                "probe_object_acc": last.get("object_acc"), "probe_background_acc": last.get("background_acc")})
    return 0


def run_zeroshot(args: argparse.Namespace) -> int:
    """Zero-shot object and background accuracy of ``--backbone``; prints one JSON line."""
    from dapt_core.minclip.zeroshot import evaluate_backbone

    result = evaluate_backbone(load_backbone(args), n=args.n, seed=args.seed)
    print_json({"backbone": args.backbone, "seed": args.seed, "units": "percent", **result.as_dict()})
    return 0
