"""``python -m dapt_core bench web-bundle``: the app's prompt sets and example scenes for the ``synth-web`` backbone.

Trains the bundled ``web-rehomed-*`` prompt sets on the rehomed web task of one (seed, shots) with the benchmark's
recipe, measures where each looks on the task's conflicting scenes, and writes the scenes at the chosen quantiles
of the DAPT-minus-base attention difference to the app's example folder, beside the aggregate of a
``bench synth --world web`` result (:mod:`dapt_core.experiments.web_bundle`). The parser imports nothing heavy.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from dapt_core import paths
from dapt_core.cli.common import CAM_METHOD_NAMES, DAPT_SCHEDULES, add_backbone_args, print_json
from dapt_core.constants import OFFICIAL_EPOCHS
from dapt_core.experiments.web_bundle_rule import BUNDLE_CAMS, BUNDLE_METHODS, PICK_PAIR, PICK_QUANTILES

log = logging.getLogger(__name__)

DEFAULT_PROMPTS_DIR = paths.CHECKPOINT_DIR / "prompts"
DEFAULT_EXAMPLES_DIR = paths.ASSETS_DIR / "examples_web"
DEFAULT_N_TEST = 20  # the gates' (GateSettings.n_test) and the web benchmark's as the README runs it


def add_web_bundle_parser(bsub: argparse._SubParsersAction) -> None:
    """Adds ``web-bundle`` to the ``bench`` sub-commands."""
    p = bsub.add_parser("web-bundle", help="train synth-web's bundled prompt sets and pick its example scenes",
                        description="Train CoOp, CoOp+DAPT-S, MaPLe and MaPLe+DAPT-S on the rehomed web task of one "
                                    "seed and shot count with the benchmark's recipe (saved as web-rehomed-"
                                    "<method>.safetensors), measure the true class's energy share on the object in "
                                    "every conflicting test scene, and write the scenes at the 10th, 50th and 90th "
                                    "percentiles of the DAPT-minus-base difference, with their numbers and the "
                                    "benchmark's aggregate, to the app's example folder. The last stdout line is a "
                                    "JSON summary.")
    add_backbone_args(p, "synth-web")
    p.add_argument("--seed", type=int, default=1, help="task and training seed; default: %(default)s")
    p.add_argument("--shots", type=int, default=16, help="training scenes per class; default: %(default)s")
    p.add_argument("--benchmark", default=None, metavar="JSON",
                   help="a `bench synth --world web --task-variant rehomed --coop-class-specific` result whose "
                        "aggregate goes beside each example's numbers (its recipe must be this one's); default: none")
    p.add_argument("--epochs", type=int, default=OFFICIAL_EPOCHS, help="official: %(default)s")
    p.add_argument("--batch-size", type=int, default=4, help="official: %(default)s")
    p.add_argument("--lr", type=float, default=0.0035, help="official: %(default)s")
    p.add_argument("--schedule", choices=DAPT_SCHEDULES, default="official", help="DAPT schedule; default: %(default)s")
    p.add_argument("--switch-epoch", type=int, default=None,
                   help="official schedule's switch; default: 7 of 10, kept in proportion")
    p.add_argument("--crop-min", type=float, default=1.0, help="smallest crop area share; default %(default)s = flips "
                                                                "only, the benchmark's")
    p.add_argument("--n-test", type=int, default=DEFAULT_N_TEST,
                   help="test scenes per class and split (bench synth's --n-test); default: %(default)s")
    p.add_argument("--n-classes", type=int, default=None, help="the first N classes (smoke runs); default: all 24")
    p.add_argument("--methods", nargs="+", default=list(BUNDLE_METHODS), metavar="METHOD",
                   help=f"methods to train and bundle; default: {' '.join(BUNDLE_METHODS)}")
    p.add_argument("--cam-methods", nargs="+", choices=CAM_METHOD_NAMES, default=list(BUNDLE_CAMS), metavar="CAM",
                   help="maps whose energy share is measured; the first ranks the scenes; default: "
                        f"{' '.join(BUNDLE_CAMS)}")
    p.add_argument("--pick", nargs=2, default=list(PICK_PAIR), metavar=("BASE", "DAPT"),
                   help=f"the pair whose per-scene difference ranks the scenes; default: {' '.join(PICK_PAIR)}")
    p.add_argument("--quantiles", type=float, nargs="+", default=list(PICK_QUANTILES),
                   help=f"quantiles of the difference to pick scenes at; default: {' '.join(map(str, PICK_QUANTILES))}")
    p.add_argument("--prompts-out", default=str(DEFAULT_PROMPTS_DIR), help="default: checkpoints/prompts")
    p.add_argument("--examples-out", default=str(DEFAULT_EXAMPLES_DIR), help="default: assets/examples_web")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads; default: %(default)s")
    p.set_defaults(func=run_web_bundle)


def _log_run(record: dict) -> None:
    log.info("%s: conflicting %.1f%%, energy share %.3f (%.0f s)", record["method"], record["conflicting_acc"],
             record["object_attention"], record["seconds"])


def run_web_bundle(args: argparse.Namespace) -> int:
    import torch

    from dapt_core.experiments import web_bundle as wb
    from dapt_core.experiments.background_shift_report import read_result
    from dapt_core.experiments.web_bundle_report import build_manifest, write_examples

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    cfg = wb.bundle_config(args.seed, args.shots, backbone=args.backbone, weights=args.weights, device=args.device,
                           epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
                           switch_epoch=args.switch_epoch, crop_min=args.crop_min, n_test=args.n_test,
                           n_classes=args.n_classes, methods=tuple(args.methods), cam_methods=tuple(args.cam_methods))
    wb.check_pick(cfg, args.pick, args.quantiles)
    result = benchmark = None
    if args.benchmark:  # read and checked before hours of training, not after
        result = read_result(args.benchmark)
        benchmark = wb.benchmark_aggregate(result, cfg, args.pick, Path(args.benchmark).name)
    records, task, written = wb.train_bundle(cfg, args.prompts_out, report=_log_run)
    picks = wb.pick_examples(records, cfg, args.pick, args.quantiles)
    agreement = wb.per_scene_agreement(result, records, cfg) if result is not None else None
    invoked = Path(sys.argv[0]).parent.name == paths.PACKAGE_DIR.name
    command = "python -m dapt_core " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if invoked else None
    manifest = build_manifest(cfg, task, records, picks, args.pick, benchmark, agreement, command)
    files = write_examples(args.examples_out, manifest, task)
    print_json({"prompt_sets": [str(p) for p in written], "examples_out": str(Path(args.examples_out)),
                "examples": [{"file": e["file"], "quantile": e["quantile"], "difference": e["difference"]}
                             for e in manifest["examples"]],
                "files": len(files), "agreement_with_benchmark": agreement})
    return 0
