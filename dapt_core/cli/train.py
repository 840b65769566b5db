"""``python -m dapt_core train``: tune a CoOp or MaPLe prompt set, optionally with DAPT, and save it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dapt_core.cli.common import (
    CAM_METHOD_NAMES,
    DAPT_CUES,
    DAPT_SCHEDULES,
    DATA_HELP,
    LEARNER_NAMES,
    SUBSAMPLES,
    add_backbone_args,
    data_splits,
    load_backbone,
    print_json,
)
from dapt_core.backgrounds import VOCABULARIES
from dapt_core.constants import OFFICIAL_EPOCHS, OFFICIAL_SWITCH_EPOCH, ZERO_SHOT_CONTEXT

log = logging.getLogger(__name__)
SELECT_METHODS = ("uniform", "herding", "kcenter", "uncertainty")  # dapt_core.selection.SELECT_METHODS
SELECT_SCORES = ("entropy", "margin", "least_confidence")  # dapt_core.selection.UNCERTAINTY_SCORES
MODEL_SELECTIONS = ("best_val", "last")  # dapt_core.train.SELECTIONS


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``train`` to the ``python -m dapt_core`` parser."""
    p = sub.add_parser("train", help="tune a prompt set on a (few-shot) data set",
                       description="Tune CoOp or MaPLe prompts, optionally with the DAPT objective, and save "
                                   "them as a .safetensors prompt set. Re-running the same command resumes an "
                                   "interrupted run.")
    add_backbone_args(p)
    p.add_argument("--learner", choices=LEARNER_NAMES, default="maple")
    p.add_argument("--dapt", choices=DAPT_CUES, default="off",
                   help="DAPT cue: off, gradcam (coarse, the model's own Grad-CAM), mask (fine, --masks)")
    p.add_argument("--masks", default=None, help="mask folder mirroring the image tree (for --dapt mask)")
    p.add_argument("--cue-method", choices=CAM_METHOD_NAMES, default=None,
                   help="the attribution map the coarse cue (--dapt gradcam) is cut from; default gradcam, the "
                        "official cue")
    p.add_argument("--schedule", choices=DAPT_SCHEDULES, default="official",
                   help="DAPT loss schedule: official (triplet, then the alignment terms from --switch-epoch, "
                        "whatever --epochs is), scaled (that switch compressed to --epochs), joint (all at once)")
    p.add_argument("--switch-epoch", type=int, default=None,
                   help=f"official schedule: first epoch of the alignment terms (default {OFFICIAL_SWITCH_EPOCH})")
    p.add_argument("--background-words", default="official",
                   help=f"background vocabulary: a preset ({', '.join(VOCABULARIES)}) or a file of one word a "
                        "line; default: %(default)s (the 32 words of the official code)")
    p.add_argument("--selection", choices=MODEL_SELECTIONS, default="best_val",
                   help="prompts to keep: best_val (the epoch of best validation accuracy, official; the last "
                        "epoch when the data set has no validation split) or last")
    p.add_argument("--restart", action="store_true",
                   help="discard the state of an interrupted run at --out and start over")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--subsample", choices=SUBSAMPLES, default="all",
                   help="train on all classes or on the base half (base-to-novel)")
    p.add_argument("--shots", type=int, default=16, help="images per class (0 = all)")
    p.add_argument("--select-fraction", type=float, default=1.0,
                   help="data-efficient setting: share of the training images kept (0.05..1; 1 = all)")
    p.add_argument("--select-method", choices=SELECT_METHODS, default="uniform",
                   help="how --select-fraction chooses (herding/kcenter: frozen image features; uncertainty: "
                        "zero-shot prediction)")
    p.add_argument("--select-score", choices=SELECT_SCORES, default="entropy", help="uncertainty's score")
    p.add_argument("--select-global", action="store_true",
                   help="select over the whole set, not per class (DeepCore balance=False)")
    p.add_argument("--epochs", type=int, default=OFFICIAL_EPOCHS)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.0035)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--n-ctx", type=int, default=None, help="context length (CoOp 16, MaPLe 2)")
    p.add_argument("--ctx-init", default=None, help=f"initial context words (MaPLe: '{ZERO_SHOT_CONTEXT}')")
    p.add_argument("--class-specific", action="store_true", help="CoOp: one context per class")
    p.add_argument("--depth", type=int, default=None, help="MaPLe prompt depth J (default 9)")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation after training")
    p.add_argument("--out", required=True, help="prompt set to write (.safetensors)")
    p.set_defaults(func=run)


