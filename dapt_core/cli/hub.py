"""``python -m dapt_core hub push PROMPTS REPO_ID | pull REPO_ID[/FILE]``: prompt sets on the Hugging Face Hub."""

from __future__ import annotations

import argparse
import logging

from dapt_core.cli.common import add_backbone_args, print_json

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``hub`` and its actions to the ``python -m dapt_core`` parser."""
    p = sub.add_parser("hub", help="push prompt sets to the Hugging Face Hub, pull them from it",
                       description="Share prompt sets through Hugging Face Hub model repositories. Log in first "
                                   "with `hf auth login` (or set HF_TOKEN) to push or to pull private sets.")
    hsub = p.add_subparsers(dest="action", required=True)
    push = hsub.add_parser("push", help="upload a prompt set and its model card",
                           description="Check a prompt set, then upload it with a README.md model card made "
                                       "from its metadata, in one commit (the repository is created if needed).")
    push.add_argument("prompts", help="the prompt set (.safetensors)")
    push.add_argument("repo_id", help="the model repository, owner/name")
    push.add_argument("--path-in-repo", default=None, help="the file's name in the repository (default: its own)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--no-card", action="store_true", help="leave the repository's README.md as it is")
    push.set_defaults(func=run_push)
    pull = hsub.add_parser("pull", help="download a prompt set, checked before it is written",
                           description="Download a prompt set and write it only once it passes the checks any "
                                       "prompt set gets (metadata, every tensor; with --backbone, that it loads "
                                       "onto that backbone).")
    pull.add_argument("spec", metavar="REPO_ID[/FILE]",
                      help="owner/name (its only prompt set) or owner/name/FILE.safetensors")
    pull.add_argument("--out", default=None, help="file or folder to write to (default: the file's name, here)")
    pull.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    pull.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_backbone_args(pull, None, "also check that the set loads onto this backbone (default: no backbone is "
                                  "loaded)")
    pull.set_defaults(func=run_pull)


def run_push(args: argparse.Namespace) -> int:
    """Pushes the prompt set; prints one JSON line with the repository, the file and its URL."""
    from dapt_core.hub import push_prompt_set

    print_json(push_prompt_set(args.prompts, args.repo_id, path_in_repo=args.path_in_repo, private=args.private,
                               card=not args.no_card))
    return 0


def run_pull(args: argparse.Namespace) -> int:
    """Pulls the prompt set; prints one JSON line with where it was written and what it is."""
    from dapt_core.cli.common import load_backbone
    from dapt_core.hub import pull_prompt_set

    backbone = load_backbone(args) if args.backbone else None
    info = pull_prompt_set(args.spec, args.out, revision=args.revision, overwrite=args.overwrite, backbone=backbone)
    print_json({"out": str(info.path), "name": info.name, "label": info.label, "backbone": info.meta["backbone"],
                "classes": len(info.meta["classnames"])})
    return 0
