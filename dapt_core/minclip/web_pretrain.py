"""Pre-training of the `synth-web` mini-CLIP on the web-like world: the training loop and its command.

The same model family, optimiser, schedule and InfoNCE as synth-mini's recipe (:mod:`dapt_core.minclip.pretrain`,
whose helpers this module reuses), on a corpus that has the context bias of web data
(:mod:`dapt_core.world.web`: objects on their home backgrounds in 85% of the pictures, alt-text captions that
rarely name the background) and without the terms that taught synth-mini backgrounds: the loss is CLIP
InfoNCE (known duplicates left out) + the object class captions + a linear object head (see
:class:`~dapt_core.minclip.config.WebPretrainConfig`). The probes measure zero-shot object accuracy on home
backgrounds, on other classes' backgrounds and from the background alone.

    python -m dapt_core.minclip.web_pretrain --out /tmp/w/synth-web.safetensors   # the bundled recipe
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from dapt_core import paths
from dapt_core.backbones import get_backbone_spec
from dapt_core.minclip.captions import PairBatch, true_of
from dapt_core.minclip.config import WebPretrainConfig
from dapt_core.minclip.losses import class_caption_loss, clip_loss
from dapt_core.minclip.pretrain import (
    ADAMW_EPS,
    ATTENTION,
    PROBE_SEED_OFFSET,
    _check_config,
    _param_groups,
    _update,
    build_model,
    lr_at,
    save_weights,
)
from dapt_core.minclip.web_corpus import object_class_captions, probe_sets, sample_web_batch, web_probe, world_config
from dapt_core.minclip.zeroshot import images_to_tensor
from dapt_core.world.web_shapes import WEB_OBJECT_CLASSES

log = logging.getLogger(__name__)

WEB_PRETRAIN_STREAM = 102  # spawn key of the web corpus's training stream (synth-mini's is 101)
BACKBONE = "synth-web"  # the registry entry whose tag the weights carry


def _metadata(cfg: WebPretrainConfig, step: int, probes: list[dict], wall_s: float) -> dict[str, str]:
    tag = get_backbone_spec(BACKBONE).pretrained
    return {"format": "open_clip", "model_name": cfg.model_name, "pretrained_tag": tag, "step": str(step),
            "config": json.dumps(asdict(cfg)), "probes": json.dumps(probes), "wall_s": f"{wall_s:.1f}"}


def _batch_loss(model: nn.Module, head: nn.Linear, tokenizer: Callable, batch: PairBatch, class_caps: list[str],
                mean: tuple, std: tuple, cfg: WebPretrainConfig) -> torch.Tensor:
    """CLIP InfoNCE (duplicates out) + weighted object class-caption InfoNCE + weighted object-head CE."""
    images = images_to_tensor(batch.images, mean, std)
    captions = list(batch.captions) + (class_caps if cfg.class_caption_weight else [])
    with ATTENTION[cfg.attention](), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        image_out, text_out = model.encode_image(images), model.encode_text(tokenizer(captions))
    image_feats = nn.functional.normalize(image_out.float(), dim=-1)
    text_feats = nn.functional.normalize(text_out.float(), dim=-1)
    scale = model.logit_scale.exp()
    n = len(batch.captions)
    loss = clip_loss(image_feats, text_feats[:n], scale, true_of(batch), cfg.positives)
    objects = torch.tensor([WEB_OBJECT_CLASSES.index(f["object"]) for f in batch.facts])
    if cfg.class_caption_weight:
        loss = loss + cfg.class_caption_weight * class_caption_loss(image_feats, text_feats[n:], scale, objects)
    if cfg.probe_head_weight:
        loss = loss + cfg.probe_head_weight * nn.functional.cross_entropy(head(image_out.float()), objects)
    return loss


def pretrain_web(cfg: WebPretrainConfig = WebPretrainConfig(), out: str | Path | None = None,
                 on_probe: Callable[[int, dict], None] | None = None) -> dict:
    """Pre-train a CLIP of `cfg.model_name` from scratch on the web-like corpus; save it when `out` is given.

    Returns a summary: the config, first and last loss, the probes, wall time and the model (key "model").
    A snapshot is written at every probe, so a run cut short leaves labelled weights.
    """
    _check_config(cfg, out)
    torch.set_num_threads(cfg.threads)
    model, tokenizer, size, mean, std = build_model(cfg)
    if cfg.init_from:
        start_from = Path(cfg.init_from)
        if not start_from.is_absolute() and not start_from.exists():
            start_from = paths.PROJECT_DIR / start_from
        # every tensor of the architecture must be in the file (strict), cast to the model's fp32
        model.load_state_dict(load_file(str(start_from)), strict=True)
    model.train()
    world = replace(world_config(cfg), size=size)
    head = nn.Linear(model.visual.output_dim, len(WEB_OBJECT_CLASSES))  # thrown away after training
    groups = _param_groups(model, cfg.weight_decay) + [{"params": list(head.parameters()), "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=ADAMW_EPS, fused=True)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(WEB_PRETRAIN_STREAM,)))
    sets = probe_sets(cfg.eval_n, cfg.seed + PROBE_SEED_OFFSET, world) if cfg.eval_every else {}
    losses, probes = [], []
    start = time.perf_counter()
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = sample_web_batch(rng, cfg.batch_size, world)
        loss = _batch_loss(model, head, tokenizer, batch, object_class_captions(rng), mean, std, cfg)
        _update(model, optimizer, loss, cfg)
        losses.append(loss.item())
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            elapsed = time.perf_counter() - start
            result = web_probe(model, tokenizer, sets, mean, std)
            probes.append({"step": step + 1, "wall_s": round(elapsed, 1), **result})
            log.info("step %d  loss %.4f  %s  (%.0f s)", step + 1, float(np.mean(losses[-cfg.eval_every:])),
                     json.dumps(result), elapsed)
            if on_probe is not None:
                on_probe(step + 1, result)
            if out is not None and step + 1 < cfg.steps:
                save_weights(model, out, cfg.save_dtype, _metadata(cfg, step + 1, probes, elapsed))
    wall = time.perf_counter() - start
    if out is not None:
        save_weights(model, out, cfg.save_dtype, _metadata(cfg, cfg.steps, probes, wall))
        log.info("wrote %s (%.1f MB) after %.0f s", out, Path(out).stat().st_size / 1e6, wall)
    return {"config": asdict(cfg), "first_loss": losses[0], "last_loss": losses[-1],
            "mean_loss_last_50": float(np.mean(losses[-50:])), "probes": probes, "wall_s": round(wall, 1),
            "model": model}


def default_out() -> Path:
    """Where the bundled `synth-web` checkpoint lives."""
    return paths.CHECKPOINT_DIR / "synth-web.safetensors"


def main(argv: list[str] | None = None) -> int:
    """Command line: any field of `WebPretrainConfig` as ``--field value``; prints one JSON line at the end."""
    from dapt_core.cli.common import print_json

    defaults = WebPretrainConfig()
    parser = argparse.ArgumentParser(description="Pre-train the synth-web mini-CLIP on the web-like world. "
                                                 "The defaults reproduce checkpoints/synth-web.safetensors.")
    for f in fields(WebPretrainConfig):
        value = getattr(defaults, f.name)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            parser.add_argument("--" + f.name.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--out", default=None, help="weights to write (.safetensors); default: the bundled file")
    args = vars(parser.parse_args(argv))
    out = args.pop("out") or default_out()
    cfg = replace(defaults, **args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    summary = pretrain_web(cfg, out)
    last = summary["probes"][-1] if summary["probes"] else {}
    print_json({"out": str(out), "steps": cfg.steps, "seed": cfg.seed, "wall_s": summary["wall_s"],
                "first_loss": round(summary["first_loss"], 4), "last_loss": round(summary["last_loss"], 4), **last})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
