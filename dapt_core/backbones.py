"""A registry of frozen CLIP backbones built with open_clip.

A backbone is named by a short key (``ViT-B-16``, ``tiny-vit``, ...). Each key maps to an open_clip model
config and, where it has trained weights, to an entry of the weights registry (:mod:`dapt_core.weights`)
that says where the file comes from. Any other open_clip pair can be named as ``openclip:MODEL/TAG``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import open_clip
import torch
from torch import nn

from dapt_core import paths
from dapt_core.errors import DaptError

log = logging.getLogger(__name__)

open_clip.add_model_config(paths.MODEL_CONFIG_DIR)

OPENCLIP_PREFIX = "openclip:"
RANDOM_INIT_SEED = 0  # weights of backbones without a weight file


class BackboneError(DaptError):
    """A backbone name, weight file or device request that cannot be honoured."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str  # registry key users type
    model_name: str  # open_clip model config name
    pretrained: str | None  # tag stored in prompt checkpoints; None means random init
    weights: str | None  # key of the weights registry; None when no file is needed
    description: str
    test_only: bool = False  # random weights, meant for tests and timing only


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> None:
    """Adds (or replaces) a backbone in the registry."""
    _REGISTRY[spec.name] = spec


def list_backbones() -> list[BackboneSpec]:
    """All registered backbones, in registration order."""
    return list(_REGISTRY.values())


def get_backbone_spec(name: str) -> BackboneSpec:
    """Looks a backbone up by name; ``openclip:MODEL/TAG`` builds a spec on the fly."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(OPENCLIP_PREFIX):
        model_name, _, tag = name[len(OPENCLIP_PREFIX):].partition("/")
        if model_name not in open_clip.list_models():
            raise BackboneError(f"open_clip has no model config {model_name!r}; see open_clip.list_models()")
        return BackboneSpec(name, model_name, tag or None, None, f"open_clip {model_name} ({tag or 'random'})")
    known = ", ".join(_REGISTRY) or "(none)"
    raise BackboneError(f"unknown backbone {name!r}; registered: {known}; or name any open_clip pair as "
                        f"'{OPENCLIP_PREFIX}MODEL/TAG'")


register_backbone(BackboneSpec(
    name="ViT-B-16",
    model_name="ViT-B-16-quickgelu",
    pretrained="openai",
    weights="clip-vit-b-16-openai",
    description="CLIP ViT-B/16 with OpenAI weights (QuickGELU), the backbone of the DAPT paper",
))
register_backbone(BackboneSpec(
    name="synth-mini",
    model_name="synth-mini",
    pretrained="synth-v3",
    weights="synth-mini",
    description="the bundled mini-CLIP trained on the synthetic foreground/background world (offline default)",
))
register_backbone(BackboneSpec(
    name="synth-web",
    model_name="synth-web",
    pretrained="synth-web-v1",
    weights="synth-web",
    description="a mini-CLIP pre-trained on the web-like world (objects on home backgrounds): it has context bias",
))
register_backbone(BackboneSpec(
    name="ViT-B-16-random",
    model_name="ViT-B-16-quickgelu",
    pretrained=None,
    weights=None,
    description="ViT-B/16 architecture with random weights, for timing without the real weights",
    test_only=True,
))
register_backbone(BackboneSpec(
    name="tiny-vit",
    model_name="tiny-vit",
    pretrained=None,
    weights=None,
    description="A tiny randomly initialised ViT CLIP that exercises every code path in seconds",
    test_only=True,
))


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device a request names (None: :func:`default_device`), checked to exist on this machine.

    Raises:
        BackboneError: a name torch does not know, or a CUDA device this machine does not have.
    """
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise BackboneError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from err
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BackboneError(f"device {device!r} was asked for, but this machine has no CUDA GPU; use cpu")
        if resolved.index is not None and resolved.index >= count:
            raise BackboneError(f"device {device!r} was asked for, but this machine has {count} CUDA GPU(s) "
                                f"(cuda:0..cuda:{count - 1})")
    return resolved


