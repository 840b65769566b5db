"""CoOp (Zhou et al., IJCV 2022): learned context vectors in place of "a photo of a", text side only."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dapt_core.backbones import Backbone
from dapt_core.learners.base import PromptError, PromptLearner, count_tokens


@dataclass
class CoOpConfig:
    n_ctx: int = 16  # number of context vectors (ignored when ctx_init is given: its token count wins)
    ctx_init: str | None = None  # words to start the context from, e.g. "a photo of a"; None = random
    class_specific: bool = False  # one context per class instead of one shared context
    init_std: float = 0.02  # std of the random initialisation


class CoOp(PromptLearner):
    """CoOp prompts ``[SOS][ctx_1..ctx_M][class tokens][.][EOS]`` through the frozen text encoder.

    With ``ctx_init="a photo of a"`` and no training, the logits equal zero-shot CLIP's for
    "a photo of a {class}.". Under DAPT its background prompts keep the learned context,
    ``[SOS][ctx] {word}.[EOS]``, so the background term trains the context.
    """

    kind = "coop"

    def __init__(self, backbone: Backbone, classnames: list[str], cfg: CoOpConfig | None = None) -> None:
        cfg = cfg or CoOpConfig()
        if cfg.ctx_init:
            n_ctx, prefix = count_tokens(backbone, cfg.ctx_init), cfg.ctx_init
        else:
            if cfg.n_ctx < 1:
                raise PromptError(f"n_ctx must be at least 1, got {cfg.n_ctx}")
            # placeholder words; their embeddings are replaced by the learned context
            n_ctx, prefix = cfg.n_ctx, " ".join(["X"] * cfg.n_ctx)
        super().__init__(backbone, classnames, n_ctx, prefix)
        self.cfg = cfg
        n_cls = len(self.classnames) if cfg.class_specific else None
        if cfg.ctx_init:
            init = self._init_embedding()
            ctx = init.expand(n_cls, -1, -1).clone() if n_cls else init
        else:
            shape = (n_cls, n_ctx, backbone.text_width) if n_cls else (n_ctx, backbone.text_width)
            ctx = torch.randn(shape, device=backbone.device) * cfg.init_std
        self.ctx = nn.Parameter(ctx)

    def _init_embedding(self) -> torch.Tensor:
        with torch.no_grad():
            tokens = self.backbone.tokenize([self.prefix])
            return self.backbone.model.token_embedding(tokens)[0, 1:1 + self.n_ctx].clone()

    def set_classnames(self, names: list[str]) -> None:
        if getattr(self, "cfg", None) is not None and self.cfg.class_specific and len(names) != self.ctx.shape[0]:
            raise PromptError(f"class-specific context was trained for {self.ctx.shape[0]} classes; "
                              f"cannot switch to {len(names)}")
        super().set_classnames(names)

    def text_features(self) -> torch.Tensor:
        return self._encode_prompts(self.class_tokens, self.ctx)

    def prompt_text_features(self, suffixes: list[str]) -> torch.Tensor:
        """``[SOS][ctx] suffix`` prompts, DAPT's background prompts over CoOp (a plain-text prompt would be
        frozen CLIP, which the background term cannot move); a class-specific context is averaged."""
        ctx = self.ctx.mean(dim=0) if self.ctx.dim() == 3 else self.ctx
        return self._encode_prompts(self._context_prompt_tokens(suffixes), ctx)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.backbone.visual(images), dim=-1)
