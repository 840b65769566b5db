import pytest
import torch

from dapt_core.backbones import load_backbone


@pytest.fixture(scope="session")
def tiny_backbone():
    """A tiny randomly initialised ViT CLIP (2 layers per tower), built once for the whole session."""
    torch.manual_seed(0)
    return load_backbone("tiny-vit", device="cpu")


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fails the test if the train command reads the data set or builds a backbone."""
    from dapt_core import backbones
    from dapt_core.cli import train as train_command

    def refuse(*args, **kwargs):
        raise AssertionError("loaded before the settings were checked")
    monkeypatch.setattr(train_command, "data_splits", refuse)
    monkeypatch.setattr(backbones, "load_backbone", refuse)
