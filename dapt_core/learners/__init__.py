"""Prompt learners by name: ``build_learner("coop" | "maple", backbone, classnames, **options)``."""

from __future__ import annotations

from dataclasses import fields

from dapt_core.backbones import Backbone
from dapt_core.learners.base import PromptError, PromptLearner, clean_classnames
from dapt_core.learners.coop import CoOp, CoOpConfig
from dapt_core.learners.maple import MaPLe, MaPLeConfig

LEARNERS: dict[str, tuple[type[PromptLearner], type]] = {
    "coop": (CoOp, CoOpConfig),
    "maple": (MaPLe, MaPLeConfig),
}


def list_learners() -> list[str]:
    return list(LEARNERS)


def build_learner(kind: str, backbone: Backbone, classnames: list[str], **options) -> PromptLearner:
    """Builds a learner; ``options`` are fields of its config dataclass (unknown ones are an error)."""
    if kind not in LEARNERS:
        raise PromptError(f"unknown learner {kind!r}; choose from {', '.join(LEARNERS)}")
    cls, cfg_cls = LEARNERS[kind]
    known = {f.name for f in fields(cfg_cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise PromptError(f"{kind} has no option(s) {', '.join(unknown)}; options: {', '.join(sorted(known))}")
    return cls(backbone, classnames, cfg_cls(**options))


__all__ = ["CoOp", "CoOpConfig", "LEARNERS", "MaPLe", "MaPLeConfig", "PromptError", "PromptLearner",
           "build_learner", "clean_classnames", "list_learners"]
