"""Each recorded metric is shown in its own unit: accuracies as percent, attention shares as fractions (the model tab
showed the fraction 0.90 as "0.9%")."""

import numpy as np
import pytest

from dapt_core.app_support.catalog import CatalogEntry
from dapt_core.checkpoint import PromptSetInfo, list_prompt_sets
from dapt_core.app_support.startup import BUNDLED_PROMPT_DIR
from dapt_core.experiments.background_shift_report import DIAGNOSTIC_COLUMNS, TABLE_COLUMNS
from dapt_core.metric_units import COUNT, FRACTION, PERCENT, format_metric, format_metrics, metric_unit
from dapt_core.train import classification_metrics


def test_the_benchmark_columns_and_the_units_agree():
    """The report's column titles say the unit ("... %", "(0-1)"); the table here must say the same."""
    for key, title, _, _ in TABLE_COLUMNS + DIAGNOSTIC_COLUMNS:
        expected = PERCENT if "%" in title else FRACTION
        assert metric_unit(key) == expected, key


def test_classification_metrics_have_units():
    metrics = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]))
    assert {k: metric_unit(k) for k in metrics} == {"accuracy": PERCENT, "macro_f1": PERCENT, "n": COUNT}
    assert format_metrics(metrics) == "accuracy 66.7%, macro_f1 66.7%, n 3"


@pytest.mark.parametrize("key,value,shown", [
    ("bg_pseudo_label_acc", 0.9034, "bg_pseudo_label_acc 0.90"),  # a fraction, although it ends in _acc
    ("object_attention", 0.3371, "object_attention 0.34"),
    ("conflicting_acc", 97.2727, "conflicting_acc 97.3%"),
    ("test_accuracy", 50.0, "test 50.0%"),  # the app's held-out accuracy
    ("n", 12, "n 12"),
    ("something_new", 0.25, "something_new 0.25"),  # no unit known: a plain number, no "%"
])
def test_format_metric(key, value, shown):
    assert format_metric(key, value) == shown


def test_non_numbers_are_left_out():
    assert format_metrics({"accuracy": 90.0, "note": "x", "flag": True, "bad": float("nan")}) == "accuracy 90.0%"
    assert format_metrics(None) == ""


def test_the_model_tab_shows_the_bundled_sets_in_their_units():
    infos = list_prompt_sets(BUNDLED_PROMPT_DIR)
    if not infos:
        pytest.skip("no bundled prompt sets in checkpoints/prompts")
    for info in infos:
        shown = CatalogEntry(f"bundled/{info.path.stem}", "bundled", info).row()[5]
        for key, value in info.meta["metrics"].items():
            assert format_metric(key, value) in shown
            if metric_unit(key) == FRACTION:
                assert f"{key} {value:.2f}" in shown and f"{key} {value:.1f}%" not in shown


def test_row_of_a_set_with_fractions(tmp_path):
    info = PromptSetInfo(tmp_path / "x.safetensors", {"learner": "coop", "classnames": ["a", "b"],
                                                      "metrics": {"pointing_game": 0.9, "accuracy": 90.0}})
    assert CatalogEntry("user/x", "user", info).row()[5] == "pointing_game 0.90, accuracy 90.0%"
