"""``python -m dapt_core analyze``: where do several prompt sets look on one image, and how much on the object?"""

from __future__ import annotations

import argparse
from pathlib import Path

from dapt_core.attention.descriptions import DEFAULT_METHOD
from dapt_core.cli.common import CAM_METHOD_NAMES, add_backbone_args, load_backbone, print_json

NO_SEGMENTER = "none"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``analyze`` to the ``python -m dapt_core`` parser."""
    p = sub.add_parser("analyze", help="compare the attention of prompt sets on one image; writes a figure",
                       description="Top-5 predictions, a class activation map per prompt set, the object's mask "
                                   "(from a segmenter or --mask) and how much of each map lies on the object. "
                                   "Writes the comparison figure and prints one JSON line.")
    p.add_argument("image", help="the image to analyse (any format PIL reads)")
    p.add_argument("--prompts", nargs="+", required=True, metavar="CKPT",
                   help="prompt sets (.safetensors) on one backbone, shown in this order")
    add_backbone_args(p, None, "backbone name; default: the first prompt set's")
    p.add_argument("--segmenter", default="cam",
                   help="what finds the object: cam, grabcut, sam, or none (no numbers); default: %(default)s")
    p.add_argument("--sam-checkpoint", default=None, help="explicit SAM weight file (for --segmenter sam)")
    p.add_argument("--mask", default=None, help="ground-truth foreground mask (image or .npy); wins over "
                                                "--segmenter")
    p.add_argument("--cam", choices=sorted(CAM_METHOD_NAMES), default=DEFAULT_METHOD,
                   help="CAM method; default: %(default)s")
    p.add_argument("--classes", default=None,
                   help="file of class names (one per line or comma-separated); replaces every set's stored list")
    p.add_argument("--target", default=None, help="class every map explains (default: each set's prediction)")
    p.add_argument("--out", required=True, help="figure to write (.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Checks the cheap inputs, loads the models, writes the figure; prints one JSON line."""
    from dapt_core.analysis import analyze
    from dapt_core.checkpoint import load_prompt_set, read_info
    from dapt_core.data.folders import read_class_list
    from dapt_core.data.masks import read_mask_file
    from dapt_core.imageio import load_image
    from dapt_core.segment import get_segmenter
    from dapt_core.viz.figure import save_figure

    from dapt_core.preflight import check_writable

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must end in .png, got {out}")
    check_writable(out)
    # everything cheap is checked before the backbone is loaded
    image = load_image(args.image)
    infos = [read_info(path) for path in args.prompts]
    mask = read_mask_file(Path(args.mask)) if args.mask else None
    classnames = read_class_list(args.classes) if args.classes else None
    segmenter = None
    if args.segmenter != NO_SEGMENTER and mask is None:
        # SAM runs on the same device as the backbone; the light segmenters take no device
        options = {"device": args.device, "checkpoint": args.sam_checkpoint} if args.segmenter == "sam" else {}
        segmenter = get_segmenter(args.segmenter, **options)
    backbone = load_backbone(args, args.backbone or infos[0].meta["backbone"])
    learners = [load_prompt_set(info.path, backbone, classnames) for info in infos]
    result = analyze(image, learners, segmenter=segmenter, cam_method=args.cam, target=args.target, mask=mask)
    save_figure(result.figure(title=Path(args.image).name), out)
    summary = result.to_json()
    print_json({"image": str(args.image), "out": str(out), "backbone": backbone.name,
                "prompt_sets": summary.pop("prompt_sets"), **summary})
    return 0
