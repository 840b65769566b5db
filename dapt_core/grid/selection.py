"""The data-efficient setting's selection step, through the library's :mod:`dapt_core.selection`.

The grid only adapts that module: which selection methods exist, whether a fraction and method are
accepted, and "keep this share of the training draw, chosen by this method, with this seed". Where the
library has no selection module, the data-efficient setting fails with a clear message when its config is
loaded, before anything runs.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from dapt_core.grid.errors import GridConfigError

if TYPE_CHECKING:
    from dapt_core.data.records import Sample
    from dapt_core.learners.base import PromptLearner

SELECTION_MODULE = "dapt_core.selection"
NOT_AVAILABLE = ("the data-efficient setting needs the training-data selection (dapt_core.selection, "
                 "train --select-fraction/--select-method), which this version of dapt_core does not have")
# SelectionConfig fields the grid sets per cell; the config's selection_options may set the others
CELL_SELECTION_FIELDS = ("fraction", "method", "seed")


def _module() -> ModuleType:
    try:
        return importlib.import_module(SELECTION_MODULE)
    except ModuleNotFoundError as err:
        if err.name != SELECTION_MODULE:
            raise
        raise GridConfigError(NOT_AVAILABLE) from err


def selection_methods() -> list[str]:
    """Names of the selection methods the library offers.

    Raises:
        GridConfigError: the library has no selection module.
    """
    return list(_module().SELECT_METHODS)


def check_selection(methods: list[str], fractions: list[float], options: dict) -> None:
    """Raises :class:`GridConfigError` for a method, fraction or option the library does not accept."""
    module = _module()
    taken = sorted(set(options) & set(CELL_SELECTION_FIELDS))
    if taken:
        raise GridConfigError(f"grid config selection_options may not set {', '.join(taken)}: the grid sets it")
    for method in methods:
        for fraction in fractions:
            try:
                module.SelectionConfig(fraction=fraction, method=method, **options)
            except (TypeError, ValueError) as err:  # TypeError: an option SelectionConfig does not have
                raise GridConfigError(f"grid config selection ({method}, {fraction}): {err}") from err


def normalised_options(options: dict) -> dict:
    """The config's selection options with every default filled in (the per-cell fields left out)."""
    from dataclasses import asdict

    cfg = _module().SelectionConfig(**options)
    return {k: v for k, v in asdict(cfg).items() if k not in CELL_SELECTION_FIELDS}


def select_training(samples: list[Sample], fraction: float, method: str, seed: int, options: dict,
                    learner: PromptLearner) -> tuple[list[Sample], dict]:
    """The share ``fraction`` of ``samples`` that ``method`` keeps, and the selection's record.

    Features and zero-shot logits come from the learner's frozen backbone and its class list.
    """
    module = _module()
    cfg = module.SelectionConfig(fraction=fraction, method=method, seed=seed, **options)
    kept, record = module.select_samples(samples, cfg, backbone=learner.backbone, classnames=learner.classnames)
    return list(kept), record


def selected_count(labels: list[int], fraction: float, options: dict) -> int:
    """How many of the images with these labels the selection keeps (its budget rule, per class or global)."""
    from collections import Counter

    module = _module()
    cfg = module.SelectionConfig(fraction=fraction, **options)
    if not cfg.per_class:
        return module.budget(len(labels), fraction)
    return sum(module.budget(n, fraction, cfg.min_per_class) for n in Counter(labels).values())
