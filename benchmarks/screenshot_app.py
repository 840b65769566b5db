"""Screenshot of the offline app: start `python app.py --backbone B` (synth-web, the offline fallback, by default),
compare the default prompt sets on one example image of that backbone's world.

    python benchmarks/screenshot_app.py [--backbone synth-web] [--example FILE] [--out docs/screenshot.png] [--all-tabs]

The default example: on synth-web, the scene its example manifest picked at the 90th percentile of the DAPT-minus-base
difference (``assets/examples_web/examples.json``); on synth-mini, ``02_conflicting_triangle_on_sky_256.png``.

``--all-tabs`` also saves beside ``--out`` the compare tab with its accordions open (``<out>-options.png``),
the tuning tab with the zip source and the mask cue chosen, so every hidden part shows (``<out>-tuning.png``),
and the prompts tab (``<out>-prompts.png``): what to compare by eye when the layout code changes.

Needs Chromium (`apt-get install chromium`; `DAPT_CHROMIUM` overrides the path) and playwright's Python package.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright import sync_api

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120
EXAMPLE_FOLDERS = {"synth-web": ROOT / "assets" / "examples_web", "synth-mini": ROOT / "assets" / "examples"}
SHOWN_QUANTILE = 0.9  # synth-web's default example: the scene picked at this quantile
PAGE_TIMEOUT_MS = 120_000


def wait_for_server(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with code {proc.returncode} before serving")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"app.py did not answer at {url} within {START_TIMEOUT_S} s")


def shoot_other_tabs(page, out: Path) -> None:
    """The compare tab's accordions opened, the tuning tab (zip source and mask cue chosen: every optional part
    visible) and the prompts tab."""
    page.get_by_text("Options", exact=True).click()
    page.get_by_text("Raw results (JSON)").click()
    page.get_by_text("Foreground segmenter").wait_for()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(out.with_name(f"{out.stem}-options.png")), full_page=True)
    page.get_by_role("tab", name="Few-shot tuning").click()
    page.get_by_label("a zip with one folder per class").check()
    page.get_by_label("mask", exact=True).check()
    page.get_by_text("Masks of your images (mask cue)").wait_for()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(out.with_name(f"{out.stem}-tuning.png")), full_page=True)
    page.get_by_role("tab", name="Model and prompts").click()
    page.get_by_text("Loaded backbone").wait_for()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(out.with_name(f"{out.stem}-prompts.png")), full_page=True)


def default_example(backbone: str) -> str:
    """synth-web: the manifest's scene at SHOWN_QUANTILE; synth-mini: its conflicting triangle."""
    if backbone == "synth-mini":
        return "02_conflicting_triangle_on_sky_256.png"
    manifest = json.loads((EXAMPLE_FOLDERS[backbone] / "examples.json").read_text(encoding="utf-8"))
    return next(e["file"] for e in manifest["examples"] if e["quantile"] == SHOWN_QUANTILE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=tuple(EXAMPLE_FOLDERS), default="synth-web")
    parser.add_argument("--example", default=None, help="file in the backbone's example folder to compare on")
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--all-tabs", action="store_true", help="also screenshot the tuning and prompts tabs")
    args = parser.parse_args()
    example = EXAMPLE_FOLDERS[args.backbone] / (args.example or default_example(args.backbone))
    if not example.is_file():
        parser.error(f"--example: {example} does not exist")
    url = f"http://127.0.0.1:{args.port}"
    proc = subprocess.Popen([sys.executable, "app.py", "--backbone", args.backbone, "--port", str(args.port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_server(url, proc)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=os.environ.get("DAPT_CHROMIUM", "/usr/bin/chromium"),
                                         headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.set_default_timeout(PAGE_TIMEOUT_MS)
                page.goto(url)
                page.locator("#compare-image input[type=file]").set_input_files(str(example))
                page.locator("#compare-image img").first.wait_for()
                page.locator("#compare-run").click()
                page.locator("#compare-gallery img").nth(1).wait_for()
                page.wait_for_timeout(2000)  # let the plot and table settle
                page.screenshot(path=args.out, full_page=True)
                if args.all_tabs:
                    shoot_other_tabs(page, Path(args.out))
            finally:
                browser.close()
    finally:
        proc.send_signal(signal.SIGINT)  # as Ctrl-C: the app exits through its clean-up (its temporary folder)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
