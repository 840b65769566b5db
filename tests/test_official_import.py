"""Official Dassl checkpoints, written the way Dassl writes them, imported exactly; malicious pickles refused."""

import builtins
import io
import os
import pickle
import sys
import types
from collections import OrderedDict

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from dapt_core.checkpoint import CheckpointError, load_prompt_set, read_info
from dapt_core.learners import build_learner
from dapt_core.objective import DaptConfig
from dapt_core.official import (
    OfficialObject, UnsafePickleError, import_official, load_official, read_official_prompts,
)

CLASSES = ["dog", "cat", "fish"]
WARMUP_EPOCHS, WARMUP_LR, MAX_EPOCH = 1, 1e-5, 10
SETSTATE_CALLS: list[str] = []  # every __setstate__ of the test's Dassl scheduler that ran


# --- Dassl's warm-up scheduler, defined here under Dassl's module name ------------------------------------

class _BaseWarmupScheduler(LRScheduler):
    """Dassl's warm-up base (dassl/optim/lr_scheduler.py): hands over to ``successor`` after warm-up."""

    def __init__(self, optimizer, successor, warmup_epoch, last_epoch=-1):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        super().__init__(optimizer, last_epoch)

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)

    def __setstate__(self, state):
        SETSTATE_CALLS.append(type(self).__name__)
        self.__dict__.update(state)


class ConstantWarmupScheduler(_BaseWarmupScheduler):
    def __init__(self, optimizer, successor, warmup_epoch, cons_lr, last_epoch=-1):
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


@pytest.fixture
def dassl(monkeypatch):
    """Registers the scheduler classes as module ``dassl.optim.lr_scheduler``, so pickle names them so."""
    module = types.ModuleType("dassl.optim.lr_scheduler")
    for cls in (_BaseWarmupScheduler, ConstantWarmupScheduler):
        monkeypatch.setattr(cls, "__module__", module.__name__)
        setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "dassl", types.ModuleType("dassl"))
    monkeypatch.setitem(sys.modules, "dassl.optim", types.ModuleType("dassl.optim"))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    SETSTATE_CALLS.clear()
    return module


def dassl_training_state(params):
    """An SGD optimizer and Dassl's constant warm-up wrapping a cosine schedule, after two epochs' steps."""
    optimizer = torch.optim.SGD(params, lr=0.0035, momentum=0.9, weight_decay=5e-4)
    cosine = CosineAnnealingLR(optimizer, float(MAX_EPOCH))
    scheduler = ConstantWarmupScheduler(optimizer, cosine, WARMUP_EPOCHS, WARMUP_LR)
    for _ in range(2):
        for p in params:
            if p.requires_grad:
                p.grad = torch.randn_like(p)
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


