"""What every prompt learner shares: prompt text assembly, the frozen backbone, logits."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import ClassVar

import torch
from torch import nn

from dapt_core.backbones import Backbone
from dapt_core.encoders import encode_text_embeddings, normalize
from dapt_core.errors import DaptError

PROMPT_CACHE_ENTRIES = 8  # token ids / frozen features of extra prompt lists a learner keeps (fast path)
TEXT_CHUNK = 256  # class prompts per text-encoder call when class features are computed without gradients


class PromptError(DaptError):
    """A class list or prompt configuration the learner cannot use."""


def clean_classnames(names: list[str]) -> list[str]:
    """Strips and validates free-text class names; underscores read as spaces, as in CoOp's data sets."""
    cleaned = [" ".join(str(n).replace("_", " ").split()) for n in names]
    if len(cleaned) < 2:
        raise PromptError(f"need at least two class names, got {len(cleaned)}")
    if any(not n for n in cleaned):
        raise PromptError("class names must not be empty")
    dupes = sorted(n for n, count in Counter(cleaned).items() if count > 1)  # linear: lists of 5,000 classes
    if dupes:
        raise PromptError(f"duplicate class names: {', '.join(dupes)}")
    return cleaned


def count_tokens(backbone: Backbone, words: str) -> int:
    """Number of BPE tokens of ``words`` without start/end tokens."""
    tokens = backbone.tokenizer([words])[0]
    return int((tokens != 0).sum()) - 2


