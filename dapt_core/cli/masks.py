"""``python -m dapt_core masks``: foreground masks for a data set, for ``train --dapt mask --masks DIR``.

The context of each image is the learner's Grad-CAM for the image's TRUE class (and, for SAM, CLIP's score
of each candidate region for that class); the segmenter turns it into a mask. The output folder mirrors the
image tree, one 0/255 PNG per image, and re-running the command skips the masks already written.
"""

from __future__ import annotations

import argparse
import logging

from dapt_core.attention.descriptions import DEFAULT_METHOD
from dapt_core.cli.common import (
    CAM_METHOD_NAMES,
    DATA_HELP,
    DEFAULT_BACKBONE,
    add_backbone_args,
    load_backbone,
    print_json,
)
from dapt_core.constants import ZERO_SHOT_CONTEXT

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SAM_MODELS = ("vit_b", "vit_l", "vit_h")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``masks`` to the ``python -m dapt_core`` parser."""
    p = sub.add_parser("masks", help="precompute foreground masks of a data set (for --dapt mask)",
                       description="Segment every image of a split with the learner's Grad-CAM for its true "
                                   "class as the cue and write one PNG mask per image into a folder that "
                                   "mirrors the image tree. Existing masks are skipped, so an interrupted "
                                   "run resumes.")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--out", required=True, help="mask folder to fill (what `train --masks` reads)")
    p.add_argument("--segmenter", default="sam", help="sam, grabcut or cam; default: %(default)s")
    p.add_argument("--prompts", default=None,
                   help="prompt set (.safetensors) whose Grad-CAM is the cue; without it, zero-shot CLIP "
                        f"('{ZERO_SHOT_CONTEXT} <class>.') of --backbone")
    add_backbone_args(p, None, f"backbone (default: the prompt set's, else {DEFAULT_BACKBONE})")
    p.add_argument("--classes", default=None,
                   help="file of class names in label order, to use instead of the data set's folder names")
    p.add_argument("--split", choices=SPLITS, default="train")
    p.add_argument("--shots", type=int, default=0, help="only the few-shot draw of train (0 = every image)")
    p.add_argument("--seed", type=int, default=1, help="seed of the few-shot draw (match `train --seed`)")
    p.add_argument("--cam-method", default=DEFAULT_METHOD, help=", ".join(CAM_METHOD_NAMES[:-1]) + " or " +
                   CAM_METHOD_NAMES[-1])
    p.add_argument("--no-score", action="store_true", help="SAM: choose by predicted IoU, not CLIP score")
    p.add_argument("--sam-model", default="vit_b", choices=SAM_MODELS)
    p.add_argument("--sam-checkpoint", default=None, help="explicit SAM weight file")
    p.add_argument("--overwrite", action="store_true", help="recompute masks that already exist")
    p.set_defaults(func=run)


def _learner(args: argparse.Namespace, classnames: list[str]):
    """The prompt set's learner, or without ``--prompts`` zero-shot CLIP (CoOp from the zero-shot words)."""
    from dapt_core.checkpoint import load_prompt_set, read_info
    from dapt_core.learners import build_learner

    if args.prompts:
        info = read_info(args.prompts)
        return load_prompt_set(info.path, load_backbone(args, args.backbone or info.meta["backbone"]), classnames)
    backbone = load_backbone(args, args.backbone or DEFAULT_BACKBONE)
    return build_learner("coop", backbone, classnames, ctx_init=ZERO_SHOT_CONTEXT)


def _samples(args: argparse.Namespace):
    """The data set, its class names (``--classes`` wins) and the samples of ``--split`` to segment."""
    from dapt_core.data.folders import few_shot, parse_data_spec, read_class_list

    splits = parse_data_spec(args.data)
    classnames = splits.classnames
    if args.classes:
        classnames = read_class_list(args.classes)
        if len(classnames) != splits.num_classes:
            raise ValueError(f"--classes {args.classes} names {len(classnames)} classes but {args.data} has "
                             f"{splits.num_classes}")
    if args.cam_method not in CAM_METHOD_NAMES:
        raise ValueError(f"unknown --cam-method {args.cam_method!r}; choose from {', '.join(CAM_METHOD_NAMES)}")
    samples = getattr(splits, args.split)
    if not samples:
        raise ValueError(f"{args.data} has no images in its {args.split} split")
    return splits, classnames, few_shot(samples, args.shots, args.seed)


def run(args: argparse.Namespace) -> int:
    """Writes the missing masks (all with ``--overwrite``); prints one JSON line with the counts."""
    from dapt_core.data.folders import image_root
    from dapt_core.segment import get_segmenter
    from dapt_core.segment.bulk import learner_context_fn, precompute_masks

    from dapt_core.preflight import check_images, check_writable

    check_writable(args.out, folder=True)
    splits, classnames, samples = _samples(args)
    check_images(samples, args.split)
    options = {"model_type": args.sam_model, "checkpoint": args.sam_checkpoint} if args.segmenter == "sam" else {}
    # The segmenter first: a missing SAM checkpoint should fail before a backbone is loaded.
    segmenter = get_segmenter(args.segmenter, **options)
    learner = _learner(args, classnames)
    learner.eval()
    context = learner_context_fn(learner, cam_method=args.cam_method,
                                 score=args.segmenter == "sam" and not args.no_score)
    root = image_root(splits)
    log.info("segmenting %d %s images of %s with %s into %s", len(samples), args.split, args.data,
             args.segmenter, args.out)
    report = precompute_masks(samples, segmenter, args.out, root, context_fn=context,
                              resume=not args.overwrite, progress=True)
    print_json({"out": str(report.mask_root), "image_root": str(root), "segmenter": args.segmenter,
                "split": args.split, "images": len(samples), "written": report.written,
                "skipped": report.skipped, "fallbacks": report.fallbacks,
                "mean_area": None if report.mean_area is None else round(report.mean_area, 4),
                "seconds": round(report.seconds, 2)})
    return 0
