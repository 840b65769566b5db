"""Forward passes of open_clip's towers with prompt tokens spliced in, without modifying open_clip.

Both functions follow open_clip's own ``encode_text`` / ``VisionTransformer.forward`` step by step, and add
only what prompt tuning needs: learned embeddings in place of some input tokens, and per-layer ("deep")
prompts that overwrite those tokens before chosen transformer blocks (MaPLe).

Each has an exact fast path (``fast=True``, the default) and keeps the plain one (``fast=False``) for the
equivalence tests (tests/test_fast_paths.py): the text sequence stops after the last end-of-text token and a
prefix every prompt shares runs once (CLIP's text tower is causal), and open_clip's standard blocks run with
their attention projections on contiguous tokens. Same values to fp32 rounding, a fraction of the cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, text_global_pool
from torch import nn


def _run_blocks(transformer: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None,
                deep_prompts: list[torch.Tensor] | None, prompt_slice: slice, fast: bool = False) -> torch.Tensor:
    """Runs the residual blocks on (N, L, D) tokens, overwriting ``x[:, prompt_slice]`` before block i >= 1
    with ``deep_prompts[i - 1]`` (each (P, D)) for as many blocks as there are deep prompts. ``fast`` runs
    open_clip's standard blocks through :func:`_attention_block` (same values, a cheaper backward)."""
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
        if fast and batch_first and _plain_attention_block(block):
            x = _attention_block(block, x, attn_mask)
        else:
            x = block(x, attn_mask=attn_mask)
    return x if batch_first else x.transpose(0, 1)


def encode_text_embeddings(model: nn.Module, embeddings: torch.Tensor, tokens: torch.Tensor,
                           deep_prompts: list[torch.Tensor] | None = None, n_ctx: int = 0, *,
                           fast: bool = True) -> torch.Tensor:
    """Text features from token embeddings instead of token ids.

    CLIP's text transformer is causal: a token's state depends only on the tokens before it. The fast path
    (``fast=True``) uses that twice, with the same features as the plain path up to fp32 rounding: the
    sequence stops after the last end-of-text token of the batch, and a prefix that every prompt shares (the
    start token and a shared learned context, e.g. CoOp's 16 vectors) runs through the blocks once instead of
    once per prompt, each prompt's own tokens attending to it (:func:`encode_truncated`). Models the fast
    path cannot prove this for (no causal mask, another pooling) take the plain path.

    Args:
        model: an open_clip ``CLIP`` (not ``CustomTextCLIP``).
        embeddings: (N, L, D) token embeddings, learned context already in place.
        tokens: (N, L) the token ids the embeddings stand for; used to find the end-of-text token.
        deep_prompts: per-layer text prompts, each (n_ctx, D), written at positions 1..n_ctx before
            blocks 1..len(deep_prompts).
        n_ctx: number of context positions that deep prompts overwrite.
        fast: False runs all L positions of every prompt (the plain path, kept for equivalence tests).

    Returns:
        (N, E) unnormalised text features.
    """
    cast_dtype = model.transformer.get_cast_dtype()
    ends = end_positions(model, tokens) if fast else None
    if ends is not None:
        length = min(tokens.shape[1], max(int(ends.max()) + 1, 1 + n_ctx))
        x = embeddings[:, :length].to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
        pooled = encode_truncated(model, x, ends, deep_prompts, n_ctx, embeddings[:, :length].detach())
    else:
        x = embeddings.to(cast_dtype) + model.positional_embedding.to(cast_dtype)
        x = _run_blocks(model.transformer, x, model.attn_mask, deep_prompts, slice(1, 1 + n_ctx))
        x = model.ln_final(x)
        pooled = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if isinstance(model.text_projection, nn.Linear):
        return model.text_projection(pooled)
    return pooled @ model.text_projection