class PromptLearner(nn.Module):
    """Learnable prompts around a frozen CLIP.

    A prompt is ``[SOS] <prefix words> <class words>. [EOS]`` where the first ``n_ctx`` prefix tokens are
    replaced by learned vectors. The backbone is held as a plain attribute, so ``state_dict()`` holds only
    the learned tensors.
    """

    kind: ClassVar[str] = ""
    n_visual_prompts: int = 0  # extra tokens appended to the image token sequence (MaPLe)
    # How DAPT's background prompts are encoded: True = behind the learned context, like the class prompts
    # (:meth:`prompt_text_features`); False = as plain text at the input (:meth:`plain_prompt_features`).
    background_in_context: ClassVar[bool] = True

    def __init__(self, backbone: Backbone, classnames: list[str], n_ctx: int, prefix: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.n_ctx = n_ctx
        self.prefix = prefix
        # True: the encoders' exact fast paths (text cut after the last end token with a shared prefix run
        # once, extra prompts tokenised once, frozen prompt features kept, attention blocks on contiguous
        # tokens; see dapt_core.encoders); False: the plain paths (kept for equivalence tests and benchmarks)
        self.fast_paths = True
        self._prompt_cache: dict[tuple, object] = {}
        self.set_classnames(classnames)

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def classnames(self) -> list[str]:
        return list(self._classnames)

    def set_classnames(self, names: list[str]) -> None:
        """Switches the class list (e.g. base to novel classes); learned context is kept."""
        self._classnames = clean_classnames(names)
        self.register_buffer("class_tokens", self._tokenize_prompts([f"{n}." for n in self._classnames]),
                             persistent=False)

    def _tokenize_prompts(self, suffixes: list[str]) -> torch.Tensor:
        """(N, L) token ids of ``prefix + suffix`` for each suffix."""
        tokens = self.backbone.tokenize([f"{self.prefix} {s}" for s in suffixes])
        too_long = (tokens[:, -1] != 0).nonzero().flatten().tolist()
        if too_long:
            raise PromptError(f"prompt too long for the text encoder: {suffixes[too_long[0]]!r}")
        return tokens

    def _cached(self, key: tuple, make):
        """``make()`` once per key (and device) on the fast path, every call on the plain path. Only for
        values that depend on nothing learned: token ids, or features of prompts no learned tensor reaches."""
        if not self.fast_paths:
            return make()
        key = (str(self.device), *key)
        if key not in self._prompt_cache:
            if len(self._prompt_cache) >= PROMPT_CACHE_ENTRIES:
                self._prompt_cache.pop(next(iter(self._prompt_cache)))
            self._prompt_cache[key] = make()
        return self._prompt_cache[key]

    def _context_prompt_tokens(self, suffixes: list[str]) -> torch.Tensor:
        """Token ids of extra ``[SOS][ctx] suffix`` prompts, tokenised once on the fast path."""
        return self._cached(("context", tuple(suffixes)), lambda: self._tokenize_prompts(list(suffixes)))

    def _embed_with_context(self, tokens: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """(N, L, D) embeddings with positions 1..n_ctx replaced by ``ctx`` ((n_ctx, D) or (N, n_ctx, D))."""
        with torch.no_grad():
            frozen = self.backbone.model.token_embedding(tokens)
        ctx = ctx.expand(tokens.shape[0], -1, -1) if ctx.dim() == 2 else ctx
        return torch.cat([frozen[:, :1], ctx.to(frozen.dtype), frozen[:, 1 + self.n_ctx:]], dim=1)

    def _encode_prompts(self, tokens: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Normalised text features (N, E) for prompts with the given context."""
        embeddings = self._embed_with_context(tokens, ctx)
        return normalize(encode_text_embeddings(self.backbone.model, embeddings, tokens,
                                                self.deep_text_prompts(), self.n_ctx, fast=self.fast_paths))

    def deep_text_prompts(self) -> list[torch.Tensor] | None:
        """Per-layer text prompts (MaPLe); None for shallow learners."""
        return None

    def text_features(self) -> torch.Tensor:
        """(C, E) normalised features of the class prompts."""
        raise NotImplementedError

    @torch.no_grad()
    def frozen_text_features(self, chunk: int | None = None) -> torch.Tensor:
        """(C, E) detached :meth:`text_features`, encoded ``chunk`` class prompts at a time (``TEXT_CHUNK``
        when None), so that the text tower's memory stays bounded whatever the number of classes (evaluation,
        analysis)."""
        chunk = TEXT_CHUNK if chunk is None else chunk
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        n = self.class_tokens.shape[0]
        if n <= chunk:
            return self.text_features().detach()
        ctx = self.ctx
        return torch.cat([self._encode_prompts(self.class_tokens[i:i + chunk],
                                               ctx[i:i + chunk] if ctx.dim() == 3 else ctx)
                          for i in range(0, n, chunk)])

    def prompt_text_features(self, suffixes: list[str]) -> torch.Tensor:
        """(K, E) normalised features of extra prompts behind the learned context, ``[SOS][ctx] suffix``
        (CoOp's DAPT background prompts); they never enter the class logits."""
        raise NotImplementedError

    def plain_prompt_features(self, texts: list[str]) -> torch.Tensor:
        """(K, E) normalised features of plain-text prompts: the texts' own token embeddings at the input, no
        learned context there; deep text prompts (MaPLe), where the learner has them, overwrite positions
        1..n_ctx from layer 1 on as for the class prompts. This is how the official DAPT builds its
        background prompts.

        Raises:
            PromptError: a text too long for the text encoder, or shorter than the n_ctx positions the deep
                prompts overwrite (they would overwrite its end-of-text token).
        """
        texts = tuple(texts)
        tokens = self._cached(("plain", texts), lambda: self._checked_plain_tokens(texts))
        if not self.deep_text_prompts():  # frozen CLIP text: nothing learned reaches these features
            return self._cached(("plain-features", texts), lambda: self._plain_features(tokens).detach())
        return self._plain_features(tokens)

    def _checked_plain_tokens(self, texts: tuple[str, ...]) -> torch.Tensor:
        tokens = self.backbone.tokenize(list(texts))
        lengths = (tokens != 0).sum(dim=1) - 2  # words' tokens without start/end
        for text, row, n in zip(texts, tokens, lengths.tolist()):
            if row[-1] != 0:
                raise PromptError(f"prompt too long for the text encoder: {text!r}")
            if self.deep_text_prompts() and n < self.n_ctx:
                raise PromptError(f"plain prompt {text!r} has {n} token(s); the deep prompts overwrite "
                                  f"{self.n_ctx}")
        return tokens

    def _plain_features(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            embeddings = self.backbone.model.token_embedding(tokens)
        return normalize(encode_text_embeddings(self.backbone.model, embeddings, tokens,
                                                self.deep_text_prompts(), self.n_ctx, fast=self.fast_paths))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, E) normalised image features of (B, 3, H, W) normalised images."""
        raise NotImplementedError

    @property
    def learns_image_side(self) -> bool:
        """Whether a learned tensor reaches the image features (MaPLe's visual prompts); False for a frozen image
        tower (CoOp), whose features no loss can train. A learner with other image-side parameters overrides it."""
        return self.n_visual_prompts > 0

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """(B, C) scaled cosine similarities."""
        return self.backbone.logit_scale * image_features @ text_features.t()

    def forward(self, images: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (B, C); pass precomputed ``text_features`` to skip the text encoder."""
        if text_features is None:
            text_features = self.text_features()
        return self.logits(self.encode_image(images), text_features)

    def options(self) -> dict:
        """The learner's config as keyword options of ``build_learner``; stored in prompt checkpoints."""
        return asdict(self.cfg)
