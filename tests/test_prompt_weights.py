"""A prompt set fits the backbone weights it was trained on, not only their architecture and name.

Prompt sets record :func:`~dapt_core.checkpoint.backbone_fingerprint` of their backbone; loading (and listing)
refuses a backbone of the same name and architecture whose weights differ, naming both fingerprints.
"""

import copy
import dataclasses
import logging
import threading

import open_clip
import pytest
import torch

from dapt_core.backbones import load_backbone
from dapt_core.checkpoint import (
    CheckpointError, backbone_fingerprint, list_prompt_sets, load_prompt_set, read_info, save_prompt_set,
)
from dapt_core.learners import build_learner

CLASSES = ["dog", "cat", "fish"]


def with_model(backbone, model):
    """The same backbone (name, tokenizer, preprocessing) around other weights."""
    return dataclasses.replace(backbone, model=model.eval().requires_grad_(False), lock=threading.RLock())


@pytest.fixture
def saved(tiny_backbone, tmp_path):
    torch.manual_seed(0)
    learner = build_learner("maple", tiny_backbone, CLASSES)
    return learner, save_prompt_set(learner, tmp_path / "p.safetensors")


def test_the_fingerprint_is_recorded_and_the_same_weights_load(tiny_backbone, saved):
    learner, path = saved
    assert read_info(path).meta["backbone_fingerprint"] == backbone_fingerprint(tiny_backbone)
    again = load_backbone("tiny-vit", device="cpu")  # a fresh load of the same (seeded) weights
    assert again.model is not tiny_backbone.model and backbone_fingerprint(again) == backbone_fingerprint(tiny_backbone)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_prompt_set(path, again)(images), learner(images))


def test_the_same_architecture_with_other_weights_is_refused_naming_both(tiny_backbone, saved, tmp_path):
    _, path = saved
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)  # another random initialisation of the same architecture, under the same name
        other = with_model(tiny_backbone, open_clip.create_model("tiny-vit", device="cpu"))
    ours, theirs = backbone_fingerprint(tiny_backbone), backbone_fingerprint(other)
    assert ours != theirs
    with pytest.raises(CheckpointError) as err:
        load_prompt_set(path, other)
    assert str(err.value) == (f"prompt set p.safetensors was made for backbone 'tiny-vit' with weights fingerprint "
                              f"{ours}, but the loaded backbone 'tiny-vit' has the same architecture with other "
                              f"weights (fingerprint {theirs}); load it with the weights it was trained on")
    assert list_prompt_sets(tmp_path, other) == []
    assert [info.path for info in list_prompt_sets(tmp_path, tiny_backbone)] == [path]


def test_every_frozen_tensor_enters_the_fingerprint(tiny_backbone):
    model = copy.deepcopy(tiny_backbone.model)
    backbone = with_model(tiny_backbone, model)
    reference = backbone_fingerprint(backbone)
    assert reference == backbone_fingerprint(tiny_backbone)
    gen = torch.Generator().manual_seed(0)
    for name, tensor in model.named_parameters():  # a fine-tune moves a tensor everywhere, by a little
        saved = tensor.detach().clone()
        with torch.no_grad():
            tensor.add_(1e-3 * torch.randn(tensor.shape, generator=gen))
        assert backbone_fingerprint(backbone) != reference, name
        with torch.no_grad():
            tensor.copy_(saved)
    assert backbone_fingerprint(backbone) == reference
    assert len(reference) == 16 and int(reference, 16) >= 0
    small = model.ln_final.weight  # a tensor of at most FINGERPRINT_SAMPLES values enters whole
    with torch.no_grad():
        small[1] += 1e-3
    assert backbone_fingerprint(backbone) != reference


def test_the_same_weights_in_another_precision_have_the_same_fingerprint(tiny_backbone):
    from open_clip.model import convert_weights_to_lp

    low = copy.deepcopy(tiny_backbone.model)
    convert_weights_to_lp(low, dtype=torch.bfloat16)
    assert low.visual.conv1.weight.dtype == torch.bfloat16
    same_values = copy.deepcopy(low).float()  # the bf16 weights, held in fp32
    fingerprint = backbone_fingerprint(with_model(tiny_backbone, low))
    assert fingerprint == backbone_fingerprint(with_model(tiny_backbone, same_values))
    assert fingerprint != backbone_fingerprint(tiny_backbone)  # rounding to bf16 did change the weights


def test_a_prompt_set_without_a_fingerprint_still_loads_by_name(tiny_backbone, saved, caplog):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _, path = saved
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["dapt_core"])
    del meta["backbone_fingerprint"]
    save_file(load_file(str(path)), str(path), metadata={"dapt_core": json.dumps(meta)})
    with caplog.at_level(logging.INFO, logger="dapt_core.checkpoint"):
        assert load_prompt_set(path, tiny_backbone).classnames == CLASSES
    assert "no weights fingerprint" in caplog.text


def test_another_weights_tag_or_width_is_refused_by_name(tiny_backbone, saved):
    from dapt_core.checkpoint import check_compatible

    _, path = saved
    meta = read_info(path).meta
    retagged = dataclasses.replace(tiny_backbone, spec=dataclasses.replace(tiny_backbone.spec, pretrained="v2"))
    with pytest.raises(CheckpointError) as err:
        load_prompt_set(path, retagged)
    assert str(err.value) == ("prompt set p.safetensors was made for backbone 'tiny-vit' (tiny-vit, weights random), "
                              "but the loaded backbone is 'tiny-vit' (tiny-vit, weights v2); load it with the "
                              "backbone it was trained on")
    with pytest.raises(CheckpointError, match="^prompt set was made for backbone 'tiny-vit' "):
        check_compatible(meta, retagged)
    with pytest.raises(CheckpointError, match="weights v2"):
        check_compatible({**meta, "pretrained": "v1"}, retagged)
    check_compatible({**meta, "pretrained": "v2"}, retagged)  # the same tag (and the same weights) fits
    with pytest.raises(CheckpointError, match=r"\(tiny-vit, weights random\); load it with the backbone it was"):
        check_compatible({**meta, "pretrained": "v1"}, tiny_backbone)
    # a random-weights prompt set fits only the backbone of its name
    renamed = dataclasses.replace(tiny_backbone, spec=dataclasses.replace(tiny_backbone.spec, name="tiny-2"))
    with pytest.raises(CheckpointError, match="'tiny-2'"):
        check_compatible(meta, renamed)
    with pytest.raises(CheckpointError, match="made for backbone"):
        check_compatible({**meta, "text_width": tiny_backbone.text_width + 1}, tiny_backbone)
    check_compatible({k: v for k, v in meta.items() if k != "text_width"}, tiny_backbone)  # optional field
