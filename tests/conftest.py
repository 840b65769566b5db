import pytest
import torch

from dapt_core.backbones import load_backbone


@pytest.fixture(scope="session")
def tiny_backbone():
    """A tiny randomly initialised ViT CLIP (2 layers per tower), built once for the whole session."""
    torch.manual_seed(0)
    return load_backbone("tiny-vit", device="cpu")
