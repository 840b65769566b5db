"""Attention weights of a prompted CLIP image tower, captured inside the autograd graph.

Attention-based attribution (LeGrad, gradient-weighted relevance) needs every vision block's attention
probabilities ``A`` (B, H, L, L) and the gradient of a class score with respect to them. open_clip's
``ResidualAttentionBlock`` calls its ``nn.MultiheadAttention`` with ``need_weights=False``, and even with
weights the module returns a *view* of its softmax that the block's output does not depend on, so no
gradient can reach it. :func:`capture_attention` therefore asks each attention for per-head weights and
recomputes the attention output from them (``out_proj(A @ V)``, the module's own maths: eval mode has no
dropout), so the output, and through it the class score, depends on the recorded tensor. Every hook is
removed when the ``with`` block ends, whatever happens inside.

Token layout of the image tower: ``[CLS, g*g patches, P prompts]``; MaPLe appends its ``P`` visual prompt
tokens after the patches and overwrites them before blocks ``1..J-1`` (:class:`TokenLayout`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dapt_core.errors import DaptError
from dapt_core.learners.base import PromptLearner


class AttentionCaptureError(DaptError):
    """An image tower whose attention cannot be captured (not open_clip's batch-first self-attention)."""


@dataclass(frozen=True)
class TokenLayout:
    """Where the class token, the patch tokens and the visual prompt tokens sit in the image sequence."""

    grid: tuple[int, int]  # patch grid (rows, columns)
    n_prompts: int = 0  # visual prompt tokens appended after the patches (MaPLe); 0 for CoOp
    prompt_blocks: tuple[int, ...] = ()  # blocks before which the prompt tokens are overwritten (deep prompts)

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def n_tokens(self) -> int:
        return 1 + self.n_patches + self.n_prompts

    @property
    def patches(self) -> slice:
        return slice(1, 1 + self.n_patches)

    @property
    def prompts(self) -> slice:
        return slice(1 + self.n_patches, self.n_tokens)


def token_layout(learner: PromptLearner) -> TokenLayout:
    """The image token layout of a learner: MaPLe's deep prompts replace its tokens before blocks 1..J-1."""
    n_prompts = learner.n_visual_prompts
    deep = len(learner.deep_text_prompts() or []) if n_prompts else 0
    return TokenLayout(tuple(learner.backbone.visual.grid_size), n_prompts, tuple(range(1, deep + 1)))


@dataclass
class AttentionRecord:
    """What one forward through the hooked blocks left behind, in block order."""

    attentions: list[torch.Tensor] = field(default_factory=list)  # each (B, H, L, L), post-softmax, in the graph
    outputs: list[torch.Tensor] = field(default_factory=list)  # each (B, L, W), the block's output tokens


def _check_attention(attention: nn.Module, index: int) -> None:
    if not isinstance(attention, nn.MultiheadAttention):
        raise AttentionCaptureError(f"vision block {index} has no nn.MultiheadAttention `attn` "
                                    f"(found {type(attention).__name__}); attention maps need open_clip's ViT")
    if not attention.batch_first or not attention._qkv_same_embed_dim or attention.in_proj_weight is None:
        raise AttentionCaptureError(f"vision block {index}: attention must be batch-first self-attention with "
                                    "one packed q/k/v projection")
    if attention.bias_k is not None or attention.add_zero_attn:
        raise AttentionCaptureError(f"vision block {index}: added key/value tokens are not supported")


def _want_weights(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if len(args) != 3:
        raise AttentionCaptureError("attention capture expects attn(query, key, value, **options)")
    if args[0] is not args[1] or args[0] is not args[2]:
        raise AttentionCaptureError("attention capture supports self-attention only")
    return args, {**kwargs, "need_weights": True, "average_attn_weights": False}


def _replay(record: AttentionRecord, module: nn.MultiheadAttention, args: tuple, kwargs: dict,
            output: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    weights = output[1]  # (B, H, L, L)
    tokens = args[2]  # (B, L, W)
    batch, length, width = tokens.shape
    heads = module.num_heads
    bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * width:]
    values = F.linear(tokens, module.in_proj_weight[2 * width:], bias)  # (B, L, W)
    values = values.reshape(batch, length, heads, width // heads).transpose(1, 2)  # (B, H, L, d)
    mixed = (weights @ values).transpose(1, 2).reshape(batch, length, width)
    record.attentions.append(weights)
    return module.out_proj(mixed), weights


def _keep_output(record: AttentionRecord, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    record.outputs.append(output)


@contextmanager
def capture_attention(visual: nn.Module) -> Iterator[AttentionRecord]:
    """Records every vision block's attention (in the graph) and output tokens while the block runs.

    Args:
        visual: an open_clip ``VisionTransformer`` (``visual.transformer.resblocks``).

    Yields:
        An :class:`AttentionRecord` that fills as forwards run; no hook outlives the ``with`` block.

    Raises:
        AttentionCaptureError: the tower's blocks are not open_clip's batch-first self-attention blocks.
    """
    blocks = list(visual.transformer.resblocks)
    for index, block in enumerate(blocks):
        _check_attention(getattr(block, "attn", None), index)
    record = AttentionRecord()
    handles = []
    try:
        for block in blocks:
            handles.append(block.attn.register_forward_pre_hook(_want_weights, with_kwargs=True))
            handles.append(block.attn.register_forward_hook(partial(_replay, record), with_kwargs=True))
            handles.append(block.register_forward_hook(partial(_keep_output, record)))
        yield record
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class AttentionForward:
    """One image forward with every block's attention kept for the backward of each prompt set it serves."""

    learner: PromptLearner  # whose image path ran
    layout: TokenLayout
    attentions: list[torch.Tensor]  # per block (B, H, L, L)
    outputs: list[torch.Tensor]  # per block (B, L, W)
    image_features: torch.Tensor  # (B, E) normalised, with graph back to every attention

    def serves(self, learner: PromptLearner) -> bool:
        """Whether ``learner``'s image features are this forward's (itself, or a set without visual prompts
        on the same backbone when this forward's learner has none either)."""
        if learner is self.learner:
            return True
        return (not learner.learns_image_side and not self.learner.learns_image_side
                and learner.backbone is self.learner.backbone)


def attention_forward(learner: PromptLearner, images: torch.Tensor) -> AttentionForward:
    """Runs the learner's image path once with every block's attention captured (hooks gone on return).

    Args:
        learner: any prompt learner on an open_clip ViT.
        images: (B, 3, S, S) normalised images; a gradient-tracking copy is used, so a frozen tower (CoOp)
            still connects its attention maps to the class scores.
    """
    layout = token_layout(learner)
    leaf = images.detach().clone().requires_grad_(True)
    with capture_attention(learner.backbone.visual) as record, torch.enable_grad():
        image_features = learner.encode_image(leaf)
    n_blocks = len(learner.backbone.visual.transformer.resblocks)
    if len(record.attentions) != n_blocks or record.attentions[0].shape[-1] != layout.n_tokens:
        raise AttentionCaptureError(f"expected {n_blocks} attention maps over {layout.n_tokens} tokens, got "
                                    f"{len(record.attentions)} over {record.attentions[0].shape[-1]}")
    return AttentionForward(learner, layout, record.attentions, record.outputs, image_features)


def tower_head(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(B, L, W) tokens of any block -> (B, E) normalised image features through the tower's own pooling,
    final LayerNorm and projection (the last block's tokens give exactly the learner's image features)."""
    pooled, _ = visual._pool(tokens)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return F.normalize(pooled, dim=-1)


def target_scores(learner: PromptLearner, image_features: torch.Tensor, text_features: torch.Tensor,
                  targets: list[int] | None) -> tuple[torch.Tensor, list[int]]:
    """(B, C) logits and the class explained per image (its prediction where ``targets`` is None)."""
    logits = learner.logits(image_features, text_features)
    chosen = logits.argmax(dim=-1).tolist() if targets is None else [int(t) for t in targets]
    if len(chosen) != logits.shape[0]:
        raise ValueError(f"got {len(chosen)} targets for {logits.shape[0]} images")
    if any(not 0 <= t < logits.shape[1] for t in chosen):
        raise ValueError(f"target class out of range 0..{logits.shape[1] - 1}: {chosen}")
    return logits, chosen


def patch_maps_to_images(maps: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(B, g*g) non-negative patch scores -> (B, H, W) float32 in [0, 1]: each map bilinearly resized, then
    scaled by its range (as the ``grad-cam`` package's maps are; a constant map becomes all zeros)."""
    grids = maps.detach().float().reshape(maps.shape[0], *grid).cpu().numpy()
    out = np.empty((grids.shape[0], size[0], size[1]), dtype=np.float32)
    for i, cam in enumerate(grids):
        resized = cv2.resize(cam, (size[1], size[0]), interpolation=cv2.INTER_LINEAR).astype(np.float64)
        resized -= resized.min()
        out[i] = resized / (resized.max() + 1e-7)
    return out
