import pytest
import torch

from dapt_core.backbones import load_backbone


@pytest.fixture(scope="module")
def one_thread():
    """The benchmark's models are tiny: one thread is faster than two on a busy CPU; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_backbone():
    """A tiny randomly initialised ViT CLIP (2 layers per tower), built once for the whole session."""
    torch.manual_seed(0)
    return load_backbone("tiny-vit", device="cpu")


@pytest.fixture(scope="session")
def tiny_variant(tmp_path_factory):
    """Builds a tiny random CLIP from tiny-vit's config changed by ``edit(cfg)`` (in place), registered with open_clip
    as ``name``; weights drawn after ``torch.manual_seed(0)``, as for ``tiny_backbone``."""
    import json

    import open_clip

    from dapt_core import paths
    from dapt_core.backbones import Backbone, BackboneSpec

    def build(name: str, edit) -> Backbone:
        cfg = json.loads((paths.MODEL_CONFIG_DIR / "tiny-vit.json").read_text())
        edit(cfg)
        path = tmp_path_factory.mktemp("configs") / f"{name}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)
        torch.manual_seed(0)
        model = open_clip.create_model(name, device="cpu").eval().requires_grad_(False)
        spec = BackboneSpec(name, name, None, None, "test backbone", test_only=True)
        return Backbone(spec, model, open_clip.get_tokenizer(name), cfg["vision_cfg"]["image_size"],
                        open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    return build


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fails the test if the train command reads the data set or builds a backbone."""
    from dapt_core import backbones
    from dapt_core.cli import train as train_command

    def refuse(*args, **kwargs):
        raise AssertionError("loaded before the settings were checked")
    monkeypatch.setattr(train_command, "data_splits", refuse)
    monkeypatch.setattr(backbones, "load_backbone", refuse)