def _dapt_config(args: argparse.Namespace):
    from dapt_core.backgrounds import resolve_background_words
    from dapt_core.objective import DaptConfig

    dapt_kwargs = {"cue": args.dapt, "schedule": args.schedule,
                   "background_words": resolve_background_words(args.background_words)}
    if args.switch_epoch is not None:
        if args.schedule != "official":
            raise ValueError(f"--switch-epoch sets the official schedule's switch; --schedule {args.schedule} "
                             "has none of its own to set")
        dapt_kwargs["switch_epoch"] = args.switch_epoch
    if args.cue_method is not None:
        if args.dapt != "gradcam":
            raise ValueError(f"--cue-method chooses the map of the coarse cue (--dapt gradcam); --dapt {args.dapt} "
                             "does not use one")
        dapt_kwargs["cam_method"] = args.cue_method
    return DaptConfig(**dapt_kwargs)


def run(args: argparse.Namespace) -> int:
    """Trains, evaluates on the test split (unless ``--no-eval``), saves; prints one JSON line."""
    from dapt_core.checkpoint import save_prompt_set
    from dapt_core.learners import build_learner
    from dapt_core.preflight import check_writable
    from dapt_core.selection import select_samples
    from dapt_core.train import evaluate, seed_everything, train_prompts

    out, selection, cfg, dapt = _checked_settings(args)
    check_writable(out)
    splits = data_splits(args)
    train, val, masks = _checked_images(args, splits)
    backbone = load_backbone(args)
    seed_everything(args.seed)
    learner = build_learner(args.learner, backbone, splits.classnames, **_learner_options(args))
    train, data_selection = select_samples(train, selection, backbone=backbone, classnames=splits.classnames)
    log.info("training %s (DAPT %s) on %d images of %d classes", args.learner, args.dapt, len(train),
             splits.num_classes)
    state = out.with_name(out.name + ".state.pt")
    run_info = {"data": args.data, "subsample": args.subsample, "shots": args.shots, "masks": args.masks,
                "select_fraction": args.select_fraction, "select_method": args.select_method}
    history = train_prompts(learner, train, cfg, dapt, masks=masks, val_samples=val, state_path=state,
                            restart=args.restart, run_info=run_info)
    metrics = {}
    if splits.test and not args.no_eval:
        metrics = evaluate(learner, splits.test, progress=True)
    save_prompt_set(learner, out, dapt=dapt if dapt.enabled else None, metrics=metrics,
                    train_config=_train_meta(args, cfg, dapt, data_selection, history, len(val)))
    state.unlink(missing_ok=True)
    print_json({"out": str(out), "learner": args.learner, "dapt": args.dapt, **metrics})
    return 0


def _checked_settings(args: argparse.Namespace):
    """(output path, SelectionConfig, TrainConfig, DaptConfig): each checks itself before any data or model
    loads, so a bad setting is refused in one line and nothing is written."""
    from dapt_core.selection import SelectionConfig
    from dapt_core.train import TrainConfig

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out}")
    selection = SelectionConfig(fraction=args.select_fraction, method=args.select_method, seed=args.seed,
                                per_class=not args.select_global, uncertainty=args.select_score)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      shots=args.shots, selection=args.selection)
    return out, selection, cfg, _dapt_config(args)


def _checked_images(args: argparse.Namespace, splits):
    """(training draw, validation draw, mask folder or None); every image and mask training or the test
    evaluation reads is looked at before the backbone loads."""
    from dapt_core.data.folders import few_shot, image_root
    from dapt_core.data.masks import MaskFolder
    from dapt_core.preflight import check_images, check_masks
    from dapt_core.train import few_shot_validation

    masks = None
    if args.dapt == "mask":
        if not args.masks:
            raise ValueError("--dapt mask needs --masks DIR (a mask file per training image)")
        masks = MaskFolder(args.masks, image_root(splits))
    train = few_shot(splits.train, args.shots, args.seed)
    val = few_shot_validation(splits.val, args.shots, args.seed)
    check_images(train, "training")
    check_images(val, "validation")
    if not args.no_eval:
        check_images(splits.test, "test")
    check_masks(train, masks)
    return train, val, masks


def _learner_options(args: argparse.Namespace) -> dict:
    """The learner options the command line sets (the rest keep the learner's defaults)."""
    return {k: v for k, v in {"n_ctx": args.n_ctx, "ctx_init": args.ctx_init, "depth": args.depth,
                              "class_specific": args.class_specific or None}.items() if v is not None}


def _train_meta(args: argparse.Namespace, cfg, dapt, data_selection: dict, history: list[dict], n_val: int) -> dict:
    """The training record the prompt set's metadata keeps: settings, data, history and the kept epoch."""
    from dapt_core.objective import unreached_terms
    from dapt_core.train import config_dict, model_selection

    return {**config_dict(cfg), "data": args.data, "subsample": args.subsample, "shots": args.shots,
            "data_selection": data_selection, "history": history, "n_val": n_val,
            "selected": model_selection(history, cfg.selection), "background_words": args.background_words,
            "unreached_terms": unreached_terms(dapt, cfg.epochs)}
