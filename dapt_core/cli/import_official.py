"""``python -m dapt_core import-official``: an official CoOp / MaPLe / DAPT checkpoint -> a prompt set."""

from __future__ import annotations

import argparse

from dapt_core.cli.common import (
    DAPT_CUES,
    DATA_HELP,
    LEARNER_NAMES,
    SUBSAMPLES,
    add_backbone_args,
    data_splits,
    load_backbone,
    print_json,
)
from dapt_core.constants import ZERO_SHOT_CONTEXT

AUTO = "auto"  # --learner: read the learner off the checkpoint's keys


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``import-official`` to the ``python -m dapt_core`` parser."""
    p = sub.add_parser("import-official", help="convert an official CoOp / MaPLe / DAPT checkpoint",
                       description="Convert a Dassl checkpoint (model.pth.tar-N) of the official CoOp or "
                                   "MaPLe/DAPT code into a .safetensors prompt set. The file is read by a "
                                   "restricted unpickler (tensors, plain data, inert optimizer/scheduler "
                                   "stand-ins; anything else is refused). The class list comes from --classes "
                                   "or --data.")
    p.add_argument("src", help="official checkpoint, e.g. prompt_learner/model.pth.tar-5")
    add_backbone_args(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--classes", help="file with one class name per line, in label order")
    group.add_argument("--data", help=f"{DATA_HELP} to take the class names from")
    p.add_argument("--subsample", choices=SUBSAMPLES, default="all",
                   help="with --data: the classes the checkpoint was trained on (base for base-to-novel)")
    p.add_argument("--learner", choices=(AUTO, *LEARNER_NAMES), default=AUTO)
    p.add_argument("--ctx-init", default=None,
                   help=f"the words the context replaced (MaPLe: '{ZERO_SHOT_CONTEXT}')")
    p.add_argument("--dapt", choices=DAPT_CUES, default="off",
                   help="record that the checkpoint was trained with DAPT and which cue")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Converts ``src`` and writes ``--out``; prints one JSON line."""
    from dapt_core.checkpoint import CheckpointError
    from dapt_core.data.folders import read_class_list
    from dapt_core.objective import DaptConfig
    from dapt_core.official import import_official
    from dapt_core.preflight import check_writable
    from dapt_core.weights import check_weight_file

    if check_weight_file(args.src, "official checkpoint") == "safetensors":
        raise CheckpointError(f"{args.src} is a safetensors file, not an official .pth.tar checkpoint; a prompt "
                              "set of this tool needs no import")
    check_writable(args.out)
    classnames = read_class_list(args.classes) if args.classes else data_splits(args).classnames
    backbone = load_backbone(args)
    dapt = DaptConfig(cue=args.dapt) if args.dapt != "off" else None
    out = import_official(args.src, backbone, classnames, args.out,
                          learner=None if args.learner == AUTO else args.learner, ctx_init=args.ctx_init,
                          dapt=dapt)
    print_json({"out": str(out), "classes": len(classnames)})
    return 0
