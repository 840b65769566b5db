"""The unit of each metric a prompt set records, so that a fraction (0.90) is never shown as "0.9%".

Prompt sets keep their evaluation in ``metadata["metrics"]``: accuracies in percent (``accuracy``,
``macro_f1``, ``<split>_accuracy`` from the app, ``*_acc`` of the background-shift benchmark), attention
measures as fractions in [0, 1] (``object_attention``, ``pointing_game``, ...) and image counts (``n``). A name
does not tell the unit (``bg_pseudo_label_acc`` is a fraction), so each is listed here with its producer. The
benchmark's attention of a further attribution map is ``<metric>@<map>`` (``object_attention@gradcam++``), in the
unit of ``<metric>``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

PERCENT, FRACTION, COUNT = "percent", "fraction", "count"
METRIC_UNITS: dict[str, str] = {
    # dapt_core.train.classification_metrics
    "accuracy": PERCENT, "macro_f1": PERCENT, "n": COUNT,
    # eval --base-to-novel
    "base": PERCENT, "novel": PERCENT, "hm": PERCENT,
    # dapt_core.experiments.background_shift.evaluate_method
    "aligned_acc": PERCENT, "balanced_acc": PERCENT, "conflicting_acc": PERCENT, "shortcut_rate": PERCENT,
    "object_attention": FRACTION, "pointing_game": FRACTION, "object_area": FRACTION, "cue_iou": FRACTION,
    "train_cue_iou": FRACTION, "bg_pseudo_label_acc": FRACTION, "worst_group_acc": PERCENT,
    # dapt_core.experiments.background_shift.run_task_methods (the bias suite's BG-Gap, percentage points)
    "bg_gap": PERCENT,
}
MAP_SEPARATOR = "@"  # "<metric>@<attribution map>"
PERCENT_SUFFIX = "_accuracy"  # the app's held-out accuracies: "<split>_accuracy", in percent
PERCENT_DECIMALS, FRACTION_DECIMALS = 1, 2


def map_metric_key(cam_methods: Sequence[str], metric: str, cam_method: str) -> str:
    """The record key of a metric of one attribution map, in a run that measured ``cam_methods``: plain for the first
    map, ``<metric>@<map>`` for the others."""
    return metric if cam_method == cam_methods[0] else f"{metric}{MAP_SEPARATOR}{cam_method}"


def metric_unit(key: str) -> str | None:
    """The unit of metric ``key`` (:data:`PERCENT`, :data:`FRACTION`, :data:`COUNT`), or None when unknown."""
    if key in METRIC_UNITS:
        return METRIC_UNITS[key]
    metric, separator, _ = key.partition(MAP_SEPARATOR)
    if separator and metric in METRIC_UNITS:
        return METRIC_UNITS[metric]
    return PERCENT if key.endswith(PERCENT_SUFFIX) else None


def format_metric(key: str, value: float) -> str:
    """``"accuracy 90.0%"``, ``"object_attention 0.90"``, ``"n 12"``; a metric of unknown unit as a plain number."""
    label = key.removesuffix(PERCENT_SUFFIX)
    unit = metric_unit(key)
    if unit == PERCENT:
        return f"{label} {value:.{PERCENT_DECIMALS}f}%"
    if unit == COUNT:
        return f"{label} {int(value)}"
    if unit == FRACTION:
        return f"{label} {value:.{FRACTION_DECIMALS}f}"
    return f"{label} {value:g}"


def format_metrics(metrics: dict | None) -> str:
    """The numeric, finite entries of a prompt set's metrics, each in its unit, joined with commas."""
    shown = [format_metric(k, v) for k, v in (metrics or {}).items()
             if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)]
    return ", ".join(shown)
