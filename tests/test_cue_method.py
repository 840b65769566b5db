"""DAPT's coarse cue from any attribution method (issue 12): the config's choice and its checks, the masks
training really uses, the command line, the prompt set's metadata (old sets read as Grad-CAM) and the grid."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from dapt_core import constants
from dapt_core import train as train_module
from dapt_core.attention.cam import CAM_METHODS, compute_cams
from dapt_core.attention.descriptions import METHOD_DESCRIPTIONS
from dapt_core.attention.metrics import binarize
from dapt_core.checkpoint import METADATA_KEY, CheckpointError, read_info, save_prompt_set
from dapt_core.cli import main
from dapt_core.cli import train as train_command
from dapt_core.data.dataset import PromptDataset
from dapt_core.data.folders import load_imagefolder
from dapt_core.grid.cells import CELL_FORMAT, METRICS_FILE, expand, plan, read_finished
from dapt_core.grid.config import GridConfigError, parse_config
from dapt_core.learners import build_learner
from dapt_core.objective import DaptConfig
from dapt_core.train import TrainConfig, train_prompts

PROJECT_DIR = Path(__file__).resolve().parents[1]
CLASSES = ["apple", "bird", "car", "dog"]
THRESHOLD = 0.5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An image folder of four classes, two random 40 x 48 images each (not square: the masks are resized)."""
    root = tmp_path_factory.mktemp("cue")
    rng = np.random.default_rng(3)
    for name in CLASSES:
        (root / "train" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(root / "train" / name / f"{i}.png")
    return root


# --- the config ----------------------------------------------------------------------------------------------

def test_the_official_cue_is_the_default_and_every_method_is_accepted():
    cfg = DaptConfig(cue="gradcam")
    assert (cfg.cam_method, cfg.cam_threshold) == ("gradcam", constants.CAM_THRESHOLD)
    assert tuple(METHOD_DESCRIPTIONS) == tuple(CAM_METHODS)  # the config checks against the registry's names
    for method in CAM_METHODS:
        assert DaptConfig(cue="gradcam", cam_method=method).cam_method == method


def test_an_unknown_cue_method_is_refused_naming_the_choices_without_loading_grad_cam():
    # the check runs in the config class, before the grad-cam package (imported only to compute a cue) loads
    code = ("import sys\nfrom dapt_core.train import TrainConfig\nfrom dapt_core.objective import DaptConfig\n"
            "try:\n    DaptConfig(cue='gradcam', cam_method='gradcamm')\nexcept ValueError as err:\n    print(err)\n"
            "print([m for m in ('pytorch_grad_cam', 'dapt_core.attention.cam') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_DIR)
    message, loaded = done.stdout.strip().splitlines()
    assert "unknown DAPT cue method 'gradcamm'" in message and ", ".join(CAM_METHODS) in message
    assert loaded == "[]"


# --- the masks training uses ----------------------------------------------------------------------------------

def expected_masks(learner, views: torch.Tensor, labels: list[int], method: str):
    """Each whole view's map of ``method`` for its true class, resized to the image (48 x 40): (scaled, mask)."""
    out = []
    for cam in compute_cams(learner, views, labels, method=method):
        full = cv2.resize(cam, (48, 40), interpolation=cv2.INTER_LINEAR)
        out.append((full / full.max(), binarize(full, THRESHOLD)))
    return out


# layercam runs the batched fast path (attention.shared.batch_cams), legrad and relevance compute_cams
@pytest.mark.parametrize("kind,method", [("coop", "layercam"), ("coop", "legrad"), ("maple", "relevance")])
def test_the_training_step_receives_the_chosen_methods_masks(tiny_backbone, folder, monkeypatch, kind, method):
    samples = load_imagefolder(folder / "train", test_fraction=0.0).train
    seen, datasets = [], []
    real_losses = train_module.dapt_losses

    def spy_losses(learner, images, masks, labels, *args, **kwargs):
        seen.append((images.clone(), masks.clone()))
        return real_losses(learner, images, masks, labels, *args, **kwargs)

    class RecordedDataset(PromptDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            datasets.append(self)

    monkeypatch.setattr(train_module, "dapt_losses", spy_losses)
    monkeypatch.setattr(train_module, "PromptDataset", RecordedDataset)

    def fresh():
        torch.manual_seed(0)
        return build_learner(kind, tiny_backbone, CLASSES, n_ctx=2)

    dapt = DaptConfig(cue="gradcam", schedule="joint", cam_method=method, cam_threshold=THRESHOLD)
    train_prompts(fresh(), samples, TrainConfig(epochs=1, batch_size=3, selection="last"), dapt, progress=False)
    (dataset,) = [d for d in datasets if d.train]
    views = torch.stack([dataset.full_view(i)[0] for i in range(len(samples))])
    labels = [s.label for s in samples]
    wanted = expected_masks(fresh(), views, labels, method)
    official = expected_masks(fresh(), views, labels, "gradcam")
    for i, (sample, (scaled, mask)) in enumerate(zip(samples, wanted)):
        stored = dataset.masks.get(i, sample)
        # pixels whose map sits on the threshold may go either way (float rounding of another code path)
        assert ((stored == mask) | (np.abs(scaled - THRESHOLD) < 1e-4)).all(), (method, i)
    # on these very images the official cue cuts other masks, so a cue that ignored the method would fail above
    assert np.mean([float((a != b).mean()) for (_, a), (_, b) in zip(wanted, official)]) > 0.05
    # and each image reaches the loss with its own stored mask (cropped and flipped with it)
    dataset.set_epoch(0)
    items = [dataset[i] for i in range(len(samples))]
    received = 0
    for images, masks in seen:
        for image, mask in zip(images, masks):
            (match,) = [item for item in items if torch.equal(item["image"], image)]
            assert torch.equal(mask, match["mask"])
            received += 1
    assert received == len(samples)


# --- the command line -----------------------------------------------------------------------------------------

def train_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--backbone", "tiny-vit", "--device", "cpu", "--learner", "coop", "--n-ctx", "2",
            "--data", f"imagefolder:{root / 'train'}", "--shots", "1", "--epochs", "1", "--selection", "last",
            "--no-eval", "--out", str(out), *extra]


@pytest.mark.parametrize("extra,named", [
    (["--dapt", "gradcam", "--cue-method", "gradcamm"], "--cue-method: invalid choice: 'gradcamm'"),
    (["--dapt", "mask", "--masks", "m", "--cue-method", "legrad"], "--dapt mask does not use one"),
    (["--cue-method", "legrad"], "--dapt off does not use one"),
])
def test_bad_cue_methods_are_refused_before_anything_loads(folder, tmp_path, capsys, nothing_loads, extra, named):
    try:
        code = main(train_args(folder, tmp_path / "p.safetensors", *extra))
    except SystemExit as exit_info:  # argparse refuses a name that is not a choice
        code = exit_info.code
    assert code == 2
    assert named in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_parser_offers_every_method():
    parser = argparse.ArgumentParser()
    train_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(train_args(Path("r"), Path("o.safetensors"), "--dapt", "gradcam"))
    assert args.cue_method is None and train_command._dapt_config(args).cam_method == "gradcam"
    for method in CAM_METHODS:
        args = parser.parse_args(train_args(Path("r"), Path("o.safetensors"), "--dapt", "gradcam",
                                            "--cue-method", method))
        assert train_command._dapt_config(args).cam_method == method


def test_train_records_the_cue_method_in_the_prompt_set(folder, tmp_path):
    out = tmp_path / "p.safetensors"
    assert main(train_args(folder, out, "--dapt", "gradcam", "--schedule", "joint", "--cue-method", "eigencam")) == 0
    info = read_info(out)
    assert info.meta["dapt"]["cam_method"] == "eigencam"
    assert info.dapt_config == DaptConfig(cue="gradcam", schedule="joint", cam_method="eigencam")


# --- the prompt set's metadata ------------------------------------------------------------------------------------

def _rewrite_dapt(path: Path, change) -> None:
    """Rewrites the prompt set's recorded DAPT settings with ``change(dict)`` (as an older or edited file)."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(meta["dapt"])
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})


def test_the_metadata_round_trips_and_an_old_set_reads_as_gradcam(tiny_backbone, tmp_path):
    learner = build_learner("coop", tiny_backbone, CLASSES, n_ctx=2)
    dapt = DaptConfig(cue="gradcam", cam_method="legrad", cam_threshold=0.6, background_words=("sky", "sea"))
    path = save_prompt_set(learner, tmp_path / "p.safetensors", dapt=dapt)
    assert read_info(path).dapt_config == dapt
    _rewrite_dapt(path, lambda d: d.pop("cam_method"))  # written before the cue method was recorded
    old = read_info(path).dapt_config
    assert old.cam_method == "gradcam" and old.cam_threshold == 0.6 and old.background_words == ("sky", "sea")
    plain = save_prompt_set(learner, tmp_path / "plain.safetensors")
    assert read_info(plain).dapt_config is None


@pytest.mark.parametrize("value,message", [
    (5, "dapt.cam_method is an integer 5; it must be a string"),
    ("no-such-map", "recorded DAPT settings are not valid: unknown DAPT cue method 'no-such-map'"),
])
def test_a_bad_recorded_cue_method_is_refused_naming_it(tiny_backbone, tmp_path, value, message):
    learner = build_learner("coop", tiny_backbone, CLASSES, n_ctx=2)
    path = save_prompt_set(learner, tmp_path / "p.safetensors", dapt=DaptConfig(cue="gradcam"))
    _rewrite_dapt(path, lambda d: d.update(cam_method=value))
    with pytest.raises(CheckpointError, match=message):
        read_info(path).dapt_config  # noqa: B018


# --- the grid -----------------------------------------------------------------------------------------------------

GRID = {"setting": "few_shot", "datasets": ["imagefolder:/nowhere/pets"], "methods": ["coop", "coop+dapt-g"],
        "shots": [1], "seeds": [1], "backbone": "tiny-vit", "device": "cpu", "train": {"epochs": 1}}


def test_a_grid_passes_the_cue_method_to_its_dapt_cells_and_refuses_a_bad_one(tmp_path):
    cells = expand(parse_config({**GRID, "dapt": {"cam_method": "legrad"}}), tmp_path)
    assert {c.method: c.dapt.get("cam_method") for c in cells} == {"coop": None, "coop+dapt-g": "legrad"}
    with pytest.raises(GridConfigError, match="grid config dapt: unknown DAPT cue method 'legrd'"):
        parse_config({**GRID, "dapt": {"cam_method": "legrd"}})


def test_a_cell_finished_before_the_cue_method_was_recorded_still_counts(tmp_path):
    (plain, dapt_cell) = expand(parse_config(GRID), tmp_path)
    assert dapt_cell.dapt["cam_method"] == "gradcam"
    for cell in (plain, dapt_cell):
        identity = cell.identity()
        identity["dapt"].pop("cam_method", None)  # as a cell of an earlier version recorded it
        Path(cell.folder).mkdir(parents=True)
        (Path(cell.folder) / METRICS_FILE).write_text(json.dumps(
            {"format": CELL_FORMAT, "identity": identity, "metrics": {"accuracy": 50.0}}))
    assert plan([plain, dapt_cell]) == ([plain, dapt_cell], [])
    assert read_finished(dapt_cell)["identity"] == dapt_cell.identity()
    # a cell of the same grid with another cue method is another run: refused, naming the field
    other = expand(parse_config({**GRID, "dapt": {"cam_method": "legrad"}}), tmp_path)[1]
    with pytest.raises(GridConfigError, match=r"dapt\.cam_method: 'gradcam' there, 'legrad' now"):
        plan([other])


# --- names and resumption: a cue from another map is named, and a run from before the field resumes ----------

@pytest.mark.parametrize("dapt,label", [
    (DaptConfig(cue="gradcam"), "CoOp + DAPT (gradcam)"),
    (DaptConfig(cue="gradcam", cam_method="legrad"), "CoOp + DAPT (legrad cue)"),
    (DaptConfig(cue="mask", cam_method="legrad"), "CoOp + DAPT (mask)"),  # the fine cue reads no map
    (None, "CoOp"),
])
def test_a_prompt_set_label_names_a_cue_taken_from_another_map(tiny_backbone, tmp_path, dapt, label):
    learner = build_learner("coop", tiny_backbone, CLASSES, n_ctx=2)
    assert read_info(save_prompt_set(learner, tmp_path / "p.safetensors", dapt=dapt)).label == label


def test_a_training_state_written_before_the_cue_method_resumes_only_as_gradcam(tmp_path):
    from dapt_core.run_state import RunMismatchError, TrainState, load_state, save_state

    current = {"learner": "coop", "dapt.cue": "gradcam", "dapt.cam_method": "gradcam"}
    path = tmp_path / "run.state.pt"
    save_state(path, TrainState({"learner": "coop", "dapt.cue": "gradcam"}, {"ctx": torch.zeros(2, 4)}, {}, 0, [],
                                torch.get_rng_state()))
    assert load_state(path, current, torch.device("cpu")).epoch == 0
    with pytest.raises(RunMismatchError, match=r'dapt\.cam_method: "gradcam" -> "legrad"'):
        load_state(path, {**current, "dapt.cam_method": "legrad"}, torch.device("cpu"))


def test_grid_tables_name_a_cue_from_another_map_and_keep_the_paper_row_for_grad_cam_only():
    from dapt_core.grid.methods import get_method, method_of

    assert method_of("maple+dapt-g", {}) == get_method("maple+dapt-g")
    assert method_of("maple+dapt-g", {"cam_method": "gradcam"}).published == "DAPT-G"
    other = method_of("maple+dapt-g", {"cam_method": "legrad"})
    assert (other.title, other.published, other.cue) == ("MaPLe + DAPT-G (legrad cue)", None, "gradcam")
    assert method_of("maple+dapt-s", {"cam_method": "legrad"}) == get_method("maple+dapt-s")
    assert method_of("maple", {"cam_method": "legrad"}).title == "MaPLe"


def test_a_grid_with_another_cue_map_shows_its_own_title_and_no_paper_row_beneath_it():
    from dapt_core.grid import aggregate

    grid = {**GRID, "setting": "base_to_novel", "methods": ["maple", "maple+dapt-g"], "shots": [16]}
    rows = lambda cfg: [r.label for r in aggregate.build_tables(cfg, [], ["pets"])[0].rows]  # noqa: E731
    assert rows(parse_config(grid)) == ["MaPLe", "MaPLe (published)", "MaPLe + DAPT-G", "DAPT-G (published)",
                                        "zero-shot CLIP (published)", "CoOp (published)", "DAPT-S (published)"]
    assert rows(parse_config({**grid, "dapt": {"cam_method": "legrad"}})) == [
        "MaPLe", "MaPLe (published)", "MaPLe + DAPT-G (legrad cue)", "zero-shot CLIP (published)",
        "CoOp (published)", "DAPT-G (published)", "DAPT-S (published)"]
