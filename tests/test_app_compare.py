"""The app's comparison without a UI: uploads read, choices checked, results shrunk and formatted; the catalogue
lists and error rules the app shows."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dapt_core import app_support as support
from dapt_core.analysis import AnalysisResult, PromptSetResult
from dapt_core.app_support import catalog as catalog_module
from dapt_core.app_support import startup
from dapt_core.checkpoint import save_prompt_set
from dapt_core.imageio import ImageInputError
from dapt_core.learners import build_learner
from dapt_core.objective import DaptConfig
from dapt_core.viz.overlay import PANEL_GAP_PX, heatmap_overlay

CLASSES = ["circle", "square", "triangle"]
LIMITS = support.CompareLimits(max_sets=2, max_pixels=10_000, display_side=100)


@pytest.fixture()
def catalog(tmp_path, tiny_backbone):
    bundled = tmp_path / "prompts"
    save_prompt_set(build_learner("coop", tiny_backbone, CLASSES, n_ctx=2), bundled / "a-coop.safetensors")
    save_prompt_set(build_learner("coop", tiny_backbone, CLASSES, n_ctx=2), bundled / "b-dapt.safetensors",
                    dapt=DaptConfig(cue="gradcam"))
    save_prompt_set(build_learner("coop", tiny_backbone, ["cat", "dog"], n_ctx=2), bundled / "c-pets.safetensors")
    return support.PromptCatalog(tiny_backbone, bundled, tmp_path / "user")


def _comparer(catalog, examples_dir, limits=LIMITS):
    examples = support.Examples(examples_dir)
    menu = support.SegmenterMenu(exact_masks=any(e.mask for e in examples.items))
    return support.Comparer(catalog, menu, examples, support.TempFiles(), limits)


# --- uploads and pictures -----------------------------------------------------------------------------------

def test_upload_values_as_gradio_sends_them(tmp_path):
    assert support.upload_path(None) is None and support.upload_path("") is None
    assert support.upload_path("/srv/a/b.png") == tmp_path.__class__("/srv/a/b.png")
    sent = {"path": "/srv/gradio/3f2a/image", "orig_name": "holiday.png"}
    assert str(support.upload_path(sent)) == "/srv/gradio/3f2a/image"
    assert support.upload_name(sent) == "holiday.png"
    assert support.upload_name({"path": "/srv/gradio/3f2a/image", "orig_name": None}) == "image"
    assert support.upload_name("/srv/x/photo.jpg") == "photo.jpg"


def test_a_picture_is_named_as_the_visitor_knows_it(tmp_path):
    stored = tmp_path / "a81c0e"
    Image.new("RGB", (40, 30), (9, 8, 7)).save(stored, format="PNG")
    picture, name, path = support.load_picture({"path": str(stored), "orig_name": "cat.png"}, max_pixels=10_000)
    assert (picture.size, picture.mode, name, path) == ((40, 30), "RGB", "cat.png", stored)
    with pytest.raises(ValueError, match="Upload an image"):
        support.load_picture(None, max_pixels=10_000)
    junk = tmp_path / "b92f11"
    junk.write_bytes(b"not a picture")
    with pytest.raises(ImageInputError, match="photo.png") as caught:
        support.load_picture({"path": str(junk), "orig_name": "photo.png"}, max_pixels=10_000)
    assert "b92f11" not in str(caught.value)
    with pytest.raises(ImageInputError, match="pixels"):
        support.load_picture(str(stored), max_pixels=1_000)  # 40 x 30 = 1,200


def test_shrink_for_display_averages_areas_and_never_enlarges():
    pixels = np.random.default_rng(0).random((6, 12)).astype(np.float32)
    small = support.shrink_for_display(pixels, 4)
    assert small.shape == (2, 4)
    np.testing.assert_allclose(small, pixels.reshape(2, 3, 4, 3).mean(axis=(1, 3)), rtol=1e-5)  # 3 x 3 blocks
    assert support.shrink_for_display(pixels, 12) is pixels
    rgb = np.zeros((300, 90, 3), np.uint8)
    assert support.shrink_for_display(rgb, 100).shape == (100, 30, 3)


def test_shares_are_whole_percentages_or_not_available():
    assert [support.format_share(s) for s in (0.456, 1.0, 0.0, None, math.nan)] == ["46%", "100%", "0%", "n/a",
                                                                                    "n/a"]


# --- presenting an analysis ---------------------------------------------------------------------------------

def _result(mask: np.ndarray | None) -> AnalysisResult:
    image = np.zeros((200, 100, 3), np.uint8)
    image[:, :, 1] = 90
    cam = np.zeros((200, 100), np.float32)
    cam[20:80, 20:80] = 1.0
    found = [PromptSetResult("a", "CoOp", [("circle", 0.75), ("square", 0.25)], "circle", cam,
                             None if mask is None else 0.8, None if mask is None else True),
             PromptSetResult("b", "CoOp + DAPT (gradcam)", [("square", 0.6), ("circle", 0.4)], "square",
                             np.zeros_like(cam), None if mask is None else math.nan,
                             None if mask is None else False)]
    return AnalysisResult(image=image, mask=mask, segmentation=None, results=found, cam_method="gradcam")


def test_present_shrinks_outlines_and_tabulates(tmp_path):
    mask = np.zeros((200, 100), bool)
    mask[:100] = True
    out = support.present(_result(mask), ["bundled/a", "bundled/b"], "t", tmp_path / "fig.png", display_side=50)
    assert out.split.shape == (50, 3 * 25 + 2 * PANEL_GAP_PX, 3)  # outline, foreground, background at 50 px
    assert [caption for _, caption in out.gallery] == ["a: on-object 80%", "b: on-object n/a"]
    assert out.rows == [["a", "CoOp", "80%", "yes", "circle", "circle 75% · square 25%"],
                        ["b", "CoOp + DAPT (gradcam)", "n/a", "no", "square", "square 60% · circle 40%"]]
    overlay = out.gallery[0][0]
    plain = heatmap_overlay(support.shrink_for_display(_result(None).image, 50),
                            support.shrink_for_display(_result(None).results[0].cam, 50))
    assert overlay.shape == (50, 25, 3)
    assert not np.array_equal(overlay[24:26], plain[24:26])  # the mask's edge (row 25 at 50 px) is outlined
    assert np.array_equal(overlay[40:], plain[40:])  # away from the edge the overlay is untouched
    assert out.chart is not None and out.chart.ndim == 3
    assert out.figure == str(tmp_path / "fig.png") and Image.open(out.figure).format == "PNG"
    assert out.summary["prompt_set_keys"] == ["bundled/a", "bundled/b"] and out.summary["mask_source"] == "given"
    assert [s["object_share"] for s in out.summary["prompt_sets"]] == [0.8, None]


def test_present_without_a_mask_has_no_split_chart_or_shares(tmp_path):
    out = support.present(_result(None), ["bundled/a", "bundled/b"], "t", tmp_path / "fig.png", display_side=50)
    assert np.array_equal(out.split, support.shrink_for_display(_result(None).image, 50))
    assert out.chart is None
    assert [row[2:4] for row in out.rows] == [["n/a", ""], ["n/a", ""]]


# --- the comparer -------------------------------------------------------------------------------------------

def test_comparer_checks_the_choice_of_prompt_sets_and_classes(catalog, tmp_path):
    comparer = _comparer(catalog, tmp_path / "no-examples")
    with pytest.raises(ValueError, match="at least one prompt set"):
        comparer.learners([], "")
    with pytest.raises(ValueError, match="at most 2 prompt sets"):
        comparer.learners(["bundled/a-coop", "bundled/b-dapt", "bundled/c-pets"], "")
    with pytest.raises(ValueError, match="^Classes: .*two class names"):
        comparer.learners(["bundled/a-coop"], "cat")
    with pytest.raises(ValueError, match="different class lists"):
        comparer.learners(["bundled/a-coop", "bundled/c-pets"], "")
    with pytest.raises(KeyError, match="bundled/nope"):
        comparer.learners(["bundled/nope"], "")
    named = comparer.learners(["bundled/c-pets", "bundled/a-coop"], "fox, owl")
    assert [(name, learner.classnames) for name, learner in named] == [("c-pets", ["fox", "owl"]),
                                                                       ("a-coop", ["fox", "owl"])]
    stored = comparer.learners(["bundled/b-dapt", "bundled/a-coop"], " ")
    assert [(name, learner.classnames) for name, learner in stored] == [("b-dapt", CLASSES), ("a-coop", CLASSES)]


def test_comparer_runs_the_sets_on_an_upload(catalog, tmp_path):
    comparer = _comparer(catalog, tmp_path / "no-examples")
    picture = tmp_path / "upload"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(picture, "PNG")
    value = {"path": str(picture), "orig_name": "room.png"}
    out = comparer.run(value, ["bundled/a-coop", "bundled/b-dapt"], "", "none", "gradcam", "  ")
    assert out.chart is None and out.split.shape == (60, 80, 3)  # under the display side: not resized
    assert out.summary["prompt_set_keys"] == ["bundled/a-coop", "bundled/b-dapt"]
    assert [s["target"] for s in out.summary["prompt_sets"]] == [row[4] for row in out.rows]
    explained = comparer.run(value, ["bundled/a-coop"], "", "cam", "gradcam", " triangle ")
    assert explained.rows[0][4] == "triangle" and explained.summary["mask_source"] == "segmenter"
    with pytest.raises(ValueError, match="Only the example images"):
        comparer.run(value, ["bundled/a-coop"], "", support.EXACT, "gradcam", "")
    small = _comparer(catalog, tmp_path / "no-examples", support.CompareLimits(2, 4_000, 100))
    with pytest.raises(ImageInputError, match="room.png"):  # 80 x 60 = 4,800 pixels
        small.run(value, ["bundled/a-coop"], "", "none", "gradcam", "")


def test_example_images_are_measured_against_their_exact_masks(catalog, tmp_path):
    example = next(e for e in support.Examples(startup.EXAMPLE_DIR).items if e.mask is not None)
    comparer = _comparer(catalog, startup.EXAMPLE_DIR)
    copy = tmp_path / "upload.png"  # recognised by its bytes, whatever the upload is called
    shutil.copyfile(example.image, copy)
    assert comparer.suggest_segmenter(str(copy), "cam") == support.EXACT
    other = tmp_path / "other.png"
    other.write_bytes(example.image.read_bytes()[:-1] + b"\x00")
    assert comparer.suggest_segmenter(str(other), support.EXACT) == "cam"
    assert comparer.suggest_segmenter(str(other), "grabcut") == "grabcut"
    assert comparer.suggest_segmenter(str(tmp_path / "gone.png"), "grabcut") == "grabcut"  # unreadable: no change
    assert comparer.segmenter_note(str(copy), "cam") == "thresholded Grad-CAM, instant"


# --- catalogue lists ----------------------------------------------------------------------------------------

def test_catalogue_view_keeps_what_is_still_listed(catalog):
    view = catalog.view(["bundled/c-pets", "bundled/gone", "bundled/a-coop"])
    assert view.selected == ["bundled/c-pets", "bundled/a-coop"]
    assert [key for _, key in view.choices] == ["bundled/a-coop", "bundled/b-dapt", "bundled/c-pets"]
    assert view.choices[1][0] == "b-dapt — CoOp + DAPT (gradcam) (bundled)" and view.first_key == "bundled/a-coop"
    assert [row[0] for row in view.rows] == [key for _, key in view.choices]
    assert [s["key"] for s in view.summaries] == [key for _, key in view.choices]
    assert catalog.view(["bundled/gone"]).selected == ["bundled/a-coop", "bundled/b-dapt"]  # the defaults
    assert catalog.view().selected == catalog.default_keys()


def test_an_empty_catalogue_has_no_first_key(tiny_backbone, tmp_path):
    view = support.PromptCatalog(tiny_backbone, tmp_path / "a", tmp_path / "b").view()
    assert (view.choices, view.selected, view.first_key) == ([], [], None)


def test_export_copies_the_file_and_refuses_without_a_key(catalog):
    files = support.TempFiles()
    copy = catalog.export("bundled/b-dapt", files)
    assert copy.parent.parent == files.root and copy.name == "b-dapt.safetensors"
    assert copy.read_bytes() == catalog.get("bundled/b-dapt").info.path.read_bytes()
    with pytest.raises(ValueError, match="Pick a prompt set"):
        catalog.export(None, files)
    with pytest.raises(KeyError, match="bundled/none"):
        catalog.export("bundled/none", files)
    assert sorted(p.name for p in files.root.iterdir()) == [".owner", copy.parent.name]  # refusals leave nothing


def test_install_note_names_the_key_method_and_classes(catalog):
    entry = catalog.install(catalog.get("bundled/b-dapt").info.path, "mine.safetensors")
    assert support.install_note(entry) == "Added **user/mine** (CoOp + DAPT (gradcam), 3 classes)."


def test_backbone_description_is_a_markdown_list(tiny_backbone):
    lines = support.describe_backbone(tiny_backbone).splitlines()
    assert lines[0] == "- **backbone**: tiny-vit"
    assert len(lines) == len(tiny_backbone.describe()) and "- **device**: cpu" in lines


def test_backbone_description_names_the_weights_file_without_its_server_path(tiny_backbone, monkeypatch):
    weights = Path("/srv/private/checkpoints/synth-mini.safetensors")
    monkeypatch.setattr(type(tiny_backbone), "describe", lambda self: {"backbone": "b", "weights": str(weights)})
    assert support.describe_backbone(tiny_backbone) == "- **backbone**: b\n- **weights**: synth-mini.safetensors"


# --- what visitors are told ---------------------------------------------------------------------------------

def test_user_errors_are_shown_in_their_words_and_faults_are_not():
    assert support.user_message(ValueError("shots must be between 1 and 64")) == "shots must be between 1 and 64"
    assert support.user_message(KeyError("no prompt set 'x'")) == "no prompt set 'x'"  # without str()'s quotes
    assert support.user_message(support.UploadError("not a zip")) == "not a zip"
    assert support.user_message(support.QueueFullError("8 waiting")) == "8 waiting"
    assert support.user_message(FileNotFoundError("gone")) == "gone"
    assert support.user_message(RuntimeError("CUDA out of memory")) is None
    assert support.user_message(ZeroDivisionError("division by zero")) is None
    assert support.user_message(OSError("disk full")) is None


def test_guarded_raises_the_uis_error_for_functions_and_generators(caplog):
    import inspect

    class UIError(Exception):
        pass

    def guard(fn):
        return support.guarded(fn, UIError, keep=(UIError,))

    def refuse(n):
        raise ValueError(f"{n} shots for /srv/data/dog")

    def crash():
        raise RuntimeError("index out of range")

    def stream():
        yield "first"
        raise KeyError("no prompt set 'x'")

    def own():
        raise UIError("said as it is")

    with pytest.raises(UIError, match=r"^0 shots for dog$") as refused:
        guard(refuse)(0)
    assert isinstance(refused.value.__cause__, ValueError) and "refuse refused" in caplog.text
    with pytest.raises(UIError) as crashed:
        guard(crash)()
    assert str(crashed.value) == support.INTERNAL_ERROR
    assert "crash failed" in caplog.text and "index out of range" in caplog.text  # the log has the details
    assert inspect.isgeneratorfunction(guard(stream)) and guard(stream).__name__ == "stream"
    shown = guard(stream)()
    assert next(shown) == "first"
    with pytest.raises(UIError, match=r"^no prompt set 'x'$"):
        next(shown)
    with pytest.raises(UIError, match="^said as it is$") as kept:
        guard(own)()
    assert kept.value.__cause__ is None


def test_comparisons_hash_the_shared_backbone_once_and_read_each_set_by_key(catalog, tmp_path, monkeypatch):
    hashed = []
    original = catalog_module.backbone_fingerprint
    monkeypatch.setattr(catalog_module, "backbone_fingerprint", lambda b: hashed.append(b) or original(b))
    comparer = _comparer(catalog, tmp_path / "no-examples")
    for keys in (["bundled/a-coop", "bundled/b-dapt"], ["bundled/b-dapt", "bundled/a-coop"]):
        learners = comparer.learners(keys, None)
        assert [learner is catalog.learner(key) for (_, learner), key in zip(learners, keys)] == [True, True]
    assert len(hashed) == 1
    with pytest.raises(KeyError, match="bundled/zz"):
        catalog.get_many(["bundled/a-coop", "bundled/zz"])
