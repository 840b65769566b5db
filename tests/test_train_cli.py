"""`python -m dapt_core train`: settings refused before anything loads, vocabulary and schedule options,
model selection in the metadata, and resuming only the same run."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from dapt_core.backgrounds import VOCABULARIES
from dapt_core.checkpoint import read_info
from dapt_core.cli import main
from dapt_core.cli import train as train_command
from dapt_core.objective import SCHEDULES
from dapt_core.train import SELECTIONS

CLASSES = ("red", "green", "blue")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train/val/test image folders of three coloured-square classes, and a mask tree beside them."""
    root = tmp_path_factory.mktemp("cli-data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        for c, name in enumerate(CLASSES):
            (root / "data" / split / name).mkdir(parents=True)
            (root / "masks" / split / name).mkdir(parents=True)
            for i in range(n):
                image = (rng.random((32, 32, 3)) * 60).astype(np.uint8)
                image[8:24, 8:24, c] = 250
                mask = np.zeros((32, 32), np.uint8)
                mask[8:24, 8:24] = 255
                Image.fromarray(image).save(root / "data" / split / name / f"{i}.png")
                Image.fromarray(mask).save(root / "masks" / split / name / f"{i}.png")
    return root


def train_args(data, out, *extra):
    return ["train", "--backbone", "tiny-vit", "--device", "cpu", "--learner", "coop", "--n-ctx", "2",
            "--data", f"imagefolder:{data / 'data'}", "--shots", "2", "--epochs", "2", "--out", str(out), *extra]


@pytest.mark.parametrize("extra,named", [
    (["--epochs", "0"], "epochs"), (["--shots", "-5"], "shots"), (["--batch-size", "0"], "batch_size"),
    (["--lr", "-1"], "lr"), (["--dapt", "mask", "--masks", "m", "--switch-epoch", "-1"], "switch_epoch"),
    (["--schedule", "joint", "--switch-epoch", "3"], "--switch-epoch"),
    (["--background-words", "no-such-file.txt"], "neither a preset"),
])
def test_bad_settings_are_refused_before_anything_loads(data, tmp_path, capsys, nothing_loads, extra, named):
    out = tmp_path / "p.safetensors"
    assert main(train_args(data, out, *extra)) == 2
    assert named in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_parser_choices_match_the_library():
    assert set(train_command.MODEL_SELECTIONS) == set(SELECTIONS)
    assert "scaled" in SCHEDULES and set(VOCABULARIES) == {"official", "generic"}


def _meta(out):
    return read_info(out).meta


def test_best_val_and_vocabulary_are_recorded(data, tmp_path, capsys):
    words = tmp_path / "words.txt"
    words.write_text("sand\nsnow\nbrick wall\n", encoding="utf-8")
    out = tmp_path / "p.safetensors"
    assert main(train_args(data, out, "--dapt", "mask", "--masks", str(data / "masks"), "--schedule", "joint",
                           "--background-words", str(words))) == 0
    meta = _meta(out)
    history = meta["train"]["history"]
    assert meta["dapt"]["background_words"] == ["sand", "snow", "brick wall"]
    assert meta["train"]["n_val"] == 2 * len(CLASSES)  # min(shots, 4) validation images per class
    best = max(history, key=lambda h: h["val_accuracy"])
    assert meta["train"]["selected"] == {"rule": "best_val", "epoch": best["epoch"],
                                         "val_accuracy": best["val_accuracy"]}
    assert meta["train"]["unreached_terms"] == [] and meta["train"]["selection"] == "best_val"


def test_official_schedule_in_a_short_run_records_what_it_never_uses(data, tmp_path, caplog):
    out = tmp_path / "p.safetensors"
    with caplog.at_level(logging.WARNING, logger="dapt_core"):
        assert main(train_args(data, out, "--dapt", "mask", "--masks", str(data / "masks"),
                               "--background-words", "generic", "--selection", "last")) == 0
    meta = _meta(out)
    assert meta["train"]["unreached_terms"] == ["foreground", "background"]
    assert "never uses the foreground, background" in caplog.text
    assert all("background" not in h for h in meta["train"]["history"])
    assert meta["dapt"]["background_words"] == list(VOCABULARIES["generic"])
    assert meta["train"]["selected"] == {"rule": "last", "epoch": 1}


def test_without_a_validation_split_the_last_epoch_is_kept_and_said(data, tmp_path):
    out = tmp_path / "p.safetensors"
    flat = tmp_path / "flat"
    for name in CLASSES:  # train and test only
        for split in ("train", "test"):
            (flat / split / name).mkdir(parents=True)
            for src in (data / "data" / split / name).iterdir():
                (flat / split / name / src.name).write_bytes(src.read_bytes())
    argv = train_args(data, out)
    argv[argv.index(f"imagefolder:{data / 'data'}")] = f"imagefolder:{flat}"
    assert main(argv) == 0
    assert _meta(out)["train"]["selected"] == {"rule": "last", "epoch": 1, "requested": "best_val",
                                               "reason": "no validation images"}


def test_resume_refuses_another_run_and_restart_starts_over(data, tmp_path, capsys, monkeypatch):
    from dapt_core import checkpoint

    out = tmp_path / "p.safetensors"
    state = tmp_path / "p.safetensors.state.pt"
    real_save = checkpoint.save_prompt_set

    def fail(*args, **kwargs):
        raise ValueError("disk full")
    monkeypatch.setattr(checkpoint, "save_prompt_set", fail)
    assert main(train_args(data, out, "--seed", "1")) == 2  # trained, not saved: the state file stays
    assert state.exists() and not out.exists()
    monkeypatch.setattr(checkpoint, "save_prompt_set", real_save)
    capsys.readouterr()
    before = state.read_bytes()
    assert main(train_args(data, out, "--seed", "2", "--lr", "0.01")) == 2
    err = capsys.readouterr().err
    assert "train.seed: 1 -> 2" in err and "train.lr: 0.0035 -> 0.01" in err and "--restart" in err
    assert state.read_bytes() == before and not out.exists()
    assert main(train_args(data, out, "--seed", "2", "--lr", "0.01", "--restart")) == 0
    meta = _meta(out)
    assert (meta["train"]["seed"], meta["train"]["lr"]) == (2, 0.01) and not state.exists()
    assert [h["epoch"] for h in meta["train"]["history"]] == [0, 1]
    json.loads(capsys.readouterr().out.strip().splitlines()[-1])
