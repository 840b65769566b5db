"""The data-efficient setting: a fraction of the training set chosen before training (DeepCore's methods).

The official code (Ferenas/DAPT, ``DATASET.SELECTION_RATIO`` / ``SELECTION_METHOD``) calls DeepCore's selectors
on the (few-shot) training set with ``balance=True``: each class keeps ``round(fraction * n_c)`` of its images,
chosen within the class. This module does the same by default (``per_class=True``), and offers DeepCore's
global selection (``per_class=False``: ``round(fraction * n)`` images over the whole set).

Methods:
    - ``uniform``: a seeded random draw.
    - ``herding``: greedily the image that keeps the mean of the chosen features closest to the mean of all
      (Welling 2009, as in iCaRL). DeepCore's ``herding`` takes the *argmax* of that distance, which picks the
      image that moves the mean furthest away; this module does not repeat that.
    - ``kcenter``: k-center greedy, a seeded random first image, then always the image farthest from every
      image chosen so far.
    - ``uncertainty``: the images whose zero-shot prediction is the least certain (entropy by default;
      ``margin`` and ``least_confidence`` as DeepCore offers them).

Features are the frozen image encoder's normalised embeddings and the zero-shot CLIP logits of
"a photo of a {class}." (DeepCore in the official code pre-tunes the prompted model first and, for herding,
mixes image and text features; here the backbone is frozen, so the selection does not depend on the prompts).

Differences from DeepCore, on purpose: a class keeps at least ``min_per_class`` images (DeepCore's ``round``
leaves a 1-shot class at fraction 0.5 with none); the draw and every tie depend only on the set of samples
(they are sorted by label and path first), never on the input order.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from dapt_core.data.records import Sample
from dapt_core.errors import DaptError

if TYPE_CHECKING:
    from dapt_core.backbones import Backbone

log = logging.getLogger(__name__)

SELECT_METHODS = ("uniform", "herding", "kcenter", "uncertainty")
UNCERTAINTY_SCORES = ("entropy", "margin", "least_confidence")
FRACTION_RANGE = (0.05, 1.0)  # the official ratios run from 0.05 to 1.0 (1.0 = no selection)


class SelectionError(DaptError):
    """A selection setting out of range, or inputs that do not fit it."""


@dataclass(frozen=True)
class SelectionConfig:
    fraction: float = 1.0  # share of the training set to keep, in FRACTION_RANGE; 1.0 keeps everything
    method: str = "uniform"  # one of SELECT_METHODS
    per_class: bool = True  # DeepCore's balance=True (the official DAPT's call): the fraction of every class
    seed: int = 1  # seeds the uniform draw and k-center's first image
    min_per_class: int = 1  # per class: never fewer images than this (or all a class has)
    uncertainty: str = "entropy"  # score of the uncertainty method, one of UNCERTAINTY_SCORES
    batch_size: int = 50  # images per feature step (the official SELECTION_BATCH_SIZE)

    def __post_init__(self) -> None:
        low, high = FRACTION_RANGE
        if not isinstance(self.fraction, (int, float)) or not low <= self.fraction <= high:
            raise SelectionError(f"selection fraction must be in [{low}, {high}], got {self.fraction!r}")
        if self.method not in SELECT_METHODS:
            raise SelectionError(f"unknown selection method {self.method!r}; choose from {', '.join(SELECT_METHODS)}")
        if self.uncertainty not in UNCERTAINTY_SCORES:
            raise SelectionError(f"unknown uncertainty score {self.uncertainty!r}; choose from "
                                 f"{', '.join(UNCERTAINTY_SCORES)}")
        if self.min_per_class < 0 or self.batch_size < 1:
            raise SelectionError(f"min_per_class must be >= 0 and batch_size >= 1, got {self.min_per_class} "
                                 f"and {self.batch_size}")

    @property
    def selects(self) -> bool:
        """False when every image is kept (fraction 1.0, whatever the method): nothing to compute."""
        return self.fraction < 1.0

    @property
    def needs_features(self) -> bool:
        """True when the backbone must embed the training images (every method but uniform)."""
        return self.selects and self.method != "uniform"


def budget(n: int, fraction: float, minimum: int = 0) -> int:
    """Images to keep of ``n``: DeepCore's ``round(fraction * n)`` (half to even), at least ``minimum``."""
    return min(n, max(minimum, round(fraction * n)))


