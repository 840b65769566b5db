"""The synth-web recipe: its preset, corpus batches, loss terms, probes, saved weights and the new tag."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open

from dapt_core import paths
from dapt_core.backbones import get_backbone_spec
from dapt_core.checkpoint import CheckpointError, check_compatible, read_info
from dapt_core.minclip.captions import true_of
from dapt_core.minclip.config import PRESETS, PretrainConfig, WebPretrainConfig
from dapt_core.minclip.losses import class_caption_loss, clip_loss
from dapt_core.minclip.pretrain import build_model
from dapt_core.minclip.web_corpus import (
    object_accuracy,
    object_class_captions,
    object_prompts,
    probe_sets,
    sample_web_batch,
    web_probe,
    world_config,
)
from dapt_core.minclip import web_pretrain
from dapt_core.weights import get_weight_spec
from dapt_core.world.web import WEB_BACKGROUND_PHRASES, WebWorldConfig, scene_spec
from dapt_core.world.web_shapes import WEB_OBJECT_CLASSES

TINY = replace(WebPretrainConfig(), model_name="tiny-vit", steps=3, batch_size=12, warmup_steps=1, eval_every=2,
               eval_n=24, threads=1, init_from="")


def test_presets_keep_synth_mini_and_make_the_web_recipe_web_like():
    mini = PRESETS["synth-mini"]
    assert mini == PretrainConfig()
    assert (mini.model_name, mini.steps, mini.batch_size, mini.background_only_share, mini.probe_head_weight,
            mini.distinct_captions) == ("synth-mini", 3000, 256, 0.1, 1.0, True)
    web = PRESETS["synth-web"]
    assert web.model_name == "synth-web" and web.background_only_share == 0.0 and not web.distinct_captions
    assert world_config(web) == WebWorldConfig(p_home=0.7, p_background_caption=0.1)
    assert web.init_from == "checkpoints/synth-mini.safetensors"


def test_web_batch_keeps_each_scenes_caption_and_marks_repeated_captions_true():
    rng = np.random.default_rng(0)
    batch = sample_web_batch(rng, 160, WebWorldConfig(size=32))
    assert batch.images.shape == (160, 32, 32, 3) and len(batch.captions) == 160
    for caption, facts, stated in zip(batch.captions, batch.facts, batch.stated):
        assert facts["object"] in caption and stated["object"] == facts["object"]
        assert ("background" in stated) == (WEB_BACKGROUND_PHRASES[facts["background"]] in caption)
    truth = true_of(batch)
    for i in range(160):
        for j in range(160):
            if batch.captions[i] == batch.captions[j]:
                assert truth[i, j] and truth[j, i]
            if batch.facts[i]["object"] != batch.facts[j]["object"]:
                assert not truth[i, j]  # every caption names its object
    assert sum(a == b for a in batch.captions for b in batch.captions) > 160  # web captions repeat


def test_object_class_captions_name_each_class_once_without_colour_or_background():
    caps = object_class_captions(np.random.default_rng(3))
    assert len(caps) == len(WEB_OBJECT_CLASSES)
    assert all(name in cap for name, cap in zip(WEB_OBJECT_CLASSES, caps))
    assert not any(phrase in cap for cap in caps for phrase in ("on ", "in front of", "red", "grass"))
    assert object_prompts()[1] == "a photo of an oval."


class _LabelReader(torch.nn.Module):
    """A fake CLIP: text i -> one-hot i; an image -> one-hot of the class written in its first pixel."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def encode_text(self, tokens):
        return torch.eye(len(WEB_OBJECT_CLASSES))[tokens[:, 0]]

    def encode_image(self, x):
        return torch.eye(len(WEB_OBJECT_CLASSES))[x[:, 0, 0, 0].round().long()]


def test_object_accuracy_and_the_context_gap_by_value():
    n = 24
    labels = list(range(n))
    right = np.zeros((n, 4, 4, 3), np.uint8)
    right[:, 0, 0, 0] = labels
    wrong = right.copy()
    wrong[:6, 0, 0, 0] = (np.arange(6) + 1) % n  # 6 of 24 named as the next class
    tokenizer = lambda texts: torch.arange(len(texts))[:, None]  # noqa: E731
    mean, std = (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)  # pixel values pass through unchanged
    model = _LabelReader()
    assert object_accuracy(model, tokenizer, right, labels, mean, std, batch_size=5) == 100.0
    sets = {"home": (right, labels), "other": (wrong, labels), "only_bg": (wrong[:8], labels[:8])}
    assert web_probe(model, tokenizer, sets, mean, std) == {"home_acc": 100.0, "other_acc": 75.0,
                                                             "only_bg_acc": 25.0, "context_gap": 25.0}


def test_probe_sets_put_objects_home_and_away_and_keep_the_background_alone():
    sets = probe_sets(24, 5, WebWorldConfig(size=32))
    assert sets["home"][1] == list(range(24)) and sets["other"][1] == list(range(24))
    assert sets["home"][0].shape == sets["only_bg"][0].shape == (24, 32, 32, 3)
    assert all(scene_spec(5, i, WebWorldConfig(size=32), object=WEB_OBJECT_CLASSES[i], home=True).home
               for i in range(24))
    assert not np.array_equal(sets["home"][0], sets["only_bg"][0])


