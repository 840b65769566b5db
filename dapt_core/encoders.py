"""Forward passes of open_clip's towers with prompt tokens spliced in, without modifying open_clip.

Both functions follow open_clip's own ``encode_text`` / ``VisionTransformer.forward`` step by step, and add
only what prompt tuning needs: learned embeddings in place of some input tokens, and per-layer ("deep")
prompts that overwrite those tokens before chosen transformer blocks (MaPLe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn


def _run_blocks(transformer: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None,
                deep_prompts: list[torch.Tensor] | None, prompt_slice: slice) -> torch.Tensor:
    """Runs the residual blocks on (N, L, D) tokens, overwriting ``x[:, prompt_slice]`` before block i >= 1
    with ``deep_prompts[i - 1]`` (each (P, D)) for as many blocks as there are deep prompts."""
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for i, block in enumerate(transformer.resblocks):
        if deep_prompts and 1 <= i <= len(deep_prompts):
            prompt = deep_prompts[i - 1].to(x.dtype)
            if batch_first:
                x = torch.cat([x[:, :prompt_slice.start], prompt.expand(x.shape[0], -1, -1),
                               x[:, prompt_slice.stop:]], dim=1)
            else:
                x = torch.cat([x[:prompt_slice.start], prompt.unsqueeze(1).expand(-1, x.shape[1], -1),
                               x[prompt_slice.stop:]], dim=0)
        x = block(x, attn_mask=attn_mask)
    return x if batch_first else x.transpose(0, 1)


def encode_text_embeddings(model: nn.Module, embeddings: torch.Tensor, tokens: torch.Tensor,
                           deep_prompts: list[torch.Tensor] | None = None, n_ctx: int = 0) -> torch.Tensor:
    """Text features from token embeddings instead of token ids.

    Args:
        model: an open_clip ``CLIP`` (not ``CustomTextCLIP``).
        embeddings: (N, L, D) token embeddings, learned context already in place.
        tokens: (N, L) the token ids the embeddings stand for; used to find the end-of-text token.
        deep_prompts: per-layer text prompts, each (n_ctx, D), written at positions 1..n_ctx before
            blocks 1..len(deep_prompts).
        n_ctx: number of context positions that deep prompts overwrite.

    Returns:
        (N, E) unnormalised text features.
    """
    cast_dtype = model.transformer.get_cast_dtype()
    x = embeddings.to(cast_dtype) + model.positional_embedding.to(cast_dtype)
    x = _run_blocks(model.transformer, x, model.attn_mask, deep_prompts, slice(1, 1 + n_ctx))
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if isinstance(model.text_projection, nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


def encode_image_prompted(visual: nn.Module, images: torch.Tensor, prompts: torch.Tensor | None = None,
                          deep_prompts: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Image features of open_clip's ``VisionTransformer`` with visual prompt tokens appended (MaPLe).

    The prompts are appended after the patch tokens, after the positional embedding and before ``ln_pre``,
    so the token layout is ``[CLS, patches..., prompts...]``.

    Args:
        visual: open_clip ``VisionTransformer``.
        images: (B, 3, H, W) normalised images.
        prompts: (P, W) first-layer visual prompts, or None for the plain tower.
        deep_prompts: per-layer visual prompts, each (P, W), overwriting the last P tokens before blocks
            1..len(deep_prompts).

    Returns:
        (B, E) unnormalised image features.
    """
    if prompts is None:
        return visual(images)
    x = visual.conv1(images)  # (B, W, g, g)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, g*g, W)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.patch_dropout(x)
    n_tokens = x.shape[1]
    x = torch.cat([x, prompts.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)  # (B, 1+g*g+P, W)
    x = visual.ln_pre(x)
    x = _run_blocks(visual.transformer, x, None, deep_prompts, slice(n_tokens, n_tokens + prompts.shape[0]))
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj if visual.proj is not None else pooled


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalises the last dimension."""
    return F.normalize(x, dim=-1)
