"""The long fuzzing run: tests/test_fuzz.py with many more examples per property than CI's bounded profile.

Usage: python3 benchmarks/fuzz.py [--examples 2000] [-k zip]   (extra arguments go to pytest)

Each property of tests/test_fuzz.py (the image, mask, zip, class-list and checkpoint readers) runs
``--examples`` random inputs under the ``long`` Hypothesis profile, without derandomisation, so every run tries
new inputs; a failure prints the shrunk input that breaks the property. Prints pytest's summary, then one JSON
line with the examples per property, the seconds and pytest's exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_EXAMPLES = 2000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, help="inputs per property")
    args, rest = parser.parse_known_args()
    env = {**os.environ, "HYPOTHESIS_PROFILE": "long", "DAPT_FUZZ_EXAMPLES": str(args.examples)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_fuzz.py", *rest], cwd=PROJECT_DIR, env=env)
    print(json.dumps({"examples_per_property": args.examples, "seconds": round(time.perf_counter() - started, 1),
                      "pytest_status": done.returncode}))
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
