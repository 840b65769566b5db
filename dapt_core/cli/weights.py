"""``python -m dapt_core weights list | fetch NAME``: the registered weight files and where they are."""

from __future__ import annotations

import argparse

from dapt_core.cli.common import print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``weights`` and its actions to the ``python -m dapt_core`` parser."""
    p = sub.add_parser("weights", help="list or fetch backbone and segmenter weights")
    wsub = p.add_subparsers(dest="action", required=True)
    ls = wsub.add_parser("list", help="registered weights and backbones, and whether each is on this machine")
    ls.set_defaults(func=run_list)
    fetch = wsub.add_parser("fetch", help="download weights into the cache or checkpoints/")
    fetch.add_argument("name", help="a name from `weights list`")
    fetch.set_defaults(func=run_fetch)


def run_list(args: argparse.Namespace) -> int:
    """Prints a line per registered weight file and per backbone."""
    from dapt_core.backbones import list_backbones
    from dapt_core.weights import list_weights, weights_status

    for spec in list_weights():
        size = f"{spec.size_mb:.0f} MB" if spec.size_mb else "?"
        print(f"{spec.name:28s} {size:>8s}  {weights_status(spec.name):24s} {spec.description}")
    print("\nbackbones:")
    for b in list_backbones():
        print(f"  {b.name:26s} {b.weights or '(no weights: random init)':28s} {b.description}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    """Downloads (or finds) the weights ``name`` names; prints one JSON line with their path."""
    from dapt_core.weights import fetch_weights

    print_json({"name": args.name, "path": str(fetch_weights(args.name))})
    return 0
