"""The Gradio app driven through its API with gradio_client: every tab, and the mistakes visitors make."""

from __future__ import annotations

import json
import re
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

import app  # noqa: E402  (the repository root is on sys.path when pytest runs from it)
from dapt_core.checkpoint import save_prompt_set  # noqa: E402
from dapt_core.learners import build_learner  # noqa: E402
from dapt_core.objective import DaptConfig  # noqa: E402
from dapt_core.viz.overlay import PANEL_GAP_PX  # noqa: E402
from dapt_core.world import OBJECT_CLASSES, render_scene  # noqa: E402

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

CLASSES = list(OBJECT_CLASSES[:3])
# gradio's queue trips pandas deprecation warnings that say nothing about this app
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_backbone):
    """The app on the tiny backbone with two bundled prompt sets, on a free port."""
    root = tmp_path_factory.mktemp("app")
    bundled, user, examples = root / "prompts", root / "user", root / "examples"
    save_prompt_set(build_learner("coop", tiny_backbone, CLASSES, n_ctx=2), bundled / "tiny-coop.safetensors")
    save_prompt_set(build_learner("coop", tiny_backbone, CLASSES, n_ctx=2, init_std=0.2),
                    bundled / "tiny-coop-dapt.safetensors", dapt=DaptConfig(cue="gradcam"))
    scene = render_scene(CLASSES[0], "grass", 64, np.random.default_rng(0))
    examples.mkdir()
    Image.fromarray(scene.image).save(examples / "scene.png")
    Image.fromarray(scene.mask.astype(np.uint8) * 255).save(examples / "scene_mask.png")
    (examples / "examples.json").write_text(json.dumps([{"file": "scene.png", "mask": "scene_mask.png"}]))
    demo = app.build_app(tiny_backbone, banner="test", bundled_dir=bundled, user_dir=user, examples_dir=examples)
    port = _free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "root": root, "user": user, "image": examples / "scene.png"}
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(served):
    return Client(served["url"], verbose=False)


def _compare(client, image, sets, classes="", segmenter="cam"):
    return client.predict(image, sets, classes, segmenter, "gradcam", "", api_name="/compare")


def test_compare_returns_split_overlays_table_chart_and_figure(client, served):
    split, gallery, table, chart, figure, summary = _compare(
        client, handle_file(served["image"]), ["bundled/tiny-coop", "bundled/tiny-coop-dapt"])
    assert Image.open(split).size == (3 * 64 + 2 * PANEL_GAP_PX, 64)  # outline, foreground, background
    assert [item["caption"].split(":")[0] for item in gallery] == ["tiny-coop", "tiny-coop-dapt"]
    assert all("on-object" in item["caption"] and item["caption"].endswith("%") for item in gallery)
    assert [row[0] for row in table["data"]] == ["tiny-coop", "tiny-coop-dapt"]
    assert table["data"][1][1] == "CoOp + DAPT (gradcam)"
    assert Path(chart).is_file() and Image.open(figure).format == "PNG"
    assert summary["segmenter"] == "cam" and len(summary["prompt_sets"]) == 2
    assert all(0.0 <= s["object_share"] <= 1.0 for s in summary["prompt_sets"])


def test_compare_with_a_custom_class_list_and_no_segmenter(client, served):
    _, gallery, table, chart, _, summary = _compare(client, handle_file(served["image"]), ["bundled/tiny-coop"],
                                                    classes="dog, cat", segmenter="none")
    assert {c for c, _ in summary["prompt_sets"][0]["top5"]} == {"dog", "cat"}
    assert chart is None and gallery[0]["caption"] == "tiny-coop: on-object n/a"


def test_an_example_is_measured_against_its_exact_mask(client, served, tmp_path):
    *_, summary = _compare(client, handle_file(served["image"]), ["bundled/tiny-coop"], segmenter="exact")
    assert summary["mask_source"] == "given" and summary["segmenter"] is None
    copy = tmp_path / "other.png"
    Image.open(served["image"]).convert("L").convert("RGB").save(copy)  # not an example
    with pytest.raises(AppError, match="Only the example images"):
        _compare(client, handle_file(copy), ["bundled/tiny-coop"], segmenter="exact")
    assert 0.0 <= summary["prompt_sets"][0]["object_share"] <= 1.0


def test_training_result_joins_the_catalogue(client, served):
    status, losses, metrics, saved = client.predict("synthetic", None, "coop", "mask", 1, 1, "trained in test", 1,
                                                    api_name="/train")
    assert "user/trained-in-test" in status and Path(losses).is_file()
    assert set(metrics) >= {"aligned_accuracy", "conflicting_accuracy", "balanced_accuracy"}
    assert Path(saved).name == "trained-in-test.safetensors"
    keys = [entry["key"] for entry in client.predict(api_name="/prompt_sets")]
    assert "user/trained-in-test" in keys
    _, gallery, *_ = _compare(client, handle_file(served["image"]), ["bundled/tiny-coop", "user/trained-in-test"],
                              classes=", ".join(OBJECT_CLASSES))
    assert gallery[1]["caption"].startswith("trained-in-test:")


