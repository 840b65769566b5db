"""``python -m dapt_core``: train, evaluate, import and analyse prompt sets from the command line.

Each sub-command lives in a small ``add_*`` function; :data:`COMMANDS` is the registry ``main`` builds from,
so a new command is a new entry, not a new flag.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Callable

log = logging.getLogger("dapt_core")


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, sort_keys=False), flush=True)


def add_backbone_args(p: argparse.ArgumentParser, default: str | None = "ViT-B-16",
                      backbone_help: str = "backbone name (see `weights list`); default: %(default)s") -> None:
    """The ``--backbone``, ``--weights`` and ``--device`` options every model-loading command shares."""
    p.add_argument("--backbone", default=default, help=backbone_help)
    p.add_argument("--weights", default=None, help="explicit backbone weight file (wins over every other source)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...; default: the GPU when there is one")


def _load_backbone(args: argparse.Namespace, name: str | None = None):
    from dapt_core.backbones import load_backbone

    return load_backbone(name or args.backbone, weights_path=args.weights, device=args.device)


def _splits(args: argparse.Namespace):
    from dapt_core.data.folders import parse_data_spec, subsample_classes

    splits = parse_data_spec(args.data)
    return subsample_classes(splits, args.subsample)


# --- train --------------------------------------------------------------------------------------------------

def add_train(sub) -> None:
    p = sub.add_parser("train", help="tune a prompt set on a (few-shot) data set",
                       description="Tune CoOp or MaPLe prompts, optionally with the DAPT objective, and save "
                                   "them as a .safetensors prompt set. Re-running the same command resumes an "
                                   "interrupted run.")
    add_backbone_args(p)
    p.add_argument("--learner", choices=["coop", "maple"], default="maple")
    p.add_argument("--dapt", choices=["off", "gradcam", "mask"], default="off",
                   help="DAPT cue: off, gradcam (coarse, the model's own Grad-CAM), mask (fine, --masks)")
    p.add_argument("--masks", default=None, help="mask folder mirroring the image tree (for --dapt mask)")
    p.add_argument("--schedule", choices=["official", "joint"], default="official",
                   help="DAPT loss schedule: official epoch switch, or all terms at once")
    p.add_argument("--switch-epoch", type=int, default=None,
                   help="official schedule: first epoch of the alignment terms (default 7)")
    p.add_argument("--background-words", default=None, help="file of background words (default: official list)")
    p.add_argument("--data", required=True, help="imagefolder:PATH or coop:NAME:ROOT")
    p.add_argument("--subsample", choices=["all", "base", "novel"], default="all",
                   help="train on all classes or on the base half (base-to-novel)")
    p.add_argument("--shots", type=int, default=16, help="images per class (0 = all)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.0035)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--n-ctx", type=int, default=None, help="context length (CoOp 16, MaPLe 2)")
    p.add_argument("--ctx-init", default=None, help="initial context words (MaPLe: 'a photo of a')")
    p.add_argument("--class-specific", action="store_true", help="CoOp: one context per class")
    p.add_argument("--depth", type=int, default=None, help="MaPLe prompt depth J (default 9)")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation after training")
    p.add_argument("--out", required=True, help="prompt set to write (.safetensors)")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from dapt_core.checkpoint import save_prompt_set
    from dapt_core.data.folders import few_shot, image_root, read_class_list
    from dapt_core.learners import build_learner
    from dapt_core.data.masks import MaskFolder
    from dapt_core.objective import DaptConfig
    from dapt_core.train import (
        TrainConfig,
        config_dict,
        evaluate,
        seed_everything,
        train_prompts,
    )

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out}")
    splits = _splits(args)
    backbone = _load_backbone(args)
    dapt_kwargs = {"cue": args.dapt, "schedule": args.schedule}
    if args.switch_epoch is not None:
        dapt_kwargs["switch_epoch"] = args.switch_epoch
    if args.background_words:
        dapt_kwargs["background_words"] = tuple(read_class_list(args.background_words))
    dapt = DaptConfig(**dapt_kwargs)
    masks = None
    if args.dapt == "mask":
        if not args.masks:
            raise ValueError("--dapt mask needs --masks DIR (a mask file per training image)")
        masks = MaskFolder(args.masks, image_root(splits))
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    options = {k: v for k, v in {"n_ctx": args.n_ctx, "ctx_init": args.ctx_init, "depth": args.depth,
                                 "class_specific": args.class_specific or None}.items() if v is not None}
    seed_everything(args.seed)
    learner = build_learner(args.learner, backbone, splits.classnames, **options)
    train = few_shot(splits.train, args.shots, args.seed)
    log.info("training %s (DAPT %s) on %d images of %d classes", args.learner, args.dapt, len(train),
             splits.num_classes)
    state = out.with_name(out.name + ".state.pt")
    history = train_prompts(learner, train, cfg, dapt, masks=masks, state_path=state)
    metrics = {}
    if splits.test and not args.no_eval:
        metrics = evaluate(learner, splits.test, progress=True)
    train_meta = {**config_dict(cfg), "data": args.data, "subsample": args.subsample, "shots": args.shots,
                  "history": history}
    save_prompt_set(learner, out, dapt=dapt if dapt.enabled else None, train_config=train_meta, metrics=metrics)
    state.unlink(missing_ok=True)
    _print_json({"out": str(out), "learner": args.learner, "dapt": args.dapt, **metrics})
    return 0


# --- eval ---------------------------------------------------------------------------------------------------

def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a prompt set; prints a JSON line of metrics",
                       description="Accuracy and macro-F1 of a prompt set on a data set split. With "
                                   "--base-to-novel: accuracy on the base and the novel halves and their "
                                   "harmonic mean.")
    add_backbone_args(p, default=None)
    p.add_argument("--prompts", required=True, help="prompt set (.safetensors)")
    p.add_argument("--data", required=True, help="imagefolder:PATH or coop:NAME:ROOT")
    p.add_argument("--subsample", choices=["all", "base", "novel"], default="all")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--base-to-novel", action="store_true", help="report base, novel and harmonic mean")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from dapt_core.checkpoint import load_prompt_set, read_info
    from dapt_core.data.folders import parse_data_spec, subsample_classes
    from dapt_core.train import evaluate, harmonic_mean

    info = read_info(args.prompts)
    backbone = _load_backbone(args, args.backbone or info.meta["backbone"])
    learner = load_prompt_set(info.path, backbone)
    full = parse_data_spec(args.data)
    if args.base_to_novel:
        result = {}
        for half in ("base", "novel"):
            part = subsample_classes(full, half)
            learner.set_classnames(part.classnames)
            result[half] = evaluate(learner, getattr(part, args.split), progress=True)["accuracy"]
        result["hm"] = round(harmonic_mean(result["base"], result["novel"]), 4)
    else:
        part = subsample_classes(full, args.subsample)
        learner.set_classnames(part.classnames)
        result = evaluate(learner, getattr(part, args.split), progress=True)
    _print_json({"prompts": str(info.path), "split": args.split, **result})
    return 0


# --- import-official ----------------------------------------------------------------------------------------

def add_import(sub) -> None:
    p = sub.add_parser("import-official", help="convert an official CoOp / MaPLe / DAPT checkpoint",
                       description="Convert a Dassl checkpoint (model.pth.tar-N) of the official CoOp or "
                                   "MaPLe/DAPT code into a .safetensors prompt set. The file is read with "
                                   "weights_only=True. The class list comes from --classes or --data.")
    p.add_argument("src", help="official checkpoint, e.g. prompt_learner/model.pth.tar-5")
    add_backbone_args(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--classes", help="file with one class name per line, in label order")
    group.add_argument("--data", help="imagefolder:PATH or coop:NAME:ROOT to take the class names from")
    p.add_argument("--subsample", choices=["all", "base", "novel"], default="all",
                   help="with --data: the classes the checkpoint was trained on (base for base-to-novel)")
    p.add_argument("--learner", choices=["auto", "coop", "maple"], default="auto")
    p.add_argument("--ctx-init", default=None, help="the words the context replaced (MaPLe: 'a photo of a')")
    p.add_argument("--dapt", choices=["off", "gradcam", "mask"], default="off",
                   help="record that the checkpoint was trained with DAPT and which cue")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    from dapt_core.checkpoint import import_official
    from dapt_core.data.folders import read_class_list
    from dapt_core.objective import DaptConfig

    classnames = read_class_list(args.classes) if args.classes else _splits(args).classnames
    backbone = _load_backbone(args)
    dapt = DaptConfig(cue=args.dapt) if args.dapt != "off" else None
    out = import_official(args.src, backbone, classnames, args.out,
                          learner=None if args.learner == "auto" else args.learner, ctx_init=args.ctx_init,
                          dapt=dapt)
    _print_json({"out": str(out), "classes": len(classnames)})
    return 0


# --- weights ------------------------------------------------------------------------------------------------

def add_weights(sub) -> None:
    p = sub.add_parser("weights", help="list or fetch backbone and segmenter weights")
    wsub = p.add_subparsers(dest="action", required=True)
    ls = wsub.add_parser("list", help="registered weights and backbones, and whether each is on this machine")
    ls.set_defaults(func=run_weights_list)
    fetch = wsub.add_parser("fetch", help="download weights into the cache or checkpoints/")
    fetch.add_argument("name", help="a name from `weights list`")
    fetch.set_defaults(func=run_weights_fetch)


def run_weights_list(args: argparse.Namespace) -> int:
    from dapt_core.backbones import list_backbones
    from dapt_core.weights import list_weights, weights_status

    for spec in list_weights():
        size = f"{spec.size_mb:.0f} MB" if spec.size_mb else "?"
        print(f"{spec.name:28s} {size:>8s}  {weights_status(spec.name):24s} {spec.description}")
    print("\nbackbones:")
    for b in list_backbones():
        print(f"  {b.name:26s} {b.weights or '(no weights: random init)':28s} {b.description}")
    return 0


def run_weights_fetch(args: argparse.Namespace) -> int:
    from dapt_core.weights import fetch_weights

    _print_json({"name": args.name, "path": str(fetch_weights(args.name))})
    return 0


COMMANDS: list[Callable] = [add_train, add_eval, add_import, add_weights]
# modules that add sub-commands of their own through ``add_commands(subparsers)``
COMMAND_MODULES = ("dapt_core.cli_analysis", "dapt_core.cli_masks", "dapt_core.cli_synth", "dapt_core.cli_bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dapt_core", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # open_clip logs its every step on the root logger: keep that at WARNING unless asked for debug output
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        log.debug("command failed", exc_info=True)
        print(f"error: {err}", file=sys.stderr)
        return 2
