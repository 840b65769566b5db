"""Contrastive pre-training of the bundled mini-CLIP on the synthetic world.

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

See checkpoints/synth-mini.md for the run that produced the bundled checkpoint and what it reaches.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from dapt_core.fileio import atomic_path
from dapt_core import paths
from dapt_core.backbones import get_backbone_spec
from dapt_core.world.shapes import OBJECT_CLASSES
from dapt_core.world.task import _cycled
from dapt_core.world.textures import BACKGROUND_CLASSES
from dapt_core.world.scenes import CAPTION_TEMPLATES, check_count, make_caption, render_scene
from dapt_core.minclip.config import PretrainConfig
from dapt_core.minclip.zeroshot import balanced_scenes, images_to_tensor, zeroshot_accuracy

log = logging.getLogger(__name__)

# Captions that state one fact only; the evaluation prompts are among them.
OBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {object}.",
    "a {object}.",
    "a picture of a {object}.",
    "a drawing of a {object}.",
    "a {colour} {object}.",
    "a photo of a {colour} {object}.",
)
BACKGROUND_TEMPLATES: tuple[str, ...] = (
    "a photo of {background}.",
    "{background}.",
    "a picture of {background}.",
    "a view of {background}.",
    "nothing but {background}.",
)
FACTS = ("object", "colour", "background")  # what a caption can state about a scene
PRETRAIN_STREAM = 101  # spawn key of the training stream; the evaluation uses zeroshot.EVAL_STREAM
PROBE_SEED_OFFSET = 7919  # the in-training probe set is drawn from seed + this, never from the final test seed
# Attention kernels a run can use. At these short sequences (65 image tokens, 32 text tokens) PyTorch's fused
# CPU kernel was the slowest part of a bf16 step (its backward took more than half of the image tower's time);
# the plain kernel, the same mathematics, takes a whole bf16 step to 0.59x the time (fp32: no difference), as
# measured by `benchmarks/bench_pretrain.py`.
ATTENTION: dict[str, Callable[[], AbstractContextManager]] = {
    "math": partial(sdpa_kernel, [SDPBackend.MATH]),
    "auto": nullcontext,
}


@dataclass
class PairBatch:
    """Rendered images with one caption each and the facts each caption states."""

    images: np.ndarray  # (B, S, S, 3) uint8
    captions: list[str]  # B captions
    facts: list[dict[str, str]]  # per scene, all three facts: object, colour, background
    stated: list[dict[str, str]]  # per caption, the facts it states (a subset of FACTS)


def template_facts(template: str) -> tuple[str, ...]:
    """The facts a caption template states, e.g. ("object", "colour")."""
    return tuple(fact for fact in FACTS if "{" + fact + "}" in template)


def sample_batch(rng: np.random.Generator, n: int, size: int, cfg: PretrainConfig) -> PairBatch:
    """Render `n` scenes and caption each from the caption mix (distinct texts if `cfg.distinct_captions`).

    Scenes come in groups of `cfg.group_size` distinct objects that share one background and one
    colour, so within a group only the shape tells the captions apart (hard negatives for the
    object); with the default group size 1 every scene is drawn on its own. Backgrounds are cycled
    evenly over the groups independently of the objects; a group's colour is the one the world picks
    for its first scene.
    """
    group = min(cfg.group_size, len(OBJECT_CLASSES))
    n_groups = -(-n // group)
    backgrounds = _cycled(rng, BACKGROUND_CLASSES, n_groups)
    kinds = rng.random(n)
    images, captions, facts, stated = [], [], [], []
    seen: set[str] = set()
    for g, bg in enumerate(backgrounds):
        colour = None
        for obj in _cycled(rng, OBJECT_CLASSES, group)[:n - g * group]:
            scene = render_scene(obj, bg, size, rng, colour=colour)
            colour = scene.colour
            u = kinds[len(images)]
            if u < cfg.object_only_share:
                pool = OBJECT_TEMPLATES
            elif u < cfg.object_only_share + cfg.background_only_share:
                pool = BACKGROUND_TEMPLATES
            else:
                pool = CAPTION_TEMPLATES
            template = pool[rng.integers(len(pool))]
            caption = make_caption(obj, colour, bg, template)
            for _ in range(cfg.caption_redraws if cfg.distinct_captions else 0):
                if caption not in seen:
                    break
                # a caption already in the batch would be a second copy of the same text: try the world's
                # templates, whose object-colour-background combinations rarely repeat
                template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
                caption = make_caption(obj, colour, bg, template)
            seen.add(caption)
            scene_facts = {"object": obj, "colour": colour, "background": bg}
            images.append(scene.image)
            captions.append(caption)
            facts.append(scene_facts)
            stated.append({fact: scene_facts[fact] for fact in template_facts(template)})
    return PairBatch(np.stack(images), captions, facts, stated)


def true_of(batch: PairBatch) -> torch.Tensor:
    """(B, B) bool: entry [i, j] says caption j is true of image i (every fact it states holds)."""
    ok = torch.ones(len(batch.facts), len(batch.stated), dtype=torch.bool)
    for fact in FACTS:
        names = sorted({f[fact] for f in batch.facts})
        code = {name: k for k, name in enumerate(names)}
        scene = torch.tensor([code[f[fact]] for f in batch.facts])  # (B,)
        # -1: the caption is silent on this fact, so any scene satisfies it
        claim = torch.tensor([code.get(s[fact], -2) if fact in s else -1 for s in batch.stated])  # (B,)
        ok &= (claim[None, :] == -1) | (scene[:, None] == claim[None, :])
    return ok


def clip_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: torch.Tensor,
              true_pairs: torch.Tensor | None = None, positives: str = "own") -> torch.Tensor:
    """Symmetric CLIP InfoNCE that knows which captions are true of which images.

    Args:
        image_feats: (B, E) L2-normalised image embeddings.
        text_feats: (B, E) L2-normalised embeddings of the paired captions (row i belongs to image i).
        logit_scale: scalar, the temperature's inverse (already exponentiated), > 0.
        true_pairs: (B, B) bool, True where caption j is true of image i; None means only the pairs
            themselves (plain CLIP). The diagonal is taken as True.
        positives: "own": each image's positive is its own caption and the other true captions are left
            out of both softmax denominators (false negatives dropped); "all_true": every true caption
            is a positive, with the target mass spread evenly over them (multi-positive InfoNCE).

    Returns:
        Scalar loss, the mean of the image->text and text->image cross-entropies.
    """
    if positives not in ("own", "all_true"):
        raise ValueError(f"positives: expected 'own' or 'all_true', got {positives!r}")
    logits = logit_scale * image_feats @ text_feats.T  # (B, B)
    eye = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
    if true_pairs is None:
        true_pairs = eye
    true_pairs = true_pairs.to(logits.device) | eye
    if positives == "own":
        logits = logits.masked_fill(true_pairs & ~eye, float("-inf"))
        target = torch.arange(len(logits), device=logits.device)
        return 0.5 * (nn.functional.cross_entropy(logits, target)
                      + nn.functional.cross_entropy(logits.T, target))
    weights = true_pairs.float()
    image_to_text = weights / weights.sum(dim=1, keepdim=True)
    text_to_image = weights.T / weights.T.sum(dim=1, keepdim=True)
    return 0.5 * (nn.functional.cross_entropy(logits, image_to_text)
                  + nn.functional.cross_entropy(logits.T, text_to_image))


def class_captions(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """One caption per object class and one per background class, each set in one randomly drawn template.

    The object templates are the object-only ones without a colour, the background templates all of
    `BACKGROUND_TEMPLATES`; both evaluation prompts are among them.
    """
    plain = [t for t in OBJECT_TEMPLATES if template_facts(t) == ("object",)]
    obj_template = plain[rng.integers(len(plain))]
    bg_template = BACKGROUND_TEMPLATES[rng.integers(len(BACKGROUND_TEMPLATES))]
    objects = [make_caption(name, "", BACKGROUND_CLASSES[0], obj_template) for name in OBJECT_CLASSES]
    backgrounds = [make_caption(OBJECT_CLASSES[0], "", name, bg_template) for name in BACKGROUND_CLASSES]
    return objects, backgrounds


def class_caption_loss(image_feats: torch.Tensor, class_feats: torch.Tensor, logit_scale: torch.Tensor,
                       labels: torch.Tensor) -> torch.Tensor:
    """InfoNCE of each image against the captions of every class, its own class's caption the positive.

    This is the image-to-text half of CLIP's loss with the candidate captions being one per class
    (the form of zero-shot classification), as in UniCL (Yang et al., CVPR 2022): every image gets a
    negative for every other class in every step, however the batch happens to be drawn.

    Args:
        image_feats: (B, E) L2-normalised image embeddings.
        class_feats: (K, E) L2-normalised embeddings of one caption per class.
        logit_scale: scalar inverse temperature (already exponentiated).
        labels: (B,) class index of each image.
    """
    return nn.functional.cross_entropy(logit_scale * image_feats @ class_feats.T, labels)


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
    if path.suffix != ".safetensors":
        raise ValueError(f"out: the weights are written as safetensors, so the path must end in .safetensors, "
                         f"got {path}")
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
    if out is not None and Path(out).suffix != ".safetensors":
        raise ValueError(f"out: the weights are written as safetensors, so the path must end in .safetensors, "
                         f"got {out}")
    torch.set_num_threads(cfg.threads)
    model, tokenizer, size, mean, std = build_model(cfg)
    model.train()
    # Linear object and background heads on the image embedding, trained alongside and then discarded:
    # a random linear head gives the image tower a full-strength shape signal from the first step, while
    # the text tower at initialisation barely tells one object word from another.
    heads = nn.ModuleDict({"object": nn.Linear(model.visual.output_dim, len(OBJECT_CLASSES)),
                           "background": nn.Linear(model.visual.output_dim, len(BACKGROUND_CLASSES))})
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.probe_head_weight:
        groups.append({"params": list(heads.parameters()), "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-6, fused=True)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(PRETRAIN_STREAM,)))
    probe_scenes = balanced_scenes(cfg.eval_n, cfg.seed + PROBE_SEED_OFFSET, size) if cfg.eval_every else []
    max_log_scale = math.log(cfg.max_logit_scale)
    attention = ATTENTION[cfg.attention]
    losses: list[float] = []
    probes: list[dict] = []
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="synth pretrain", disable=not progress, dynamic_ncols=True)
    for step in bar:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = sample_batch(rng, cfg.batch_size, size, cfg)
        images = images_to_tensor(batch.images, mean, std)
        captions = list(batch.captions)
        if cfg.class_caption_weight:
            object_captions, background_captions = class_captions(rng)
            captions += object_captions + background_captions
        with attention(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            image_out, text_out = model.encode_image(images), model.encode_text(tokenizer(captions))
        image_feats = nn.functional.normalize(image_out.float(), dim=-1)
        text_feats = nn.functional.normalize(text_out.float(), dim=-1)
        scale = model.logit_scale.exp()
        n = len(batch.captions)
        loss = clip_loss(image_feats, text_feats[:n], scale, true_of(batch), cfg.positives)
        objects = torch.tensor([OBJECT_CLASSES.index(f["object"]) for f in batch.facts])
        backgrounds = torch.tensor([BACKGROUND_CLASSES.index(f["background"]) for f in batch.facts])
        if cfg.probe_head_weight:
            loss = loss + cfg.probe_head_weight * 0.5 * (
                nn.functional.cross_entropy(heads["object"](image_out.float()), objects)
                + nn.functional.cross_entropy(heads["background"](image_out.float()), backgrounds))
        if cfg.class_caption_weight:
            k = len(OBJECT_CLASSES)
            loss = loss + cfg.class_caption_weight * 0.5 * (
                class_caption_loss(image_feats, text_feats[n:n + k], scale, objects)
                + class_caption_loss(image_feats, text_feats[n + k:], scale, backgrounds))
        optimizer.zero_grad(set_to_none=True)
        with attention():
            loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_log_scale)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", scale=f"{model.logit_scale.exp().item():.1f}", lr=f"{lr:.1e}")
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            result = zeroshot_accuracy(model, tokenizer, probe_scenes, mean, std).as_dict()
            probes.append({"step": step + 1, **result})
            log.info("step %d  loss %.4f  probe object %.1f%%  background %.1f%%  (%.0f s)", step + 1,
                     float(np.mean(losses[-cfg.eval_every:])), result["object_acc"], result["background_acc"],
                     time.perf_counter() - start)
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