def test_the_gradcam_cue_trains_on_the_chosen_attribution_method(client, served):
    from dapt_core.checkpoint import read_info

    status, *_ = client.predict("synthetic", None, "coop", "gradcam", 1, 1, "eigen cue", 1, cue_method="eigencam",
                                api_name="/train")
    assert "user/eigen-cue" in status
    dapt = read_info(served["user"] / "eigen-cue.safetensors").meta["dapt"]
    assert (dapt["cue"], dapt["cam_method"]) == ("gradcam", "eigencam")
    client.predict("synthetic", None, "coop", "gradcam", 1, 1, "default cue", 1, api_name="/train")
    assert read_info(served["user"] / "default-cue.safetensors").meta["dapt"]["cam_method"] == "gradcam"


def test_cancel_without_a_job_is_harmless(client):
    assert "No training job" in client.predict(api_name="/cancel_training")


def test_progress_streams_a_second_visitor_waits_in_line_and_jobs_can_be_cancelled(served):
    first, second = Client(served["url"], verbose=False), Client(served["url"], verbose=False)
    long_run = ("synthetic", None, "coop", "off", 8, 50, "long", 1)  # far longer than the test: it is cancelled
    running = first.submit(*long_run, api_name="/train")
    for update in running:
        if "Epoch" in update[0]:
            break
    assert re.search(r"Epoch \d+/50, step \d+/\d+, loss \d", update[0])  # live progress
    waiting = second.submit(*long_run, api_name="/train")
    for update in waiting:
        if "Waiting" in update[0]:
            break
    assert "**1** job(s) ahead" in update[0]
    assert "Cancelling" in second.predict(api_name="/cancel_training")
    assert "Cancelling" in first.predict(api_name="/cancel_training")
    assert "cancelled" in running.result()[0] and "cancelled" in waiting.result()[0].lower()
    assert not list(served["user"].glob("long*.safetensors"))  # a cancelled run saves nothing


def test_upload_and_download_prompt_sets(client, served, tiny_backbone, tmp_path):
    src = save_prompt_set(build_learner("maple", tiny_backbone, CLASSES, depth=1), tmp_path / "shared.safetensors")
    assert "user/shared" in client.predict(handle_file(src), api_name="/upload_prompt_set")
    assert "user/shared-1" in client.predict(handle_file(src), api_name="/upload_prompt_set")
    downloaded = client.predict("user/shared", api_name="/download_prompt_set")
    assert Path(downloaded).read_bytes() == src.read_bytes()
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(b"{not safetensors")
    with pytest.raises(AppError, match="evil.safetensors was refused"):
        client.predict(handle_file(bad), api_name="/upload_prompt_set")
    assert not (served["user"] / "evil.safetensors").exists()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_bad_inputs_give_plain_errors_and_the_server_stays_healthy(client, served, tmp_path):
    image = handle_file(served["image"])
    not_image = tmp_path / "photo.png"
    not_image.write_bytes(b"this is text, not a picture")
    huge = tmp_path / "huge.png"
    Image.new("L", (6000, 5000)).save(huge)  # 30 MP: over the app's pixel cap, yet a tiny file
    png = served["image"].read_bytes()
    cases = [
        (lambda: _compare(client, None, ["bundled/tiny-coop"]), "Upload an image"),
        (lambda: _compare(client, handle_file(not_image), ["bundled/tiny-coop"]), "photo.png"),
        (lambda: _compare(client, handle_file(huge), ["bundled/tiny-coop"]), "pixels"),
        (lambda: _compare(client, image, []), "at least one prompt set"),
        (lambda: _compare(client, image, ["bundled/nope"]), "no prompt set 'bundled/nope'"),
        (lambda: _compare(client, image, ["bundled/tiny-coop"], classes="cat"), "two class names"),
        (lambda: _compare(client, image, ["bundled/tiny-coop"], segmenter="sam"), "sam"),
        (lambda: client.predict("zip", None, "coop", "off", 1, 1, "", 1, api_name="/train"), "Upload a zip"),
        (lambda: client.predict("zip", handle_file(_zip(tmp_path / "c.zip", {"cat/a.png": b"corrupt"})), "coop",
                                "off", 1, 1, "", 1, api_name="/train"), "not a readable image"),
        (lambda: client.predict("zip", handle_file(_zip(tmp_path / "one.zip", {"cat/a.png": png})), "coop",
                                "off", 1, 1, "", 1, api_name="/train"), "at least two classes"),
        (lambda: client.predict("synthetic", None, "coop", "off", 0, 1, "", 1, api_name="/train"), "shots"),
    ]
    for call, message in cases:
        with pytest.raises(AppError, match=message):
            call()
    leak = tmp_path.parent.parent.name  # the server never shows its own paths
    with pytest.raises(AppError) as caught:
        _compare(client, handle_file(not_image), ["bundled/tiny-coop"])
    assert "/tmp/gradio" not in str(caught.value) and leak not in str(caught.value)
    assert len(_compare(client, image, ["bundled/tiny-coop"])[1]) == 1  # still serving


def test_training_on_a_zip_of_class_folders(client, served, tmp_path):
    png = served["image"].read_bytes()
    archive = _zip(tmp_path / "pets.zip", {f"pets/{c}/{i}.png": png for c in ("cat", "dog") for i in range(2)})
    status, _, metrics, saved = client.predict("zip", handle_file(archive), "coop", "off", 1, 1, "pets", 1,
                                               api_name="/train")
    assert "user/pets" in status and metrics["held_out_accuracy"] >= 0 and Path(saved).is_file()