# --- the methods: orders of picks over one group of rows ----------------------------------------------

def uniform_order(n: int, k: int, rng: np.random.Generator) -> list[int]:
    """``k`` of ``range(n)`` drawn without replacement, in draw order."""
    return [int(i) for i in rng.choice(n, size=k, replace=False)]


def _distances(points: torch.Tensor, to: torch.Tensor) -> torch.Tensor:
    """(N,) Euclidean distances of every row of ``points`` (N, D) to the vector ``to`` (D,)."""
    return torch.linalg.vector_norm(points - to, dim=1)


def herding_order(features: torch.Tensor, k: int) -> list[int]:
    """Herding: pick ``t`` minimises ``|| (t+1) mu - (sum of picks so far) - x ||`` over unpicked ``x``.

    Args:
        features: (N, D) features of the group.
        k: picks to make, ``0 <= k <= N``.

    Returns:
        The picked row indices, in pick order (ties: the lowest index).
    """
    x = features.double()
    mu, total = x.mean(dim=0), torch.zeros(x.shape[1], dtype=torch.float64)
    free = torch.ones(len(x), dtype=torch.bool)
    picks = []
    for t in range(k):
        dist = _distances(x, (t + 1) * mu - total).masked_fill(~free, float("inf"))
        p = int(torch.argmin(dist))
        picks.append(p)
        free[p] = False
        total += x[p]
    return picks


def kcenter_order(features: torch.Tensor, k: int, first: int) -> list[int]:
    """k-center greedy: ``first``, then always the row farthest from its nearest pick.

    Args:
        features: (N, D) features of the group.
        k: picks to make, ``0 <= k <= N``.
        first: the row to start from (the caller draws it, seeded).

    Returns:
        The picked row indices, in pick order (ties: the lowest index).
    """
    if k == 0:
        return []
    x = features.double()
    picks = [first]
    nearest = _distances(x, x[first])
    for _ in range(k - 1):
        nearest[picks] = -1.0
        p = int(torch.argmax(nearest))
        picks.append(p)
        nearest = torch.minimum(nearest, _distances(x, x[p]))
    return picks


def uncertainty_scores(logits: torch.Tensor, kind: str = "entropy") -> torch.Tensor:
    """(N,) uncertainty of each prediction, higher = less certain.

    ``entropy``: ``-sum p log p``; ``margin``: ``-(p_top1 - p_top2)``; ``least_confidence``: ``-p_top1``,
    with ``p = softmax(logits)`` over the classes.
    """
    p = torch.softmax(logits.double(), dim=1)
    if kind == "entropy":
        return -(p * torch.log(p.clamp_min(1e-300))).sum(dim=1)
    top = torch.topk(p, k=min(2, p.shape[1]), dim=1).values
    if kind == "margin":
        return -(top[:, 0] - top[:, 1]) if p.shape[1] > 1 else -top[:, 0]
    if kind == "least_confidence":
        return -top[:, 0]
    raise SelectionError(f"unknown uncertainty score {kind!r}; choose from {', '.join(UNCERTAINTY_SCORES)}")


def uncertainty_order(scores: torch.Tensor, k: int) -> list[int]:
    """The ``k`` highest scores' rows, highest first (ties: the lowest index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return order[:k]


# --- selection over a data set ------------------------------------------------------------------------

def _group_order(method: str, rows: np.ndarray, k: int, rng: np.random.Generator,
                 features: torch.Tensor | None, scores: torch.Tensor | None) -> list[int]:
    """``k`` of the data set's ``rows`` (one group) in pick order, as data-set row indices."""
    if method == "uniform":
        return [int(rows[i]) for i in uniform_order(len(rows), k, rng)]
    if method == "herding":
        return [int(rows[i]) for i in herding_order(features[rows], k)]
    if method == "kcenter":
        first = int(rng.integers(len(rows))) if k else 0
        return [int(rows[i]) for i in kcenter_order(features[rows], k, first)]
    return [int(rows[i]) for i in uncertainty_order(scores[rows], k)]