def end_positions(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor | None:
    """(N,) position of each prompt's pooled (end-of-text) token, or None when the model's text tower is not
    causal or pools otherwise, so that the fast text path cannot be shown to be exact."""
    mask = getattr(model, "attn_mask", None)
    if mask is None or getattr(model.transformer, "batch_first", True) is not True:
        return None
    causal = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    if not (torch.equal(torch.isneginf(mask), causal) and bool((mask[~causal] == 0).all())):
        return None
    pool = getattr(model, "text_pool_type", "argmax")
    if pool == "argmax":
        return tokens.argmax(dim=-1)
    eos = getattr(model, "text_eos_id", None)
    if pool == "eos" and eos is not None and bool((tokens == eos).any(dim=-1).all()):
        return (tokens == eos).int().argmax(dim=-1)
    return None


def encode_truncated(model: nn.Module, x: torch.Tensor, ends: torch.Tensor,
                     deep_prompts: list[torch.Tensor] | None, n_ctx: int,
                     inputs: torch.Tensor | None = None) -> torch.Tensor:
    """Pooled, final-normed text states of a causal text tower on sequences cut after the last end token.

    Args:
        x: (N, L, D) token embeddings plus positional embeddings, L > every entry of ``ends``.
        ends: (N,) positions of the pooled tokens.
        deep_prompts, n_ctx: as in :func:`encode_text_embeddings`.
        inputs: (N, L, D) the token embeddings without positions, used only to find the prefix every prompt
            shares (equal rows); None shares nothing.

    Returns:
        (N, D) ``ln_final`` of each prompt's state at its end token.
    """
    prefix = shared_prefix_length(inputs, ends) if inputs is not None else 0
    if deep_prompts and prefix < 1 + n_ctx:
        prefix = 0  # the deep prompts' positions must lie inside the shared prefix
    blocks = model.transformer.resblocks
    if x.shape[0] < 2 or prefix < 2 or not all(_plain_attention_block(b) for b in blocks):
        h = _run_blocks(model.transformer, x, model.attn_mask[:x.shape[1], :x.shape[1]], deep_prompts,
                        slice(1, 1 + n_ctx), fast=True)
        return model.ln_final(h[torch.arange(x.shape[0], device=x.device), ends])
    n, length, width = x.shape
    suffix = length - prefix
    flat = torch.cat([x[0, :prefix], x[:, prefix:].reshape(n * suffix, width)])  # (P + N*S, D)
    mask = model.attn_mask[:length, :length]
    for i, block in enumerate(blocks):
        if deep_prompts and 1 <= i <= len(deep_prompts):
            flat = torch.cat([flat[:1], deep_prompts[i - 1].to(flat.dtype), flat[1 + n_ctx:]])
        flat = _shared_prefix_block(block, flat, n, prefix, mask)
    rows = prefix + torch.arange(n, device=x.device) * suffix + (ends - prefix)
    return model.ln_final(flat[rows])


def shared_prefix_length(inputs: torch.Tensor, ends: torch.Tensor) -> int:
    """Number of leading positions at which every row of (N, L, D) ``inputs`` is equal, at most the first
    end position (every prompt keeps its end token among its own positions)."""
    inputs = inputs.detach()
    same = (inputs == inputs[:1]).all(dim=2).all(dim=0)  # (L,)
    length = int(same.int().argmin()) if not bool(same.all()) else same.shape[0]
    return min(length, int(ends.min()))


def _hooked(module: nn.Module | None) -> bool:
    """Whether forward hooks watch ``module`` (attention capture does): such a block runs open_clip's own
    forward, so that every hook sees the calls it expects."""
    return module is not None and bool(module._forward_hooks or module._forward_pre_hooks)


def _plain_attention_block(block: nn.Module) -> bool:
    """True for open_clip's self-attention block over a standard ``nn.MultiheadAttention`` (no attention
    dropout at work, no hooks on either), the one layout :func:`_attention_block` and
    :func:`_shared_prefix_block` reproduce."""
    attn = getattr(block, "attn", None)
    return (isinstance(block, ResidualAttentionBlock) and not hasattr(block, "ln_1_kv")
            and not _hooked(block) and not _hooked(attn)
            and isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim and attn.batch_first
            and attn.in_proj_bias is not None and attn.bias_k is None and not attn.add_zero_attn
            and not (attn.training and attn.dropout > 0))


def _heads(t: torch.Tensor, rows: int, heads: int) -> torch.Tensor:
    """(rows * L, D) or (rows, L, D) -> (rows, heads, L, D / heads)."""
    return t.reshape(rows, -1, heads, t.shape[-1] // heads).transpose(1, 2)


def _attention_block(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """open_clip's ``ResidualAttentionBlock.forward`` on (N, L, D) tokens, with the attention's input
    projection on the contiguous tokens. ``nn.MultiheadAttention`` projects a transposed (L, N, D) view,
    which PyTorch runs as a batched matmul over the L positions: the same values, at about twice the cost
    of one matmul forward and backward (the frozen tower's forward without gradients takes open_clip's own
    fused kernel and is unaffected)."""
    attn, (n, length, width) = block.attn, x.shape
    q, k, v = (_heads(t, n, attn.num_heads) for t in
               F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    mask = attn_mask.to(q.dtype) if attn_mask is not None else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (N, heads, L, D / heads)
    x = x + block.ls_1(attn.out_proj(out.transpose(1, 2).reshape(n, length, width)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _shared_prefix_block(block: nn.Module, flat: torch.Tensor, n: int, prefix: int,
                         mask: torch.Tensor) -> torch.Tensor:
    """One residual block on the flat token states ``[prefix (P), row 1 suffix (S), ..., row N suffix]``.

    Every per-token step (layer norms, projections, MLP) runs on the flat states; the prefix attends to
    itself causally and each row's suffix attends to the shared prefix and to its own earlier tokens, which
    is the causal attention of the full (N, P + S) batch. ``mask`` is the (P + S, P + S) causal mask.
    """
    attn, width = block.attn, flat.shape[-1]
    q, k, v = F.linear(block.ln_1(flat), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    mask = mask.to(q.dtype)
    qp, kp, vp = (_heads(t[:prefix], 1, attn.num_heads) for t in (q, k, v))
    qs, ks, vs = (_heads(t[prefix:], n, attn.num_heads) for t in (q, k, v))
    out_prefix = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask[:prefix, :prefix])
    keys = torch.cat([kp.expand(n, -1, -1, -1), ks], dim=2)  # (N, heads, P + S, D / heads)
    values = torch.cat([vp.expand(n, -1, -1, -1), vs], dim=2)
    out_suffix = F.scaled_dot_product_attention(qs, keys, values, attn_mask=mask[prefix:])
    out = torch.cat([out_prefix.transpose(1, 2).reshape(prefix, width),
                     out_suffix.transpose(1, 2).reshape(-1, width)])
    flat = flat + block.ls_1(attn.out_proj(out))
    return flat + block.ls_2(block.mlp(block.ln_2(flat)))


def encode_image_prompted(visual: nn.Module, images: torch.Tensor, prompts: torch.Tensor | None = None,
                          deep_prompts: list[torch.Tensor] | None = None, *, fast: bool = True) -> torch.Tensor:
    """Image features of open_clip's ``VisionTransformer`` with visual prompt tokens appended (MaPLe).

    The prompts are appended after the patch tokens, after the positional embedding and before ``ln_pre``,
    so the token layout is ``[CLS, patches..., prompts...]``.

    Args:
        visual: open_clip ``VisionTransformer``.
        images: (B, 3, H, W) normalised images.
        prompts: (P, W) first-layer visual prompts, or None for the plain tower.
        deep_prompts: per-layer visual prompts, each (P, W), overwriting the last P tokens before blocks
            1..len(deep_prompts).
        fast: run the blocks through :func:`_attention_block` (same features, a cheaper backward); False
            calls open_clip's blocks (the plain path, kept for equivalence tests).

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
    x = _run_blocks(visual.transformer, x, None, deep_prompts, slice(n_tokens, n_tokens + prompts.shape[0]),
                    fast=fast)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj if visual.proj is not None else pooled


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalises the last dimension."""
    return F.normalize(x, dim=-1)
