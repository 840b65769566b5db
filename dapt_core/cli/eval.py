"""``python -m dapt_core eval``: accuracy and macro-F1 of a prompt set, or its base-to-novel numbers."""

from __future__ import annotations

import argparse

from dapt_core.cli.common import DATA_HELP, SUBSAMPLES, add_backbone_args, load_backbone, print_json

SPLITS = ("test", "val", "train")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``eval`` to the ``python -m dapt_core`` parser."""
    p = sub.add_parser("eval", help="evaluate a prompt set; prints a JSON line of metrics",
                       description="Accuracy and macro-F1 of a prompt set on a data set split. With "
                                   "--base-to-novel: accuracy on the base and the novel halves and their "
                                   "harmonic mean.")
    add_backbone_args(p, default=None)
    p.add_argument("--prompts", required=True, help="prompt set (.safetensors)")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--subsample", choices=SUBSAMPLES, default="all")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--base-to-novel", action="store_true", help="report base, novel and harmonic mean")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluates the prompt set on the backbone it names (or ``--backbone``); prints one JSON line."""
    from dapt_core.checkpoint import load_prompt_set, read_info
    from dapt_core.data.folders import parse_data_spec, subsample_classes
    from dapt_core.preflight import check_images, check_not_empty
    from dapt_core.train import evaluate, harmonic_mean

    info = read_info(args.prompts)
    full = parse_data_spec(args.data)
    # every part to evaluate has images that open, before the backbone loads
    parts = {half: subsample_classes(full, half)
             for half in (("base", "novel") if args.base_to_novel else (args.subsample,))}
    for half, part in parts.items():
        check_not_empty(getattr(part, args.split), args.data + ("" if half == "all" else f" ({half} classes)"),
                        args.split)
        check_images(getattr(part, args.split), args.split)
    backbone = load_backbone(args, args.backbone or info.meta["backbone"])
    learner = load_prompt_set(info.path, backbone)
    if args.base_to_novel:
        result = {}
        for half, part in parts.items():
            learner.set_classnames(part.classnames)
            result[half] = evaluate(learner, getattr(part, args.split), progress=True)["accuracy"]
        result["hm"] = round(harmonic_mean(result["base"], result["novel"]), 4)
    else:
        part = parts[args.subsample]
        learner.set_classnames(part.classnames)
        result = evaluate(learner, getattr(part, args.split), progress=True)
    print_json({"prompts": str(info.path), "split": args.split, **result})
    return 0
