"""The mini-CLIP's settings, importable without torch (the command line shows them as its defaults).

:class:`PretrainConfig` is the pre-training recipe (:mod:`dapt_core.minclip.pretrain` runs it);
:data:`DEFAULT_EVAL_SEED` seeds the scenes of the zero-shot evaluation (:mod:`dapt_core.minclip.zeroshot`).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_EVAL_SEED = 2024  # not a pre-training seed: the evaluation scenes are never trained on


@dataclass(frozen=True)
class PretrainConfig:
    """How the mini-CLIP is pre-trained; the defaults reproduce the bundled checkpoint."""

    model_name: str = "synth-mini"  # open_clip model config (dapt_core/model_configs/)
    steps: int = 3000  # optimiser steps
    batch_size: int = 256  # image-caption pairs per step
    lr: float = 2e-3  # peak learning rate of AdamW
    min_lr_ratio: float = 0.02  # the cosine ends at lr * this
    warmup_steps: int = 100  # linear warm-up from 0 to lr
    weight_decay: float = 0.1  # AdamW decay of matrices (not of gains, biases or the temperature)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW moments, as in CLIP
    grad_clip: float = 1.0  # max global gradient norm
    max_logit_scale: float = 100.0  # the learnable temperature's exp() is clamped here, as in CLIP
    object_only_share: float = 0.2  # share of captions that name only the object (maybe with its colour)
    background_only_share: float = 0.1  # share of captions that name only the background
    group_size: int = 1  # scenes per look-alike group (same background and colour, distinct objects); 1 = none
    distinct_captions: bool = True  # redraw a caption's template while its text is already in the batch
    caption_redraws: int = 8  # at most this many redraws per caption
    probe_head_weight: float = 1.0  # weight of the auxiliary linear object/background heads on the image tower; 0 = off
    class_caption_weight: float = 1.0  # weight of the class-caption InfoNCE (every class's caption a candidate); 0 = off
    positives: str = "own"  # "own": false negatives dropped; "all_true": every true caption is a positive
    seed: int = 0  # seeds the weights' init and the data stream
    threads: int = 2  # torch CPU threads (changes only floating-point rounding, not the data or the recipe)
    eval_every: int = 100  # steps between quick zero-shot probes (0 = none)
    eval_n: int = 330  # scenes in the quick probe
    save_dtype: str = "float16"  # dtype of the stored floating-point tensors
    precision: str = "bf16"  # "bf16": bf16 autocast for the towers (AMX on recent CPUs, tensor cores on GPUs); "fp32"
    attention: str = "math"  # "math": plain matmul-softmax-matmul attention; "auto": PyTorch's pick (see pretrain.ATTENTION)


@dataclass(frozen=True)
class WebPretrainConfig(PretrainConfig):
    """The `synth-web` recipe: pre-training on the web-like world (`dapt_core.world.web`), with its context bias.

    Unlike synth-mini's recipe nothing here teaches backgrounds as such: no background head, no background
    class captions, no background-only captions; captions name the object (background mentioned at the
    corpus's low rate), as web alt-text does. The object head and the object class captions stay: they
    carry only what every caption already says (the object's name) and they let the image tower start on
    shapes at once (see checkpoints/synth-mini.md, "Why the heads matter"). Backgrounds are free to be
    used as a cue, since the object's home backgrounds predict it in `p_home` of the pictures.
    """

    model_name: str = "synth-web"
    steps: int = 900  # sized to end within the 90 minutes on the shared 2-core CPU
    batch_size: int = 128
    lr: float = 1e-3  # half synth-mini's: the run starts from trained weights (init_from)
    warmup_steps: int = 50
    threads: int = 1  # on the busy shared CPU one thread ran a step 4x faster than two (checkpoints/synth-web.md)
    object_only_share: float = 1.0  # unused by the web corpus (its own caption mix is below)
    background_only_share: float = 0.0  # no background-only captions
    distinct_captions: bool = False  # web captions repeat; known duplicates are out of InfoNCE (positives="own")
    probe_head_weight: float = 1.0  # the linear *object* head only
    class_caption_weight: float = 1.0  # one caption per *object* class only
    p_home: float = 0.7  # WebWorldConfig.p_home of the corpus (0.85 named objects out of context less, see the card)
    p_background_caption: float = 0.1  # WebWorldConfig.p_background_caption of the corpus
    eval_n: int = 240  # probe scenes per probe set (home / other / only-background)
    # a .safetensors of the same architecture to start from, relative to the project if not found as given
    # ("" = random init); from scratch, runs here stayed a background classifier for 500 steps (see the card)
    init_from: str = "checkpoints/synth-mini.safetensors"


# Named recipes; each backbone's defaults reproduce its bundled checkpoint's recipe.
PRESETS: dict[str, PretrainConfig] = {"synth-mini": PretrainConfig(), "synth-web": WebPretrainConfig()}
