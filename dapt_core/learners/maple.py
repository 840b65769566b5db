"""MaPLe (Khattak et al., CVPR 2023): coupled text and vision prompts in the first J layers of both towers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
from torch import nn

from dapt_core.backbones import Backbone
from dapt_core.encoders import encode_image_prompted, normalize
from dapt_core.learners.base import PromptError, PromptLearner, count_tokens

log = logging.getLogger(__name__)


@dataclass
class MaPLeConfig:
    n_ctx: int = 2  # learned text context tokens (the first n_ctx tokens of ctx_init)
    ctx_init: str = "a photo of a"  # prompt prefix whose first n_ctx token embeddings start the context
    depth: int = 9  # J: layers of each tower that receive prompts (1 = shallow)
    init_std: float = 0.02  # std of the deeper layers' random text prompts


class MaPLe(PromptLearner):
    """Text prompts per layer, each mapped to that layer's visual prompts by its own linear layer.

    Parameter names follow the official release (``ctx``, ``proj``, ``compound_prompts_text.{i}``,
    ``compound_prompt_projections.{i}``) so its checkpoints import directly.
    """

    kind = "maple"
    background_in_context = False  # official DAPT: "a clean origami {word}." as plain text at the input

    def __init__(self, backbone: Backbone, classnames: list[str], cfg: MaPLeConfig | None = None) -> None:
        cfg = cfg or MaPLeConfig()
        n_layers = min(len(backbone.model.transformer.resblocks), len(backbone.visual.transformer.resblocks))
        if cfg.depth < 1:
            raise PromptError(f"MaPLe depth must be at least 1, got {cfg.depth}")
        if cfg.depth > n_layers:
            # the official depth 9 is for 12-layer towers; smaller backbones get prompts in every layer
            log.warning("MaPLe depth %d exceeds the %d layers of %s; using %d", cfg.depth, n_layers,
                        backbone.name, n_layers)
            cfg = replace(cfg, depth=n_layers)
        if not 1 <= cfg.n_ctx <= count_tokens(backbone, cfg.ctx_init):
            raise PromptError(f"n_ctx={cfg.n_ctx} needs at least that many tokens in ctx_init {cfg.ctx_init!r}")
        super().__init__(backbone, classnames, cfg.n_ctx, cfg.ctx_init)
        self.cfg = cfg
        self.n_visual_prompts = cfg.n_ctx
        d_text, d_vis, device = backbone.text_width, backbone.vision_width, backbone.device
        with torch.no_grad():
            init = backbone.model.token_embedding(backbone.tokenize([cfg.ctx_init]))[0, 1:1 + cfg.n_ctx]
        self.ctx = nn.Parameter(init.clone())
        self.proj = nn.Linear(d_text, d_vis, device=device)
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.randn(cfg.n_ctx, d_text, device=device) * cfg.init_std)
             for _ in range(cfg.depth - 1)])
        # one projection per layer, all starting from the same weights as in the official code
        template = nn.Linear(d_text, d_vis, device=device)
        self.compound_prompt_projections = nn.ModuleList(
            [_copy_linear(template) for _ in range(cfg.depth - 1)])

    def deep_text_prompts(self) -> list[torch.Tensor]:
        return list(self.compound_prompts_text)

    def visual_prompts(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """First-layer (P, W) and deeper-layer visual prompts, derived from the text prompts."""
        deep = [proj(p) for proj, p in zip(self.compound_prompt_projections, self.compound_prompts_text)]
        return self.proj(self.ctx), deep

    def text_features(self) -> torch.Tensor:
        return self._encode_prompts(self.class_tokens, self.ctx)

    def prompt_text_features(self, suffixes: list[str]) -> torch.Tensor:
        """``[SOS][ctx] suffix`` prompts; DAPT's background prompts use :meth:`plain_prompt_features`."""
        return self._encode_prompts(self._context_prompt_tokens(suffixes), self.ctx)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        first, deep = self.visual_prompts()
        return normalize(encode_image_prompted(self.backbone.visual, images, first, deep, fast=self.fast_paths))


def _copy_linear(layer: nn.Linear) -> nn.Linear:
    clone = nn.Linear(layer.in_features, layer.out_features, device=layer.weight.device)
    clone.load_state_dict(layer.state_dict())
    return clone
