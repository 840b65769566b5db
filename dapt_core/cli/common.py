"""What several commands share: the backbone and data-set options, their choices, one JSON line on stdout.

Nothing here imports torch: the parser is built from these names, and each command imports the library
inside its ``run`` function.
"""

from __future__ import annotations

import argparse
import json

from dapt_core.attention.descriptions import METHOD_DESCRIPTIONS

DATA_HELP = "imagefolder:PATH or coop:NAME:ROOT"
# Names the parser offers without importing the registries that hold them (tests/test_cli.py checks each).
LEARNER_NAMES = ("coop", "maple")  # the keys of dapt_core.learners.LEARNERS
DAPT_CUES = ("off", "gradcam", "mask")  # dapt_core.objective.CUES
DAPT_SCHEDULES = ("official", "scaled", "joint")  # the schedules offered; each is one of dapt_core.objective.SCHEDULES
SUBSAMPLES = ("all", "base", "novel")  # what dapt_core.data.folders.subsample_classes accepts
DEFAULT_BACKBONE = "ViT-B-16"
CAM_METHOD_NAMES = tuple(METHOD_DESCRIPTIONS)  # the keys of dapt_core.attention.cam.CAM_METHODS, in order


def print_json(obj: dict) -> None:
    """Writes ``obj`` as one JSON line on stdout: the last line of a command is its machine-readable result."""
    print(json.dumps(obj), flush=True)


def add_backbone_args(p: argparse.ArgumentParser, default: str | None = DEFAULT_BACKBONE,
                      backbone_help: str = "backbone name (see `weights list`); default: %(default)s") -> None:
    """The ``--backbone``, ``--weights`` and ``--device`` options every model-loading command shares."""
    p.add_argument("--backbone", default=default, help=backbone_help)
    p.add_argument("--weights", default=None, help="explicit backbone weight file (wins over every other source)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...; default: the GPU when there is one")


def load_backbone(args: argparse.Namespace, name: str | None = None):
    """The backbone ``--backbone`` (or ``name``) names, with ``--weights`` and on ``--device``."""
    from dapt_core.backbones import load_backbone as load

    return load(name or args.backbone, weights_path=args.weights, device=args.device)


def data_splits(args: argparse.Namespace):
    """The data set ``--data`` names, cut to the classes ``--subsample`` keeps."""
    from dapt_core.data.folders import parse_data_spec, subsample_classes

    return subsample_classes(parse_data_spec(args.data), args.subsample)
