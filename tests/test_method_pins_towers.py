"""The prompted towers (dapt_core.encoders) where open_clip's models differ from the default one.

The learners must give the same features whatever the layout of the blocks (open_clip's older
sequence-first ``(L, N, D)`` one), with low-precision weights and fp32 prompts (open_clip's
``convert_weights_to_lp``), without an image projection, and with a linear text projection read at the
end-of-text token.
"""

import copy
import dataclasses
import threading

import pytest
import torch
import torch.nn.functional as F
from open_clip.model import convert_weights_to_lp
from open_clip.transformer import Transformer

from dapt_core.encoders import encode_image_prompted
from dapt_core.learners import build_learner
from test_background_official import CLASSES, deep_backbone, maple  # noqa: F401 (deep_backbone: a fixture)


def around(backbone, model):
    """The same backbone (name, tokenizer, preprocessing) around another model."""
    return dataclasses.replace(backbone, model=model.eval().requires_grad_(False), lock=threading.RLock())


def sequence_first(backbone):
    """The same weights with both towers' blocks in open_clip's older (L, N, D) layout (``batch_first=False``)."""
    model = copy.deepcopy(backbone.model)
    for tower in (model, model.visual):
        old = tower.transformer
        block = old.resblocks[0]
        new = Transformer(old.width, old.layers, block.attn.num_heads, act_layer=type(block.mlp.gelu),
                          mlp_ratio=block.mlp.c_fc.out_features / old.width, batch_first=False)
        new.load_state_dict(old.state_dict())
        tower.transformer = new
    return around(backbone, model)


def images_for(backbone, seed):
    torch.manual_seed(seed)
    return torch.randn(2, 3, backbone.image_size, backbone.image_size)


def test_maple_gives_the_same_features_on_sequence_first_towers(deep_backbone):
    learner = maple(deep_backbone, seed=18)
    other = build_learner("maple", sequence_first(deep_backbone), CLASSES, depth=learner.cfg.depth)
    other.load_state_dict(learner.state_dict())
    images = images_for(deep_backbone, 19)
    with torch.no_grad():
        assert other.backbone.model.transformer.batch_first is False  # the layout the test is about
        assert other.backbone.visual.transformer.batch_first is False
        torch.testing.assert_close(other.backbone.model.encode_image(images),
                                   deep_backbone.model.encode_image(images), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(other.text_features(), learner.text_features(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(other.encode_image(images), learner.encode_image(images), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_fp32_prompts_on_low_precision_weights(deep_backbone, fast):
    learner = maple(deep_backbone, seed=20)
    learner.fast_paths = fast  # the plain path casts the embeddings and the positions itself
    model = copy.deepcopy(deep_backbone.model)
    convert_weights_to_lp(model, dtype=torch.bfloat16)  # linear and attention weights; embeddings stay fp32
    images = images_for(deep_backbone, 21)
    with torch.no_grad():
        full = learner.text_features(), learner.encode_image(images)
        learner.backbone = around(deep_backbone, model)
        try:
            low = learner.text_features(), learner.encode_image(images.to(torch.bfloat16))
        finally:
            learner.backbone = deep_backbone
    for ours, reference in zip(low, full):
        assert ours.dtype == torch.bfloat16
        assert F.cosine_similarity(ours.float(), reference).min() > 0.999


def test_the_image_tower_without_prompts_or_projection_is_open_clips(deep_backbone):
    images = images_for(deep_backbone, 22)
    visual = copy.deepcopy(deep_backbone.visual).eval()
    with torch.no_grad():
        torch.testing.assert_close(encode_image_prompted(visual, images), visual(images))
        learner = maple(deep_backbone, seed=23)
        first, deep = learner.visual_prompts()
        projected = encode_image_prompted(visual, images, first, deep)
        proj, visual.proj = visual.proj, None  # a tower that ends at its width
        pooled = encode_image_prompted(visual, images, first, deep)
        assert pooled.shape == (2, visual.transformer.width)
        torch.testing.assert_close(pooled @ proj, projected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def linear_text_backbone(tiny_variant):
    """A tiny random CLIP whose text projection is an nn.Linear (``proj_bias``) and whose text features are
    read at the end-of-text token by its id (``pool_type: eos``) rather than at the largest token id."""
    return tiny_variant("tiny-vit-linear",
                        lambda cfg: cfg["text_cfg"].update(proj_bias=True, pool_type="eos", eos_id=49407))


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_a_linear_text_projection_and_eos_pooling_give_zero_shot_clip(linear_text_backbone, fast):
    backbone = linear_text_backbone
    assert isinstance(backbone.model.text_projection, torch.nn.Linear) and backbone.model.text_pool_type == "eos"
    learner = build_learner("coop", backbone, CLASSES, ctx_init="a photo of a")
    learner.fast_paths = fast  # the plain path pools through open_clip's text_global_pool with the eos id
    with torch.no_grad():
        reference = backbone.model.encode_text(backbone.tokenize([f"a photo of a {c}." for c in CLASSES]),
                                               normalize=True)
        torch.testing.assert_close(learner.text_features(), reference, rtol=1e-5, atol=1e-6)
