import threading

import pytest
import torch

from dapt_core.backbones import load_backbone
from dapt_core.checkpoint import (
    CheckpointError, import_official, list_prompt_sets, load_prompt_set, read_info, save_prompt_set,
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


def write_official(path, state, epoch=5):
    """A checkpoint in the layout of Dassl's save_checkpoint (state dict, epoch, optimizer, scheduler)."""
    params = [torch.nn.Parameter(v.clone()) for v in state.values()]
    optimizer = torch.optim.SGD(params, lr=0.0035, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 10)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "epoch": epoch, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "val_result": None}, path)


def test_import_official_coop(tiny_backbone, tmp_path):
    ctx = torch.randn(16, tiny_backbone.text_width)
    src = tmp_path / "prompt_learner" / "model.pth.tar-50"
    write_official(src, {"ctx": ctx, "token_prefix": torch.randn(3, 1, 32), "token_suffix": torch.randn(3, 60, 32)},
                   epoch=50)
    out = import_official(src, tiny_backbone, CLASSES, tmp_path / "coop.safetensors")
    learner = load_prompt_set(out, tiny_backbone)
    assert learner.kind == "coop" and torch.equal(learner.ctx.detach(), ctx)
    assert read_info(out).meta["train"]["epoch"] == 50


def test_import_official_maple_dapt(tiny_backbone, tmp_path):
    width, vis = tiny_backbone.text_width, tiny_backbone.vision_width
    state = {
        "prompt_learner.ctx": torch.randn(2, width),
        "prompt_learner.proj.weight": torch.randn(vis, width), "prompt_learner.proj.bias": torch.randn(vis),
        "prompt_learner.compound_prompts_text.0": torch.randn(2, width),
        "prompt_learner.compound_prompt_projections.0.weight": torch.randn(vis, width),
        "prompt_learner.compound_prompt_projections.0.bias": torch.randn(vis),
        "prompt_learner.token_prefix": torch.randn(3, 1, width),
        "prompt_learner.token_suffix": torch.randn(3, 74, width),
        "image_encoder.proj": torch.randn(vis, 32),  # frozen CLIP weights saved beside the prompts
    }
    src = tmp_path / "MultiModalPromptLearner" / "model.pth.tar-5"
    write_official(src, state)
    out = import_official(src, tiny_backbone, CLASSES, tmp_path / "dapt.safetensors", dapt=DaptConfig(cue="mask"))
    learner = load_prompt_set(out, tiny_backbone)
    assert learner.kind == "maple" and learner.cfg.depth == 2
    assert torch.equal(learner.compound_prompts_text[0].detach(), state["prompt_learner.compound_prompts_text.0"])
    assert read_info(out).label == "MaPLe + DAPT (mask)"


def test_import_refuses_pickled_objects_and_wrong_width(tiny_backbone, tmp_path):
    src = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"ctx": torch.zeros(4, 32)}, "hook": threading.Lock}, src)
    with pytest.raises(ValueError):
        import_official(src, tiny_backbone, CLASSES, tmp_path / "x.safetensors")
    write_official(src, {"ctx": torch.zeros(4, 512)})
    with pytest.raises(CheckpointError, match="width 512"):
        import_official(src, tiny_backbone, CLASSES, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


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
