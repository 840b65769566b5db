"""End to end in headless Chromium: open the page, upload an image, compare two prompt sets, take a screenshot.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and Playwright for Python (``pip install
playwright``; the system browser is used, so ``playwright install`` is never run). Skipped when either is
missing. ``DAPT_E2E_SCREENSHOT=docs/screenshot.png`` also copies the screenshot there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("DAPT_CHROMIUM", "/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGE_TIMEOUT_MS = 60_000  # the first comparison loads the prompt sets; a busy 2-core machine is slow
# gradio's queue trips pandas deprecation warnings that say nothing about this app
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")

if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install playwright")

import app  # noqa: E402
from dapt_core.checkpoint import save_prompt_set  # noqa: E402
from dapt_core.learners import build_learner  # noqa: E402
from dapt_core.objective import DaptConfig  # noqa: E402
from dapt_core.world import OBJECT_CLASSES, render_scene  # noqa: E402


@pytest.fixture(scope="module")
def page_url(tmp_path_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("e2e")
    classes = list(OBJECT_CLASSES[:4])
    save_prompt_set(build_learner("coop", tiny_backbone, classes, n_ctx=2), root / "prompts" / "coop.safetensors")
    save_prompt_set(build_learner("coop", tiny_backbone, classes, n_ctx=2, init_std=0.2),
                    root / "prompts" / "coop-dapt.safetensors", dapt=DaptConfig(cue="gradcam"))
    examples = root / "examples"  # one example whose manifest gives it a note, as the web bundle's do
    examples.mkdir()
    scene = render_scene(classes[1], "sky", 64, np.random.default_rng(5))
    Image.fromarray(scene.image).save(examples / "scene.png")
    Image.fromarray(scene.mask.astype(np.uint8) * 255).save(examples / "scene_mask.png")
    # the web bundle's maps: the relevance map first, the one its numbers rank by (not the best measured, eigencam)
    (examples / "examples.json").write_text(json.dumps({"cam_methods": ["relevance", "gradcam"], "examples": [
        {"file": "scene.png", "mask": "scene_mask.png", "caption": "the picked scene", "object": classes[1],
         "note": "**its own numbers**: share 0.123"}]}))
    demo = app.build_app(tiny_backbone, banner="Backbone `tiny-vit` has random weights (end-to-end test).",
                         bundled_dir=root / "prompts", user_dir=root / "user", examples_dir=examples)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@contextlib.contextmanager
def _page(url: str) -> Iterator:
    """A headless Chromium page open at ``url``, closed afterwards."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(url)
            yield page
        finally:
            browser.close()


def test_upload_compare_and_screenshot(page_url, tmp_path):
    scene = render_scene(OBJECT_CLASSES[0], "grass", 128, np.random.default_rng(3))
    picture = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(picture)
    shot = tmp_path / "screenshot.png"
    with _page(page_url) as page:
        page.locator("#compare-image input[type=file]").set_input_files(str(picture))
        page.locator("#compare-image img").first.wait_for()
        page.locator("#compare-run").click()
        overlays = page.locator("#compare-gallery img")
        overlays.nth(1).wait_for()
        captions = page.locator("#compare-gallery").inner_text()
        page.screenshot(path=str(shot), full_page=True)
    assert "coop: on-object" in captions and "coop-dapt: on-object" in captions
    assert Image.open(shot).size[0] >= 1400
    target = os.environ.get("DAPT_E2E_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


def test_a_picked_example_shows_its_note_and_exact_mask(page_url):
    with _page(page_url) as page:
        assert page.locator("#example-note").inner_text().strip() == ""
        page.get_by_text("the picked scene").click()
        page.locator("#example-note strong").wait_for()
        note = page.locator("#example-note").inner_text()
        page.get_by_text("Options", exact=True).click()
        exact = page.get_by_label("exact", exact=False)
        exact.wait_for()
        checked = exact.is_checked()
        method = page.get_by_label("Attribution method").input_value()
        explained = page.get_by_label("Explain class").input_value()
    assert "its own numbers: share 0.123" in note and checked
    assert method.startswith("relevance")  # the map the examples' numbers were measured with
    assert explained == OBJECT_CLASSES[1]  # the class its numbers explain, filled in
