"""The registry of pretrained weight files: what each named weight is and where it comes from.

Each entry is a :class:`WeightSpec` under a short name (``"clip-vit-b-16-openai"``, ``"sam-vit-b"``); the
built-in entries are registered at the bottom of this module. Finding the file is
:mod:`dapt_core.weights.resolve`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dapt_core.errors import DaptError

__all__ = ["UnknownWeightsError", "WeightSpec", "get_weight_spec", "list_weights", "register_weights"]

_SHA256_RE = re.compile(r"[0-9a-f]{64}")

_REGISTRY: dict[str, WeightSpec] = {}


class UnknownWeightsError(DaptError):
    """A registry name that was never registered; the message lists the registered names."""


@dataclass(frozen=True)
class WeightSpec:
    """Where a pretrained weight file comes from and what it is.

    Exactly one source is used for downloads: ``hf_repo`` when set, else ``url``. A spec with neither can
    still be resolved from ``checkpoints/`` or an explicit path.
    """

    name: str  # registry key users type, e.g. "clip-vit-b-16-openai", "sam-vit-b"
    filename: str  # file name inside checkpoints/ (and in the HF repo when hf_repo is set)
    hf_repo: str | None  # Hugging Face repo that holds `filename`
    url: str | None  # direct download URL (used when hf_repo is None)
    sha256: str | None  # expected lowercase hex digest of the file when known (checked after download)
    size_mb: float | None  # approximate size, shown in `weights list`
    description: str  # one line for people: what the weights are and who made them
    rebuild: str | None = None  # for weights this project makes itself: the command that rebuilds them
    path_option: str = "--weights"  # the command-line option that names this file explicitly

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip():
            raise ValueError(f"WeightSpec name must be non-empty, without surrounding spaces, got {self.name!r}")
        if not self.filename or Path(self.filename).name != self.filename or self.filename in {".", ".."}:
            raise ValueError(
                f"WeightSpec {self.name!r}: filename must be a bare file name (it is looked up inside "
                f"checkpoints/), got {self.filename!r}"
            )
        if self.sha256 is not None and not _SHA256_RE.fullmatch(self.sha256):
            raise ValueError(
                f"WeightSpec {self.name!r}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}"
            )
        if self.size_mb is not None and self.size_mb <= 0:
            raise ValueError(f"WeightSpec {self.name!r}: size_mb must be positive, got {self.size_mb}")


def register_weights(spec: WeightSpec) -> None:
    """Adds ``spec`` to the registry; registering the same spec twice is a no-op.

    Raises:
        ValueError: another, different spec is already registered under ``spec.name``.
    """
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing != spec:
        raise ValueError(f"weights {spec.name!r} are already registered with a different spec: {existing}")
    _REGISTRY[spec.name] = spec


def list_weights() -> list[WeightSpec]:
    """Returns every registered spec, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_weight_spec(name: str) -> WeightSpec:
    """Returns the spec registered as ``name``.

    Raises:
        UnknownWeightsError: ``name`` is not registered; the message lists the names that are.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise UnknownWeightsError(f"unknown weights {name!r}; registered weights are: {known}") from None


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/{}"
# SHA-256 of Meta's SAM checkpoints at _SAM_URL. The segment-anything repository publishes none; these are the
# digests that micro-sam (computational-cell-analytics/micro-sam, micro_sam/util.py, models(): the pooch
# registry that checks every download of these URLs) pins for them, and other projects that verify the same
# downloads pin the same values.
_SAM_SHA256 = {
    "vit_b": "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    "vit_l": "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    "vit_h": "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
}

for _spec in (
    WeightSpec(
        name="clip-vit-b-16-openai",
        filename="open_clip_model.safetensors",
        hf_repo="timm/vit_base_patch16_clip_224.openai",
        url=None,
        sha256=None,
        size_mb=599,
        description="CLIP ViT-B/16, OpenAI weights (QuickGELU), via open_clip",
    ),
    WeightSpec(
        name="synth-mini",
        filename="synth-mini.safetensors",
        hf_repo=None,
        url=None,
        sha256=None,
        size_mb=None,
        description="this project's mini-CLIP, trained on its synthetic foreground/background world",
        rebuild="python -m dapt_core synth pretrain",
    ),
    WeightSpec(
        name="synth-web",
        filename="synth-web.safetensors",
        hf_repo=None,
        url=None,
        sha256=None,
        size_mb=None,
        description="this project's mini-CLIP pre-trained on its web-like world, with context bias (issue 14)",
        rebuild="python -m dapt_core.minclip.web_pretrain",
    ),
    WeightSpec(
        name="sam-vit-b",
        filename="sam_vit_b_01ec64.pth",
        hf_repo=None,
        url=_SAM_URL.format("sam_vit_b_01ec64.pth"),
        sha256=_SAM_SHA256["vit_b"],
        size_mb=375,
        description="Segment Anything ViT-B checkpoint, Meta AI",
        path_option="--sam-checkpoint",
    ),
    WeightSpec(
        name="sam-vit-l",
        filename="sam_vit_l_0b3195.pth",
        hf_repo=None,
        url=_SAM_URL.format("sam_vit_l_0b3195.pth"),
        sha256=_SAM_SHA256["vit_l"],
        size_mb=1250,
        description="Segment Anything ViT-L checkpoint, Meta AI",
        path_option="--sam-checkpoint",
    ),
    WeightSpec(
        name="sam-vit-h",
        filename="sam_vit_h_4b8939.pth",
        hf_repo=None,
        url=_SAM_URL.format("sam_vit_h_4b8939.pth"),
        sha256=_SAM_SHA256["vit_h"],
        size_mb=2560,
        description="Segment Anything ViT-H checkpoint, Meta AI",
        path_option="--sam-checkpoint",
    ),
):
    register_weights(_spec)
del _spec
