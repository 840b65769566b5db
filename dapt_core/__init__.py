"""DAPT Attention Lab: prompt tuning that decouples foreground and background before aligning, and the
tools to see where a prompt-tuned CLIP looks.

The public API, importable from the top of the package. Importing ``dapt_core`` is cheap: each name loads
its module (and torch, open_clip, ...) only when it is first used, as ``open_clip`` keeps its top level light.

>>> from dapt_core import load_backbone, build_learner, train_prompts  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_API = {
    "load_backbone": "dapt_core.backbones",
    "list_backbones": "dapt_core.backbones",
    "build_learner": "dapt_core.learners",
    "list_learners": "dapt_core.learners",
    "DaptConfig": "dapt_core.objective",
    "dapt_losses": "dapt_core.objective",
    "TrainConfig": "dapt_core.train",
    "train_prompts": "dapt_core.train",
    "evaluate": "dapt_core.train",
    "save_prompt_set": "dapt_core.checkpoint",
    "load_prompt_set": "dapt_core.checkpoint",
    "import_official": "dapt_core.official",
    "compute_cams": "dapt_core.attention.cam",
    "analyze": "dapt_core.analysis",
    "get_segmenter": "dapt_core.segment",
    "load_imagefolder": "dapt_core.data.folders",
    "parse_data_spec": "dapt_core.data.folders",
    "few_shot": "dapt_core.data.folders",
    "load_image": "dapt_core.imageio",
    "DaptError": "dapt_core.errors",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'dapt_core' has no attribute {name!r}; the public API is: {', '.join(__all__)}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
