"""What each attribution method is, in one line, for menus and help texts, and which one measured best;
imports nothing heavy.

The keys are exactly those of :data:`dapt_core.attention.cam.CAM_METHODS` (a test checks it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dapt_core.paths import PROJECT_DIR

log = logging.getLogger(__name__)

# DAPT's coarse cue as published: Grad-CAM at the last vision block's first LayerNorm
DEFAULT_METHOD = "gradcam"

METHOD_DESCRIPTIONS: dict[str, str] = {
    "gradcam": "Grad-CAM at the last block's ln_1: patch tokens weighted by their mean gradient "
               "(DAPT's published coarse cue)",
    "gradcam++": "Grad-CAM++ at the last block's ln_1: higher-order gradient weights, better for several "
                 "object parts",
    "eigencam": "Eigen-CAM at the last block's ln_1: the first principal component of the patch tokens "
                "(class-agnostic, no gradients)",
    "layercam": "LayerCAM at the last block's ln_1: every patch token weighted by its own positive gradient",
    "legrad": "LeGrad (Bousselham et al. 2024): positive gradients of each layer's class score with respect "
              "to that layer's attention map, summed over layers",
    "relevance": "Gradient-weighted attention relevance (Chefer et al., ICCV 2021): gradient-weighted "
                 "attention rolled out through every layer, class-token row",
}

# The attention benchmark's JSON (python -m dapt_core bench attention), read for the best measured method
BENCH_RESULT = PROJECT_DIR / "docs" / "results" / "attention_bench.json"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def best_measured_method(path: str | Path = BENCH_RESULT) -> str:
    """The attribution method with the best pointing game in the attention benchmark's JSON.

    Each method's pointing game (ties: its lift) is averaged over the benchmark's prompt sets from the JSON's
    ``summary`` (per set, ``[mean, std]`` over seeds); the mean of those means is the ranking
    ``experiments.attention_bench_report.best_method`` uses. Methods that are not in
    :data:`METHOD_DESCRIPTIONS` are ignored.

    Args:
        path: the benchmark's JSON.

    Returns:
        The best method's key; :data:`DEFAULT_METHOD` (with a warning in the log) when the file is missing,
        unreadable, or holds no measured known method.
    """
    path = Path(path)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))["summary"]
        means = {}
        for method in METHOD_DESCRIPTIONS:
            rows = [per_set[method] for per_set in summary.values() if method in per_set]
            if rows:
                means[method] = (_mean([float(r["pointing"][0]) for r in rows]),
                                 _mean([float(r["lift"][0]) for r in rows]))
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        log.warning("no measured attribution method (%s: %s); using %s", path, err, DEFAULT_METHOD)
        return DEFAULT_METHOD
    if not means:
        log.warning("%s measures no known attribution method; using %s", path, DEFAULT_METHOD)
        return DEFAULT_METHOD
    return max(means, key=means.__getitem__)


def method_choices() -> list[tuple[str, str]]:
    """(label, key) pairs for a menu: each method's key with its one-line description."""
    return [(f"{key}: {text}", key) for key, text in METHOD_DESCRIPTIONS.items()]
