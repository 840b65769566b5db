import threading

import pytest
import torch

from dapt_core.backbones import load_backbone
from dapt_core.checkpoint import (
    CheckpointError, list_prompt_sets, load_prompt_set, read_info, save_prompt_set,
)
from dapt_core.learners import build_learner
from dapt_core.objective import DaptConfig
from dapt_core.train import TrainConfig, TrainingCancelled, train_prompts

CLASSES = ["dog", "cat", "fish"]


def test_save_load_round_trip_keeps_prompts_and_metadata(tiny_backbone, tmp_path):
    torch.manual_seed(0)
    learner = build_learner("maple", tiny_backbone, CLASSES)
    with torch.no_grad():
        learner.ctx.add_(torch.randn_like(learner.ctx))
    path = save_prompt_set(learner, tmp_path / "p.safetensors", dapt=DaptConfig(cue="mask"),
                           train_config={"shots": 4}, metrics={"accuracy": 50.0}, name="mine")
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]
    info = read_info(path)
    assert info.name == "mine" and info.label == "MaPLe + DAPT (mask)"
    meta = info.meta
    assert meta["format_version"] == 1 and meta["pretrained"] is None and meta["classnames"] == CLASSES
    assert meta["learner_options"]["depth"] == 2 and meta["dapt"]["triplet_weight"] == 0.8
    loaded = load_prompt_set(path, tiny_backbone)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(images), learner(images), atol=1e-6)
    assert list_prompt_sets(tmp_path, tiny_backbone)[0].path == path


def test_other_backbone_is_refused_naming_both(tiny_backbone, tmp_path):
    learner = build_learner("coop", tiny_backbone, CLASSES)
    path = save_prompt_set(learner, tmp_path / "p.safetensors")
    other = load_backbone("openclip:ViT-B-16-quickgelu", device="cpu")  # no tag: random weights
    with pytest.raises(CheckpointError) as err:
        load_prompt_set(path, other)
    assert "tiny-vit" in str(err.value) and "ViT-B-16-quickgelu" in str(err.value)
    assert list_prompt_sets(tmp_path, other) == []


@pytest.mark.parametrize("content,reason", [(b"not a tensor file", "not a readable"), (None, "no DAPT")])
def test_bad_files_are_refused(tiny_backbone, tmp_path, content, reason):
    path = tmp_path / "bad.safetensors"
    if content is None:
        from safetensors.torch import save_file
        save_file({"ctx": torch.zeros(2, 2)}, str(path))
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason):
        load_prompt_set(path, tiny_backbone)
    with pytest.raises(CheckpointError, match="safetensors"):
        read_info(tmp_path / "x.pth")


def test_tensors_that_do_not_fit_are_refused(tiny_backbone, tmp_path):
    learner = build_learner("coop", tiny_backbone, CLASSES, n_ctx=4)
    path = save_prompt_set(learner, tmp_path / "p.safetensors")
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["dapt_core"])
    meta["learner_options"]["n_ctx"] = 8
    save_file({"ctx": learner.ctx.detach()}, str(path), metadata={"dapt_core": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_prompt_set(path, tiny_backbone)


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_backbone, tmp_path):
    import numpy as np
    from PIL import Image

    from dapt_core.data.folders import load_imagefolder
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((rng.random((36, 36, 3)) * 255).astype(np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    samples = load_imagefolder(tmp_path / "data", test_fraction=0.0).train
    cfg = TrainConfig(epochs=3, batch_size=4, seed=3)

    def fresh():
        torch.manual_seed(0)
        return build_learner("coop", tiny_backbone, CLASSES, n_ctx=4)

    reference = fresh()
    train_prompts(reference, samples, cfg, DaptConfig(), progress=False)

    interrupted, cancel, state = fresh(), threading.Event(), tmp_path / "run.state.pt"

    def stop_in_epoch_two(report):
        if report.epoch == 1:
            cancel.set()

    with pytest.raises(TrainingCancelled):
        train_prompts(interrupted, samples, cfg, DaptConfig(), state_path=state, on_step=stop_in_epoch_two,
                      cancel=cancel, progress=False)
    assert state.exists()
    resumed = fresh()
    history = train_prompts(resumed, samples, cfg, DaptConfig(), state_path=state, progress=False)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert torch.allclose(resumed.ctx, reference.ctx, atol=1e-6)