def test_loss_terms_add_with_their_weights():
    model, tokenizer, size, mean, std = build_model(TINY)
    batch = sample_web_batch(np.random.default_rng(1), 12, WebWorldConfig(size=size))
    caps = object_class_captions(np.random.default_rng(2))
    head = torch.nn.Linear(model.visual.output_dim, len(WEB_OBJECT_CLASSES))
    fp32 = replace(TINY, precision="fp32")
    loss = {w: web_pretrain._batch_loss(model, head, tokenizer, batch, caps, mean, std,
                                        replace(fp32, probe_head_weight=w[0], class_caption_weight=w[1])).item()
            for w in [(0.0, 0.0), (2.0, 0.0), (0.0, 3.0)]}
    with torch.no_grad():
        from dapt_core.minclip.zeroshot import images_to_tensor
        image_out = model.encode_image(images_to_tensor(batch.images, mean, std))
        img = torch.nn.functional.normalize(image_out, dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tokenizer(batch.captions + caps)), dim=-1)
        labels = torch.tensor([WEB_OBJECT_CLASSES.index(f["object"]) for f in batch.facts])
        scale = model.logit_scale.exp()
        plain = clip_loss(img, txt[:12], scale, true_of(batch)).item()
        head_ce = torch.nn.functional.cross_entropy(head(image_out), labels).item()
        caption_ce = class_caption_loss(img, txt[12:], scale, labels).item()
    assert loss[(0.0, 0.0)] == pytest.approx(plain, rel=1e-4)
    assert loss[(2.0, 0.0)] - loss[(0.0, 0.0)] == pytest.approx(2.0 * head_ce, rel=1e-3)
    assert loss[(0.0, 3.0)] - loss[(0.0, 0.0)] == pytest.approx(3.0 * caption_ce, rel=1e-3)


def test_pretrain_web_saves_fp16_weights_with_the_new_tag_and_probes(tmp_path):
    out = tmp_path / "w.safetensors"
    summary = web_pretrain.pretrain_web(TINY, out)
    assert [p["step"] for p in summary["probes"]] == [2, 3]
    assert set(summary["probes"][0]) == {"step", "wall_s", "home_acc", "other_acc", "only_bg_acc", "context_gap"}
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
        assert {f.get_tensor(k).dtype for k in keys if f.get_tensor(k).is_floating_point()} == {torch.float16}
    assert meta["pretrained_tag"] == "synth-web-v1" and meta["step"] == "3"
    assert json.loads(meta["config"])["p_home"] == 0.7 and len(json.loads(meta["probes"])) == 2
    assert keys == set(summary["model"].state_dict())  # the object head is not saved
    again = web_pretrain.pretrain_web(replace(TINY, steps=1, eval_every=0))
    assert again["first_loss"] == pytest.approx(summary["first_loss"], rel=1e-5)  # one seed, one stream


def test_init_from_starts_at_the_given_weights(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "start.safetensors"
    web_pretrain.pretrain_web(replace(TINY, steps=1, eval_every=0), out)
    start = load_file(str(out))
    frozen = web_pretrain.pretrain_web(replace(TINY, steps=1, eval_every=0, lr=0.0, init_from=str(out)))
    state = frozen["model"].state_dict()
    assert set(state) == set(start)
    for key, value in start.items():
        torch.testing.assert_close(state[key], value.to(state[key].dtype), rtol=0, atol=0)
    fresh = web_pretrain.pretrain_web(replace(TINY, steps=1, eval_every=0, lr=0.0, seed=1))["model"].state_dict()
    assert not torch.equal(fresh["visual.conv1.weight"], state["visual.conv1.weight"])
    with pytest.raises(RuntimeError, match="size mismatch|Missing key|Unexpected key"):
        web_pretrain.pretrain_web(replace(TINY, steps=1, eval_every=0, init_from=str(out), model_name="synth-web"))


def test_command_line_refuses_a_bad_path_before_training(capsys):
    with pytest.raises(ValueError, match="safetensors"):
        web_pretrain.main(["--model-name", "tiny-vit", "--steps", "1", "--out", "weights.pt"])


def test_registry_entry_and_old_tags_are_refused():
    spec = get_backbone_spec("synth-web")
    assert (spec.model_name, spec.pretrained, spec.weights) == ("synth-web", "synth-web-v1", "synth-web")
    assert get_weight_spec("synth-web").filename == "synth-web.safetensors"
    assert (paths.MODEL_CONFIG_DIR / "synth-web.json").is_file()
    backbone = SimpleNamespace(spec=spec, pretrained=spec.pretrained, name="synth-web", text_width=128)
    bundled = read_info(paths.CHECKPOINT_DIR / "prompts" / "synth-coop.safetensors").meta
    with pytest.raises(CheckpointError, match="synth-v3.*synth-web-v1"):
        check_compatible(bundled, backbone)  # a synth-mini prompt set
    older = {"backbone": "synth-web", "model": "synth-web", "pretrained": "synth-web-v0", "text_width": 128}
    with pytest.raises(CheckpointError, match="synth-web-v0.*synth-web-v1"):
        check_compatible(older, backbone)
    check_compatible({**older, "pretrained": "synth-web-v1"}, backbone)  # its own tag is accepted


BUNDLED = paths.CHECKPOINT_DIR / "synth-web.safetensors"


@pytest.mark.skipif(not BUNDLED.is_file(), reason="the bundled synth-web weights are not in checkpoints/")
def test_the_defaults_are_the_bundled_checkpoints_recipe_and_it_loads_with_its_tag():
    from dapt_core.backbones import load_backbone

    with safe_open(str(BUNDLED), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["config"]) == json.loads(json.dumps(asdict(WebPretrainConfig())))
    assert meta["pretrained_tag"] == "synth-web-v1" and meta["step"] == str(WebPretrainConfig().steps)
    backbone = load_backbone("synth-web", device="cpu", download=False)
    assert backbone.pretrained == "synth-web-v1" and backbone.image_size == 64
