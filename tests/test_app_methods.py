"""The compare tab's attribution-method menu: one line per method, the default read from the measured
benchmark (not typed in), and a comparison figure that names the method of its maps."""

from __future__ import annotations

import json
import logging

import numpy as np

from dapt_core.analysis import analyze
from dapt_core.attention.cam import CAM_METHODS
from dapt_core.attention.descriptions import (
    DEFAULT_METHOD, METHOD_DESCRIPTIONS, best_measured_method, method_choices,
)
from dapt_core.learners import build_learner


def _bench(tmp_path, summary: dict) -> str:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"config": {}, "summary": summary}))
    return str(path)


def _row(pointing: float, lift: float) -> dict:
    return {"pointing": [pointing, 0.01], "lift": [lift, 0.02], "energy_share": [0.5, 0.0]}


def test_best_method_is_the_highest_mean_pointing_game_not_the_highest_lift(tmp_path):
    summary = {"set-a": {"gradcam": _row(0.25, 3.0), "eigencam": _row(0.75, 1.0), "legrad": _row(0.5, 2.0)},
               "set-b": {"gradcam": _row(0.25, 3.0), "eigencam": _row(0.5, 1.0), "legrad": _row(0.5, 2.0)}}
    assert best_measured_method(_bench(tmp_path, summary)) == "eigencam"  # 0.625 against 0.5 and 0.25


def test_best_method_averages_over_prompt_sets_and_breaks_ties_by_lift(tmp_path):
    # legrad's single best set (1.0) does not win: its mean (0.5) ties relevance's, whose lift is higher;
    # a method the app does not know is ignored however well it scored.
    summary = {"set-a": {"legrad": _row(1.0, 1.0), "relevance": _row(0.5, 2.0), "magic": _row(1.0, 9.0)},
               "set-b": {"legrad": _row(0.0, 1.0), "relevance": _row(0.5, 2.0), "magic": _row(1.0, 9.0)}}
    assert best_measured_method(_bench(tmp_path, summary)) == "relevance"


def test_best_method_falls_back_to_the_official_gradcam_with_a_log_line(tmp_path, caplog):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    no_summary = _bench(tmp_path, {})
    unknown_only = tmp_path / "unknown.json"
    unknown_only.write_text(json.dumps({"summary": {"s": {"magic": _row(1.0, 9.0)}}}))
    assert DEFAULT_METHOD == "gradcam"
    for path in (tmp_path / "missing.json", bad, no_summary, unknown_only):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dapt_core.attention.descriptions"):
            assert best_measured_method(path) == "gradcam"
        assert "using gradcam" in caplog.text and str(path) in caplog.text


def test_menu_lists_every_method_once_with_its_description():
    choices = method_choices()
    assert [key for _, key in choices] == list(CAM_METHODS)
    assert dict((key, label) for label, key in choices)["legrad"] == f"legrad: {METHOD_DESCRIPTIONS['legrad']}"


def test_comparison_figure_title_names_the_method(tiny_backbone):
    learner = build_learner("coop", tiny_backbone, ["cat", "dog"], n_ctx=2)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for method in ("legrad", "eigencam"):
        result = analyze(image, [("set", learner)], segmenter=None, cam_method=method)
        assert result.figure("scene: set")._suptitle.get_text() == f"scene: set ({method} maps)"
        assert result.figure()._suptitle.get_text() == f"{method} maps"