@dataclass
class Backbone:
    """A frozen open_clip CLIP with what prompt learners need to know about it."""

    spec: BackboneSpec
    model: nn.Module  # open_clip CLIP, eval mode, every parameter frozen
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_path: Path | None = None
    # Forward hooks (Grad-CAM) see every forward through a module, whichever thread runs it; code that hooks
    # or runs the shared model holds this lock so two callers never see each other's activations.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pretrained(self) -> str | None:
        return self.spec.pretrained

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def vision_width(self) -> int:
        return self.model.visual.conv1.out_channels

    @property
    def text_width(self) -> int:
        return self.model.token_embedding.embedding_dim

    @property
    def embed_dim(self) -> int:
        return self.model.text_projection.shape[1]

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (N, L) on the backbone's device."""
        return self.tokenizer(texts).to(self.device)

    def autocast(self) -> torch.autocast:
        """fp32 on the CPU, bf16 autocast on a GPU."""
        device_type = self.device.type
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=device_type == "cuda")

    def describe(self) -> dict:
        """What is loaded, in a form the CLI and the app can print."""
        return {
            "backbone": self.name,
            "model": self.spec.model_name,
            "pretrained": self.pretrained,
            "weights": str(self.weights_path) if self.weights_path else None,
            "device": str(self.device),
            "precision": "bf16 autocast" if self.device.type == "cuda" else "fp32",
            "image_size": self.image_size,
            "parameters_m": round(sum(p.numel() for p in self.model.parameters()) / 1e6, 2),
        }


def _check_architecture(model: nn.Module, name: str) -> None:
    visual = model.visual
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise BackboneError(f"backbone {name!r} has a {type(visual).__name__} image tower; prompt tuning here "
                            "needs open_clip's VisionTransformer")
    if getattr(visual, "attn_pool", None) is not None or not hasattr(model, "token_embedding"):
        raise BackboneError(f"backbone {name!r} uses attention pooling or a custom text tower, which the "
                            "prompt learners do not support")


def load_backbone(name: str = "ViT-B-16", *, weights_path: str | Path | None = None,
                  device: str | torch.device | None = None, download: bool = True) -> Backbone:
    """Builds a registered backbone, resolves and loads its weights, freezes it.

    Args:
        name: registry key or ``openclip:MODEL/TAG``.
        weights_path: an explicit weight file; wins over every other source.
        device: where to put the model; the GPU when there is one by default.
        download: allow a download when the weights are not on this machine and it is online.

    Raises:
        BackboneError: unknown name or unsupported architecture.
        weights.WeightsNotFoundError: the weights are not here and cannot be fetched.
    """
    spec = get_backbone_spec(name)
    device = resolve_device(device)
    resolved: Path | None = None
    if weights_path is not None or spec.weights is not None:
        from dapt_core import weights  # imported here so that random test backbones need no resolver

        key = spec.weights
        if key is None:
            resolved = Path(weights_path)
            if not resolved.is_file():
                raise weights.WeightsNotFoundError(f"weight file {resolved} does not exist")
        else:
            resolved = weights.resolve_weights(key, weights_path, download=download)
    elif spec.pretrained is not None:
        resolved = _resolve_openclip_tag(spec, download)

    # random-init backbones are seeded so that a name always means the same weights: a prompt set trained
    # on "tiny-vit" in one process still fits "tiny-vit" in the next
    with torch.random.fork_rng(devices=[]), _weight_errors(resolved, name):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = open_clip.create_model(spec.model_name, pretrained=str(resolved) if resolved else None,
                                       device=device)
    _check_architecture(model, name)
    model.eval().requires_grad_(False)
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    log.info("loaded backbone %s on %s (weights: %s)", name, device, resolved or "random")
    return Backbone(spec=spec, model=model, tokenizer=open_clip.get_tokenizer(spec.model_name), image_size=int(size),
                    mean=tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                    std=tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)), weights_path=resolved)


def _weight_errors(resolved: Path | None, name: str) -> contextlib.AbstractContextManager:
    """Refuses a weight file that is none (text, a pickle named .safetensors, ...) before open_clip reads it, and
    turns what open_clip raises on a damaged file or another model's weights into the same clear errors."""
    if resolved is None:
        return contextlib.nullcontext()
    from dapt_core import weights

    weights.check_weight_file(resolved, f"weights file of backbone {name!r}")
    return weights.weight_load_errors(resolved, f"weights file of backbone {name!r}")


def _resolve_openclip_tag(spec: BackboneSpec, download: bool) -> Path:
    """Finds the weights of an arbitrary open_clip pair through the same offline-aware resolver."""
    from dapt_core import weights

    cfg = open_clip.get_pretrained_cfg(spec.model_name, spec.pretrained)
    if not cfg or not cfg.get("hf_hub"):
        raise BackboneError(f"open_clip has no Hugging Face weights for {spec.model_name}/{spec.pretrained}; "
                            f"tags: {open_clip.list_pretrained_tags_by_model(spec.model_name)}")
    key = f"openclip-{spec.model_name}-{spec.pretrained}"
    weights.register_weights(weights.WeightSpec(
        name=key, filename="open_clip_model.safetensors", hf_repo=cfg["hf_hub"].rstrip("/"), url=None,
        sha256=None, size_mb=None, description=spec.description))
    return weights.resolve_weights(key, None, download=download)
