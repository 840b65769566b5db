"""The resumable state of one training run, and the fingerprint that says which run it belongs to.

A state file is only ever resumed by the same run: the fingerprint (learner and its options, backbone,
classes, every training and DAPT setting, the exact training and validation images, the caller's own
facts such as the data spec and shot count) is stored beside the tensors, and a run with any other value
refuses to resume, naming each field that differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch

from dapt_core.constants import DAPT_RECORD_DEFAULTS
from dapt_core.data.records import Sample
from dapt_core.errors import DaptError
from dapt_core.fileio import atomic_path

log = logging.getLogger(__name__)

STATE_FORMAT = "dapt-train-state"
STATE_VERSION = 2  # 1: no fingerprint, no best-epoch snapshot
# fingerprint fields added after state files were first written: one that lacks them belongs to a run with these
ADDED_FIELDS = {f"dapt.{k}": v for k, v in DAPT_RECORD_DEFAULTS.items()}
# TrainConfig fields that change how fast a run goes, not what it computes
NON_IDENTITY_FIELDS = ("eval_batch_size", "num_workers")
MAX_SHOWN_CHARS = 60  # longest value a mismatch message quotes in full


class RunMismatchError(DaptError):
    """A state file that belongs to another run (or to no known run); the message names what differs."""


def images_digest(samples: Sequence[Sample]) -> dict[str, Any]:
    """Count and SHA-256 of the ordered (path, label) list: the identity of a run's images."""
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.path}\t{s.label}\n".encode("utf-8"))
    return {"n": len(samples), "sha256": h.hexdigest()}


def run_fingerprint(learner, samples: Sequence[Sample], cfg, dapt, *, val_samples: Sequence[Sample] = (),
                    masks: object | None = None, run_info: dict | None = None) -> dict[str, Any]:
    """A flat, JSON-normalised dict of everything that makes the run what it is.

    Args:
        learner: the :class:`~dapt_core.learners.base.PromptLearner` being trained.
        samples: the training images, in training order.
        cfg: the run's ``TrainConfig``; dapt: its ``DaptConfig``.
        val_samples: the images model selection scores.
        masks: the mask provider (its ``root`` folder, when it has one, is part of the identity).
        run_info: the caller's own facts (e.g. ``{"data": ..., "shots": ...}``), stored as ``run.<key>``.
    """
    backbone = learner.backbone
    fp: dict[str, Any] = {"learner": learner.kind, "backbone": backbone.name,
                          "backbone_weights": backbone.pretrained, "classnames": learner.classnames}
    fp.update({f"learner.{k}": v for k, v in learner.options().items()})
    fp.update({f"train.{k}": v for k, v in asdict(cfg).items() if k not in NON_IDENTITY_FIELDS})
    fp.update({f"dapt.{k}": v for k, v in asdict(dapt).items()})
    fp["train_images"] = images_digest(samples)
    fp["val_images"] = images_digest(val_samples)
    root = getattr(masks, "root", None)
    fp["masks"] = str(root) if root is not None else (type(masks).__name__ if masks is not None else None)
    fp.update({f"run.{k}": v for k, v in (run_info or {}).items()})
    return json.loads(json.dumps(fp, default=str))  # tuples become lists, paths strings: as stored


def _show(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"n", "sha256"}:
        return f"{value['n']} images ({value['sha256'][:8]})"
    text = json.dumps(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS - 3] + "..."


def fingerprint_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"field: stored -> current"`` for every field that differs (missing on one side included)."""
    missing = object()
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key, missing), current.get(key, missing)
        if a != b:
            out.append(f"{key}: {'(absent)' if a is missing else _show(a)} -> "
                       f"{'(absent)' if b is missing else _show(b)}")
    return out


@dataclass
class TrainState:
    """What a run keeps after every epoch to resume from there."""

    fingerprint: dict[str, Any]
    learner: dict[str, torch.Tensor]  # the learner's state_dict after ``epoch``
    optimizer: dict
    epoch: int  # the last finished (0-based) epoch
    history: list[dict]
    rng: torch.Tensor  # torch's CPU generator state
    best: dict | None = None  # best_val selection: {"epoch", "val_accuracy", "learner": state_dict}


def save_state(path: str | Path, state: TrainState) -> None:
    """Writes the state atomically (the fingerprint as a JSON string: plain data under weights_only)."""
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION,
               **{f.name: getattr(state, f.name) for f in fields(state)},
               "fingerprint": json.dumps(state.fingerprint, sort_keys=True)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_state(path: str | Path, fingerprint: dict[str, Any], device: torch.device) -> TrainState:
    """Reads a state file (``weights_only=True``) and checks that it belongs to the run ``fingerprint`` names.

    Raises:
        RunMismatchError: another run's state, an older state file without fingerprint, or an unreadable one.
    """
    path = Path(path)
    hint = "start over with restart=True (train --restart) or write to another --out"
    try:
        raw = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a truncated or foreign file: say so instead of a pickle traceback
        raise RunMismatchError(f"training state {path} is unreadable ({err}); {hint}") from err
    if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT or "fingerprint" not in raw:
        raise RunMismatchError(f"training state {path} was written by an older version or another tool and "
                               f"does not say which run it belongs to; {hint}")
    stored = {**ADDED_FIELDS, **json.loads(raw["fingerprint"])}
    diffs = fingerprint_differences(stored, fingerprint)
    if diffs:
        raise RunMismatchError(f"training state {path} belongs to another run; it differs in "
                               f"{len(diffs)} field(s): {'; '.join(diffs)}. To resume, rerun with the "
                               f"arguments of that run; otherwise {hint}")
    return TrainState(fingerprint=stored, learner=raw["learner"], optimizer=raw["optimizer"], epoch=raw["epoch"],
                      history=raw["history"], rng=raw["rng"].cpu(), best=raw.get("best"))