def save_like_dassl(path, state_dict, optimizer, scheduler, epoch, val_result=None, **save_kwargs):
    """Dassl's TrainerBase.save_model + save_checkpoint: the dict it builds, through torch.save."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state_dict, "epoch": epoch, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "val_result": val_result}, path, **save_kwargs)
    return path


def random_maple(backbone):
    torch.manual_seed(11)
    learner = build_learner("maple", backbone, CLASSES)
    with torch.no_grad():
        for p in learner.parameters():
            p.copy_(torch.randn_like(p))
    return learner


def custom_clip_state(learner, backbone):
    """The official MaPLe/DAPT ``CustomCLIP`` state dict: prompt learner, frozen token embeddings, CLIP."""
    state = OrderedDict((f"prompt_learner.{k}", v) for k, v in learner.state_dict().items())
    n_cls, width = len(learner.classnames), backbone.text_width
    state["prompt_learner.token_prefix"] = torch.randn(n_cls, 1, width)
    state["prompt_learner.token_suffix"] = torch.randn(n_cls, 74, width)
    state.update((f"image_encoder.{k}", v) for k, v in backbone.visual.state_dict().items())
    state.update((f"text_encoder.{k}", v) for k, v in backbone.model.transformer.state_dict().items())
    state["logit_scale"] = backbone.model.logit_scale.detach()
    return state


@pytest.fixture
def maple_file(dassl, tiny_backbone, tmp_path):
    """A DAPT run's ``MultiModalPromptLearner/model-best.pth.tar``: the whole model is registered, so the
    optimizer (and the scheduler's pickled copy of it) holds every CLIP parameter too."""
    learner = random_maple(tiny_backbone)
    optimizer, scheduler = dassl_training_state(list(learner.parameters()) + list(tiny_backbone.model.parameters()))
    src = save_like_dassl(tmp_path / "MultiModalPromptLearner" / "model-best.pth.tar",
                          custom_clip_state(learner, tiny_backbone), optimizer, scheduler, epoch=5, val_result=71.5)
    return src, learner, optimizer


def test_the_fixture_is_what_weights_only_refuses(maple_file):
    with pytest.raises(pickle.UnpicklingError, match="CosineAnnealingLR"):
        torch.load(maple_file[0], weights_only=True)


def test_imported_maple_dapt_gives_the_writers_logits(maple_file, tiny_backbone, tmp_path, monkeypatch):
    src, writer, _ = maple_file

    def forbidden(self, state):
        raise AssertionError("an optimizer's __setstate__ ran")

    monkeypatch.setattr(torch.optim.SGD, "__setstate__", forbidden)
    with pytest.raises(AssertionError, match="__setstate__ ran"):  # plain pickle would run it
        torch.load(src, weights_only=False)
    out = import_official(src, tiny_backbone, CLASSES, tmp_path / "dapt.safetensors", dapt=DaptConfig(cue="mask"))
    imported = load_prompt_set(out, tiny_backbone)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(imported(images), writer(images))
    assert imported.kind == "maple" and imported.cfg.depth == writer.cfg.depth
    meta = read_info(out).meta
    assert meta["train"] == {"imported_from": "model-best.pth.tar", "epoch": 5, "val_result": 71.5}
    assert read_info(out).label == "MaPLe + DAPT (mask)"


def test_coop_checkpoint_of_the_prompt_learner_alone(dassl, tiny_backbone, tmp_path):
    torch.manual_seed(5)
    writer = build_learner("coop", tiny_backbone, CLASSES, n_ctx=4)
    optimizer, scheduler = dassl_training_state(list(writer.parameters()))
    state = OrderedDict(writer.state_dict())
    state["token_prefix"], state["token_suffix"] = torch.randn(3, 1, 32), torch.randn(3, 72, 32)
    src = save_like_dassl(tmp_path / "prompt_learner" / "model.pth.tar-50", state, optimizer, scheduler, epoch=50)
    out = import_official(src, tiny_backbone, CLASSES, tmp_path / "coop.safetensors")
    imported = load_prompt_set(out, tiny_backbone)
    assert imported.kind == "coop" and torch.equal(imported.ctx.detach(), writer.ctx.detach())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(imported(images), writer(images))
    assert read_info(out).meta["train"]["epoch"] == 50


def test_optimizer_and_schedulers_become_inert_placeholders(maple_file):
    src, writer, optimizer = maple_file
    raw = load_official(src)
    successor = raw["scheduler"]["successor"]
    assert isinstance(successor, OfficialObject)
    assert successor.official_name == "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert successor.state["T_max"] == float(MAX_EPOCH) and successor.state["last_epoch"] == 1
    inner = successor.state["optimizer"]
    assert inner.official_name == "torch.optim.sgd.SGD" and not hasattr(inner, "step")
    assert torch.equal(inner.state["param_groups"][0]["params"][0], writer.ctx.detach())
    assert raw["scheduler"]["cons_lr"] == WARMUP_LR and raw["scheduler"]["warmup_epoch"] == WARMUP_EPOCHS
    momentum = optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert type(raw["optimizer"]["state"]) is dict  # defaultdict(dict) read as a plain dict
    assert torch.equal(raw["optimizer"]["state"][0]["momentum_buffer"], momentum)


def test_a_pickled_dassl_scheduler_object_runs_no_setstate(dassl, tmp_path):
    params = [torch.nn.Parameter(torch.randn(4, 3))]
    _, scheduler = dassl_training_state(params)
    path = tmp_path / "sched.pth"
    torch.save({"state_dict": {"ctx": params[0].detach()}, "scheduler": scheduler}, path)
    torch.load(path, weights_only=False)
    assert SETSTATE_CALLS == ["ConstantWarmupScheduler"]  # plain pickle runs Dassl's __setstate__
    SETSTATE_CALLS.clear()
    loaded = load_official(path)["scheduler"]
    assert SETSTATE_CALLS == []
    assert loaded.official_name == "dassl.optim.lr_scheduler.ConstantWarmupScheduler"
    assert loaded.state["successor"].official_name == "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert loaded.state["optimizer"].official_name == "torch.optim.sgd.SGD"


def _plant(path):
    with open(path, "w") as f:
        f.write("ran")


class Planted:
    """Unpickling it calls ``_plant`` (a function of this module)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _plant, (self.marker,)


class Stateful:
    """A class of this module whose ``__setstate__`` has a side effect."""

    def __init__(self, marker):
        self.marker = marker

    def __setstate__(self, state):
        _plant(state["marker"])


class Reducing:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


MALICIOUS = {
    "os.system": (lambda m: Reducing(os.system, f"touch {m}"), f"{os.system.__module__}.system"),
    "builtins.eval": (lambda m: Reducing(builtins.eval, f"open({str(m)!r}, 'w').close()"), "builtins.eval"),
    "builtins.exec": (lambda m: Reducing(builtins.exec, f"open({str(m)!r}, 'w').close()"), "builtins.exec"),
    "module function": (lambda m: Planted(str(m)), "_plant"),
    "class with __setstate__": (lambda m: Stateful(str(m)), "Stateful"),
    "torch function": (lambda m: Reducing(torch.serialization.load, str(m)), "torch.serialization.load"),
    "getattr": (lambda m: Reducing(getattr, str(m), "upper"), "builtins.getattr"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
@pytest.mark.parametrize("where", ["top level", "inside the scheduler state"])
def test_malicious_pickles_are_refused_unexecuted(dassl, tiny_backbone, tmp_path, case, where):
    make, expected_name = MALICIOUS[case]
    marker = tmp_path / "marker"
    payload = make(marker)
    params = [torch.nn.Parameter(torch.zeros(4, tiny_backbone.text_width))]
    optimizer, scheduler = dassl_training_state(params)
    sched_state = scheduler.state_dict()
    checkpoint = {"state_dict": {"ctx": params[0].detach()}, "epoch": 1, "optimizer": optimizer.state_dict(),
                  "scheduler": sched_state, "val_result": None}
    if where == "top level":
        checkpoint["extra"] = payload
    else:
        sched_state["successor"].hook = payload
    src = tmp_path / "evil.pth.tar"
    torch.save(checkpoint, src)
    with pytest.raises(UnsafePickleError) as err:
        import_official(src, tiny_backbone, CLASSES, tmp_path / "x.safetensors")
    assert expected_name in err.value.global_name and expected_name in str(err.value)
    assert not marker.exists() and not (tmp_path / "x.safetensors").exists()


def test_legacy_torch_format_is_read_too(dassl, tiny_backbone, tmp_path):
    writer = random_maple(tiny_backbone)
    optimizer, scheduler = dassl_training_state(list(writer.parameters()))
    src = save_like_dassl(tmp_path / "old.pth.tar", custom_clip_state(writer, tiny_backbone), optimizer, scheduler,
                          epoch=2, _use_new_zipfile_serialization=False)
    state, info = read_official_prompts(src)
    assert set(state) == set(writer.state_dict()) and info["epoch"] == 2
    assert all(torch.equal(state[k], v) for k, v in writer.state_dict().items())


def test_prompt_entries_are_owned_copies_and_the_rest_is_dropped(maple_file):
    src, writer, _ = maple_file
    state, info = read_official_prompts(src)
    assert sorted(state) == sorted(writer.state_dict())
    n_frozen = len(custom_clip_state(writer, writer.backbone)) - len(state)
    assert info["kept_entries"] == len(state) and info["dropped_entries"] == n_frozen
    size = src.stat().st_size
    with open(src, "r+b") as f:  # a tensor still mapped from the file would see this (same size: no SIGBUS)
        f.write(bytes(size))
    assert all(torch.equal(state[k], v) for k, v in writer.state_dict().items())


def test_bad_files_are_refused_with_a_reason(dassl, tiny_backbone, tmp_path):
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        import_official(junk, tiny_backbone, CLASSES, tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_official(tmp_path / "missing.pth.tar", tiny_backbone, CLASSES, tmp_path / "x.safetensors")
    params = [torch.nn.Parameter(torch.zeros(4, 512))]
    optimizer, scheduler = dassl_training_state(params)
    wide = save_like_dassl(tmp_path / "wide.pth.tar", {"ctx": params[0].detach()}, optimizer, scheduler, epoch=1)
    with pytest.raises(CheckpointError, match="width 512"):
        import_official(wide, tiny_backbone, CLASSES, tmp_path / "x.safetensors")
    not_tensors = tmp_path / "strings.pth.tar"
    torch.save({"state_dict": {"ctx": "a string"}}, not_tensors)
    with pytest.raises(CheckpointError, match="not tensors"):
        import_official(not_tensors, tiny_backbone, CLASSES, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_a_checkpoint_of_other_depth_is_refused_naming_the_keys(maple_file, tiny_backbone, tmp_path):
    src, _, _ = maple_file
    with pytest.raises(CheckpointError, match="compound_prompts_text.0"):
        import_official(src, tiny_backbone, CLASSES, tmp_path / "x.safetensors", learner="coop")


def test_bytes_through_codecs_encode_are_allowed_other_codecs_are_not(tmp_path):
    from dapt_core.official import RestrictedUnpickler

    ok = pickle.dumps({"blob": b"\x00\xffab"}, protocol=2)  # protocol 2 writes bytes as _codecs.encode(..., latin1)
    assert RestrictedUnpickler(io.BytesIO(ok)).load() == {"blob": b"\x00\xffab"}
    import codecs

    bad = pickle.dumps(Reducing(codecs.encode, "abc", "rot13"), protocol=2)
    with pytest.raises(UnsafePickleError, match="rot13"):
        RestrictedUnpickler(io.BytesIO(bad)).load()
