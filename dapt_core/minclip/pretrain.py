"""Contrastive pre-training of the bundled mini-CLIP on the synthetic world: the training loop.

Image-caption pairs are rendered on the fly from one seeded stream; nothing is written to disk but the
weights. Backgrounds are drawn independently of objects (no spurious pairing), so the model has to
learn both facts. Backgrounds are the easy signal; the recipe pushes toward the objects with:

- distinct captions: a caption whose text is already in the batch has its template redrawn, so a
  batch rarely holds two copies of one text (duplicates made the objects much slower to learn in the
  issue's trial runs);
- the caption mix: besides the world's own captions (object, often colour and background), a share of
  captions name only the object and a share only the background, so each fact has captions of its own;
- known false negatives out of InfoNCE: a caption that is also true of another image in the batch (the
  same object-only caption, the same background phrase, ...) is not that image's negative, nor is
  that image the caption's negative (``positives="own"``; ``"all_true"`` makes them positives instead);
- a class-caption term (UniCL-style): each image is also scored against one caption per object class and
  one per background class, so every step has a negative for every other class;
- auxiliary linear object and background heads on the image embedding, trained alongside and thrown
  away (not saved): at initialisation the text tower barely tells one object word from another, so the
  contrastive terms alone give the image tower almost no shape signal, and without the heads every run
  here stayed at chance on the objects for its first 400 to 1,000 steps;
- look-alike groups (optional, ``group_size``): groups of scenes that share background and colour;
- a short text context (see the model config), bf16 autocast with the plain attention kernel (about 1.7
  times as many steps in the same time as PyTorch's fused CPU kernel), warm-up and cosine decay, AdamW,
  gradient clipping.

The settings are :class:`~dapt_core.minclip.config.PretrainConfig`, the batches and their captions
:mod:`~dapt_core.minclip.captions`, the loss terms :mod:`~dapt_core.minclip.losses`; this module builds the
model, runs the steps, probes and saves. See checkpoints/synth-mini.md for the run that produced the bundled
checkpoint and what it reaches.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from dapt_core import paths
from dapt_core.backbones import get_backbone_spec
from dapt_core.fileio import atomic_path
from dapt_core.minclip.captions import PairBatch, class_captions, sample_batch, true_of
from dapt_core.minclip.config import PretrainConfig
from dapt_core.minclip.losses import class_caption_loss, clip_loss, probe_head_loss
from dapt_core.minclip.zeroshot import balanced_scenes, images_to_tensor, zeroshot_accuracy
from dapt_core.world.scenes import Scene, check_count
from dapt_core.world.shapes import OBJECT_CLASSES
from dapt_core.world.textures import BACKGROUND_CLASSES

log = logging.getLogger(__name__)

PRETRAIN_STREAM = 101  # spawn key of the training stream; the evaluation uses zeroshot.EVAL_STREAM
PROBE_SEED_OFFSET = 7919  # the in-training probe set is drawn from seed + this, never from the final test seed
ADAMW_EPS = 1e-6  # AdamW's denominator term
# Attention kernels a run can use. At these short sequences (65 image tokens, 32 text tokens) PyTorch's fused
# CPU kernel was the slowest part of a bf16 step (its backward took more than half of the image tower's time);
# the plain kernel, the same mathematics, takes a whole bf16 step to 0.59x the time (fp32: no difference), as
# measured by `benchmarks/bench_pretrain.py`.
ATTENTION: dict[str, Callable[[], AbstractContextManager]] = {
    "math": partial(sdpa_kernel, [SDPBackend.MATH]),
    "auto": nullcontext,
}


def _check_safetensors_path(path: str | Path) -> None:
    if Path(path).suffix != ".safetensors":
        raise ValueError(f"out: the weights are written as safetensors, so the path must end in .safetensors, "
                         f"got {path}")


def _check_config(cfg: PretrainConfig, out: str | Path | None) -> None:
    """Raises ValueError on a setting the recipe cannot run (or an `out` it cannot write), before training."""
    for name in ("probe_head_weight", "class_caption_weight"):
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"{name}: expected a weight >= 0, got {getattr(cfg, name)}")
    if cfg.precision not in ("bf16", "fp32"):
        raise ValueError(f"precision: expected 'bf16' or 'fp32', got {cfg.precision!r}")
    if cfg.attention not in ATTENTION:
        raise ValueError(f"attention: expected one of {', '.join(map(repr, ATTENTION))}, got {cfg.attention!r}")
    for name in ("steps", "batch_size", "seed"):
        check_count(getattr(cfg, name), name, 1 if name != "seed" else 0)
    if not 0 <= cfg.object_only_share + cfg.background_only_share <= 1:
        raise ValueError("object_only_share + background_only_share must lie in [0, 1], got "
                         f"{cfg.object_only_share} + {cfg.background_only_share}")
    if out is not None:
        _check_safetensors_path(out)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Learning rate at optimiser step `step` (0-based): linear warm-up, then cosine decay."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # gains, biases and the temperature are not decayed: shrinking them only fights the loss
    decay, keep = [], []
    for name, p in model.named_parameters():
        (keep if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def save_weights(model: nn.Module, path: str | Path, dtype: str, metadata: dict[str, str]) -> Path:
    """Write the model's state dict as safetensors, floating-point tensors cast to `dtype`, atomically.

    open_clip's ``create_model(..., pretrained=path)`` reads it back; ``load_state_dict`` casts the
    tensors to the model's own dtype, so a half-precision file loads into an fp32 model.
    """
    path = Path(path)
    _check_safetensors_path(path)
    cast = getattr(torch, dtype)
    state = {k: (v.detach().to(cast) if v.is_floating_point() else v.detach()).contiguous().cpu()
             for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def build_model(cfg: PretrainConfig) -> tuple[nn.Module, Callable, int, tuple, tuple]:
    """A freshly initialised open_clip CLIP of `cfg.model_name`, its tokenizer, image side, mean and std."""
    open_clip.add_model_config(paths.MODEL_CONFIG_DIR)
    torch.manual_seed(cfg.seed)
    model = open_clip.create_model(cfg.model_name, pretrained=None, device="cpu")
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp.get("size", model.visual.image_size)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
    return model, open_clip.get_tokenizer(cfg.model_name), size, mean, std


def _metadata(cfg: PretrainConfig, step: int, probes: list[dict], wall_s: float) -> dict[str, str]:
    """The safetensors header: what was trained, how far, and how well it probed."""
    # the tag the registry gives the bundled backbone: one place to bump when the recipe changes
    tag = get_backbone_spec("synth-mini").pretrained
    return {"format": "open_clip", "model_name": cfg.model_name, "pretrained_tag": tag,
            "step": str(step), "config": json.dumps(asdict(cfg)), "probes": json.dumps(probes),
            "wall_s": f"{wall_s:.1f}"}


def _auxiliary_heads(model: nn.Module) -> nn.ModuleDict:
    """Linear object and background heads on the image embedding (see `probe_head_loss`); never saved."""
    return nn.ModuleDict({"object": nn.Linear(model.visual.output_dim, len(OBJECT_CLASSES)),
                          "background": nn.Linear(model.visual.output_dim, len(BACKGROUND_CLASSES))})


def _optimizer(model: nn.Module, heads: nn.ModuleDict, cfg: PretrainConfig) -> torch.optim.AdamW:
    """AdamW over the model and, when their loss is on, the auxiliary heads (not decayed)."""
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.probe_head_weight:
        groups.append({"params": list(heads.parameters()), "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=ADAMW_EPS, fused=True)


def _batch_loss(model: nn.Module, heads: nn.ModuleDict, tokenizer: Callable, batch: PairBatch,
                class_caps: tuple[list[str], list[str]] | None, mean: tuple, std: tuple,
                cfg: PretrainConfig) -> torch.Tensor:
    """The recipe's scalar loss on one batch: CLIP InfoNCE plus the weighted head and class-caption terms.

    Args:
        class_caps: the object and background class captions of this step (`class_captions`); None when the
            class-caption term is off.
    """
    images = images_to_tensor(batch.images, mean, std)
    captions = list(batch.captions)
    if class_caps is not None:
        object_captions, background_captions = class_caps
        captions += object_captions + background_captions
    with ATTENTION[cfg.attention](), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        image_out, text_out = model.encode_image(images), model.encode_text(tokenizer(captions))
    image_feats = nn.functional.normalize(image_out.float(), dim=-1)  # (B, E)
    text_feats = nn.functional.normalize(text_out.float(), dim=-1)  # (B + class captions, E)
    scale = model.logit_scale.exp()
    n = len(batch.captions)
    loss = clip_loss(image_feats, text_feats[:n], scale, true_of(batch), cfg.positives)
    objects = torch.tensor([OBJECT_CLASSES.index(f["object"]) for f in batch.facts])
    backgrounds = torch.tensor([BACKGROUND_CLASSES.index(f["background"]) for f in batch.facts])
    if cfg.probe_head_weight:
        loss = loss + cfg.probe_head_weight * probe_head_loss(heads, image_out, objects, backgrounds)
    if class_caps is not None:
        k = len(OBJECT_CLASSES)
        loss = loss + cfg.class_caption_weight * 0.5 * (
            class_caption_loss(image_feats, text_feats[n:n + k], scale, objects)
            + class_caption_loss(image_feats, text_feats[n + k:], scale, backgrounds))
    return loss


def _update(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, cfg: PretrainConfig) -> None:
    """One optimiser step on `loss`: backward, gradient clipping, step, then the temperature clamp."""
    optimizer.zero_grad(set_to_none=True)
    with ATTENTION[cfg.attention]():
        loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(cfg.max_logit_scale))


def _probe(model: nn.Module, tokenizer: Callable, scenes: list[Scene], mean: tuple, std: tuple, step: int,
           recent_losses: list[float], elapsed_s: float) -> dict:
    """Zero-shot accuracies on the probe scenes, logged with the mean of the recent losses."""
    result = zeroshot_accuracy(model, tokenizer, scenes, mean, std).as_dict()
    log.info("step %d  loss %.4f  probe object %.1f%%  background %.1f%%  (%.0f s)", step,
             float(np.mean(recent_losses)), result["object_acc"], result["background_acc"], elapsed_s)
    return result


def pretrain(cfg: PretrainConfig, out: str | Path | None = None, *, progress: bool = True,
             on_probe: Callable[[int, dict], None] | None = None) -> dict:
    """Pre-train a CLIP of `cfg.model_name` from scratch and, when `out` is given, save its weights.

    Args:
        cfg: the recipe.
        out: where to write the weights (.safetensors); None keeps them in memory only.
        progress: show a tqdm bar on stderr.
        on_probe: called as ``on_probe(step, {"object_acc", "background_acc", "n"})`` after each probe.

    Returns:
        A summary: the config, first and last loss, the probes, wall time and the model (key "model").
    """
    _check_config(cfg, out)
    torch.set_num_threads(cfg.threads)
    model, tokenizer, size, mean, std = build_model(cfg)
    model.train()
    heads = _auxiliary_heads(model)
    optimizer = _optimizer(model, heads, cfg)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(PRETRAIN_STREAM,)))
    probe_scenes = balanced_scenes(cfg.eval_n, cfg.seed + PROBE_SEED_OFFSET, size) if cfg.eval_every else []
    losses: list[float] = []
    probes: list[dict] = []
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="synth pretrain", disable=not progress, dynamic_ncols=True)
    for step in bar:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = sample_batch(rng, cfg.batch_size, size, cfg)
        class_caps = class_captions(rng) if cfg.class_caption_weight else None
        loss = _batch_loss(model, heads, tokenizer, batch, class_caps, mean, std, cfg)
        _update(model, optimizer, loss, cfg)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", scale=f"{model.logit_scale.exp().item():.1f}", lr=f"{lr:.1e}")
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            result = _probe(model, tokenizer, probe_scenes, mean, std, step + 1, losses[-cfg.eval_every:],
                            time.perf_counter() - start)
            probes.append({"step": step + 1, **result})
            if on_probe is not None:
                on_probe(step + 1, result)
            if out is not None and step + 1 < cfg.steps:
                # a snapshot at every probe: a run cut short still leaves usable, labelled weights
                save_weights(model, out, cfg.save_dtype, _metadata(cfg, step + 1, probes, time.perf_counter() - start))
    wall = time.perf_counter() - start
    summary = {"config": asdict(cfg), "first_loss": losses[0], "last_loss": losses[-1],
               "mean_loss_last_50": float(np.mean(losses[-50:])), "probes": probes, "wall_s": round(wall, 1)}
    if out is not None:
        save_weights(model, out, cfg.save_dtype, _metadata(cfg, cfg.steps, probes, wall))
        log.info("wrote %s (%.1f MB) after %.0f s", out, Path(out).stat().st_size / 1e6, wall)
    summary["model"] = model
    return summary


def default_out() -> Path:
    """Where the bundled checkpoint lives."""
    return paths.CHECKPOINT_DIR / "synth-mini.safetensors"

