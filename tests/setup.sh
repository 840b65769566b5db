#!/usr/bin/env bash
# Everything the test suite needs on a fresh machine: the Python packages, and Debian's Chromium for the
# one browser test (Playwright drives the system browser; it never downloads one of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-dev.txt
if ! command -v chromium >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "tests/setup.sh: chromium not installed and apt-get not usable; the browser test will be skipped" >&2
    fi
fi
