"""The methods a grid compares: a prompt learner and a DAPT cue under one name, as the paper's tables list them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from dapt_core.attention.descriptions import DEFAULT_METHOD


@dataclass(frozen=True)
class Method:
    name: str  # what a grid config writes (``maple+dapt-g``)
    learner: str  # key of dapt_core.learners.LEARNERS
    cue: str  # DAPT cue (dapt_core.objective.CUES): off, gradcam (DAPT-G) or mask (DAPT-S)
    title: str  # how the tables name it
    published: str | None = None  # its row in dapt_core.grid.published, where the paper reports it


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("coop", "coop", "off", "CoOp", published="CoOp"),
    Method("maple", "maple", "off", "MaPLe", published="MaPLe"),
    Method("coop+dapt-g", "coop", "gradcam", "CoOp + DAPT-G"),
    Method("coop+dapt-s", "coop", "mask", "CoOp + DAPT-S"),
    # the official DAPT wraps MaPLe: these two are the paper's DAPT-G and DAPT-S
    Method("maple+dapt-g", "maple", "gradcam", "MaPLe + DAPT-G", published="DAPT-G"),
    Method("maple+dapt-s", "maple", "mask", "MaPLe + DAPT-S", published="DAPT-S"),
)}


def get_method(name: str) -> Method:
    """The method of a name; an unknown one raises with the list of known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown grid method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def method_of(name: str, dapt: dict | None = None) -> Method:
    """The method of a name as a grid with ``dapt`` settings runs it: a coarse cue from another attribution map
    than Grad-CAM (``dapt: {cam_method: legrad}``) is named in the title and is no longer the paper's DAPT-G,
    so it gets no published row of its own."""
    method = get_method(name)
    cam_method = (dapt or {}).get("cam_method", DEFAULT_METHOD)  # a grid's cells train with the default when unset
    if method.cue != "gradcam" or cam_method == "gradcam":  # the paper's DAPT-G: the official Grad-CAM cue
        return method
    return replace(method, title=f"{method.title} ({cam_method} cue)", published=None)
