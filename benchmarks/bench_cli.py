"""Start-up time of ``python -m dapt_core --help`` and of every sub-command's ``--help``.

Usage: python3 benchmarks/bench_cli.py [--runs 5] [--commands "train" "bench synth" ...]

Each command runs ``--runs`` times in a fresh interpreter (the wall time of the whole process: interpreter
start, imports, building the parser, printing the help); the table shows the median. One more run per command
records which of the heavy third-party modules (``dapt_core.cli.HEAVY_MODULES``) were imported by then.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
from dapt_core.cli import HEAVY_MODULES  # noqa: E402  (after the path set-up above)

# Runs the CLI's own entry point, then reports which heavy modules it imported, after the help text.
_PROBE = """
import json, runpy, sys
command, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = ["python -m dapt_core", *command]
try:
    runpy.run_module("dapt_core", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""

# Lists every command path of the parser, e.g. ["train"], ["weights", "list"], as one JSON line.
_DISCOVER = """
import argparse, json
from dapt_core.cli import build_parser

def walk(parser, prefix):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + [name]
                yield from walk(sub, prefix + [name])

print(json.dumps(list(walk(build_parser(), []))))
"""


def _python(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=PROJECT_DIR, capture_output=True, text=True,
                          check=True)
    return done.stdout


def discover_commands() -> list[list[str]]:
    """Every command path of ``python -m dapt_core`` (nested sub-commands included), parser order."""
    return json.loads(_python(_DISCOVER).strip().splitlines()[-1])


def help_seconds(command: list[str], runs: int) -> list[float]:
    """Wall times of ``python -m dapt_core COMMAND --help``, each in a fresh interpreter."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dapt_core", *command, "--help"], cwd=PROJECT_DIR,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return times


def heavy_imports(command: list[str]) -> list[str]:
    """The modules of ``HEAVY_MODULES`` that ``python -m dapt_core COMMAND --help`` imported."""
    out = _python(_PROBE, json.dumps([*command, "--help"]), json.dumps(list(HEAVY_MODULES)))
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command; default: %(default)s")
    parser.add_argument("--commands", nargs="+", default=None,
                        help="command paths to time, e.g. 'train' 'bench synth'; default: all of them")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    commands = [c.split() for c in args.commands] if args.commands else discover_commands()
    rows = []
    for command in [[], *commands]:
        times = help_seconds(command, args.runs)
        rows.append({"command": " ".join([*command, "--help"]), "median_s": round(statistics.median(times), 3),
                     "min_s": round(min(times), 3), "heavy": heavy_imports(command)})
    print(f"python -m dapt_core ... --help, median of {args.runs} fresh processes")
    print("| command | median s | min s | heavy modules imported |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['command']} | {row['median_s']:.2f} | {row['min_s']:.2f} | "
              f"{', '.join(row['heavy']) or '-'} |")
    print(json.dumps({"benchmark": "cli_help", "runs": args.runs, "python": sys.version.split()[0],
                      "commands": rows}))


if __name__ == "__main__":
    main()
