"""``python -m dapt_core``: train, evaluate, import and analyse prompt sets from the command line.

One module per sub-command, each with ``add_parser(subparsers)`` and the ``run`` function(s) it sets as
``func``; :data:`COMMANDS` is the registry :func:`build_parser` builds from, so a new command is a new module
and a new entry. Building the parser imports none of :data:`HEAVY_MODULES`: each command imports the library
inside its ``run`` function, and the choices the parser offers come from light modules
(:mod:`dapt_core.constants`, :mod:`dapt_core.cli.common`, :mod:`dapt_core.minclip.config`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from dapt_core.cli import analyze, bench, grid, hub, import_official, masks, synth, train, weights
from dapt_core.cli import eval as eval_command
from dapt_core.errors import DaptError, os_error_message

log = logging.getLogger("dapt_core")

# The sub-command modules, in the order `--help` lists them.
COMMANDS = (train, eval_command, import_official, weights, analyze, masks, synth, bench, grid, hub)
# Third-party modules that building the parser must not import (each takes from 0.1 s to seconds to load).
HEAVY_MODULES = ("torch", "open_clip", "pytorch_grad_cam", "gradio", "matplotlib", "cv2", "PIL", "numpy",
                 "safetensors")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m dapt_core`` parser with every sub-command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="python -m dapt_core", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parses ``argv`` (default: ``sys.argv[1:]``) and runs the command.

    Returns:
        The command's exit status: 2 for bad input (a :class:`~dapt_core.errors.DaptError`, or the ValueError,
        FileNotFoundError or KeyError of a setting checked outside the library), 1 for a file the system
        would not read or write (disk full, permission denied); either with one ``error: ...`` line on stderr
        and no traceback (``-v`` logs it). Any other exception is a fault of the program and keeps its
        traceback.
    """
    args = build_parser().parse_args(argv)
    # open_clip logs its every step on the root logger: keep that at WARNING unless asked for debug output
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except (DaptError, ValueError, FileNotFoundError, KeyError) as err:
        return _refuse(err, 2)
    except OSError as err:
        return _refuse(err, 1)


def _refuse(err: Exception, status: int) -> int:
    """Prints ``err`` as one ``error: ...`` line on stderr (the traceback only at debug level); returns ``status``."""
    log.debug("command failed", exc_info=True)
    if isinstance(err, KeyError) and err.args:
        message = str(err.args[0])
    elif isinstance(err, OSError) and not isinstance(err, DaptError) and err.strerror:
        message = os_error_message(err)
    else:
        message = str(err) or type(err).__name__
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return status