def select_indices(labels: Sequence[int], cfg: SelectionConfig, *, features: torch.Tensor | None = None,
                   logits: torch.Tensor | None = None) -> list[int]:
    """Rows to keep, in pick order within each group (groups by ascending label when ``per_class``).

    Args:
        labels: the class of each row.
        features: (N, D) image features; herding and k-center need them.
        logits: (N, C) zero-shot logits; uncertainty needs them.

    Raises:
        SelectionError: the method's inputs are missing or do not have one row per label.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if not cfg.selects:
        return list(range(n))
    if cfg.method != "uniform":
        what, given = ("logits", logits) if cfg.method == "uncertainty" else ("features", features)
        if given is None or len(given) != n:
            raise SelectionError(f"{cfg.method} selection needs {what} with one row per sample ({n})")
    scores = uncertainty_scores(logits, cfg.uncertainty) if cfg.method == "uncertainty" else None
    rng = np.random.default_rng(cfg.seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if cfg.per_class else [np.arange(n)]
    picks: list[int] = []
    for rows in groups:
        k = budget(len(rows), cfg.fraction, cfg.min_per_class if cfg.per_class else 0)
        picks += _group_order(cfg.method, rows, k, rng, features, scores)
    return picks


@torch.no_grad()
def zero_shot_inputs(backbone: Backbone, samples: Sequence[Sample], classnames: list[str],
                     batch_size: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen image features (N, E) and zero-shot CLIP logits (N, C) of the samples' evaluation views."""
    from torch.utils.data import DataLoader

    from dapt_core.constants import ZERO_SHOT_CONTEXT
    from dapt_core.data.dataset import PromptDataset
    from dapt_core.learners import build_learner

    zero_shot = build_learner("coop", backbone, classnames, ctx_init=ZERO_SHOT_CONTEXT)  # untrained = CLIP
    zero_shot.eval()
    dataset = PromptDataset(samples, image_size=backbone.image_size, mean=backbone.mean, std=backbone.std,
                            train=False)
    features, logits = [], []
    with backbone.lock, backbone.autocast():
        text = zero_shot.text_features()
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            image_features = zero_shot.encode_image(batch["image"].to(backbone.device))
            features.append(image_features.float().cpu())
            logits.append(zero_shot.logits(image_features, text).float().cpu())
    return torch.cat(features), torch.cat(logits)


def select_samples(samples: Sequence[Sample], cfg: SelectionConfig, *, backbone: Backbone | None = None,
                   classnames: list[str] | None = None) -> tuple[list[Sample], dict]:
    """Keeps ``cfg.fraction`` of the samples; returns them (sorted by label and path) and a record of it.

    Args:
        backbone: needed by every method but uniform (features and zero-shot logits).
        classnames: the class list of the zero-shot prediction (uncertainty), in label order.

    Returns:
        ``(kept, record)``: ``record`` holds the config, the counts per class and a sha256 of the kept paths,
        for the prompt set's metadata.
    """
    pool = sorted(samples, key=lambda s: (s.label, str(s.path)))
    features = logits = None
    if cfg.needs_features:
        if backbone is None or (cfg.method == "uncertainty" and not classnames):
            raise SelectionError(f"{cfg.method} selection needs the backbone (and the class names)")
        log.info("embedding %d training images for %s selection", len(pool), cfg.method)
        features, logits = zero_shot_inputs(backbone, pool, classnames or [], cfg.batch_size)
    picks = select_indices([s.label for s in pool], cfg, features=features, logits=logits)
    kept = [pool[i] for i in sorted(picks)]
    per_class: dict[str, int] = {}
    for s in kept:
        per_class[s.classname] = per_class.get(s.classname, 0) + 1
    digest = hashlib.sha256("\n".join(str(s.path) for s in kept).encode()).hexdigest()
    record = {**asdict(cfg), "kept": len(kept), "of": len(pool), "kept_per_class": per_class,
              "kept_sha256": digest}
    log.info("selection %s %.2f: kept %d of %d images", cfg.method, cfg.fraction, len(kept), len(pool))
    return kept, record
