"""The command line's shape: a light parser, choices that match the library's registries, exit codes."""

import argparse
import inspect
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from PIL import Image

from dapt_core import constants
from dapt_core.cli import COMMANDS, HEAVY_MODULES, build_parser, common, main
from dapt_core.cli import synth as cli_synth

PROJECT_DIR = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser, nested ones included: ("train",), ("weights", "list"), ..."""
    paths = []
    for name, sub in _subparsers(parser).items():
        paths.append(prefix + (name,))
        paths.extend(command_paths(sub, prefix + (name,)))
    return paths


def _parser_of(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        parser = _subparsers(parser)[name]
    return parser


def _option(path: tuple[str, ...], flag: str) -> argparse.Action:
    return next(a for a in _parser_of(path)._actions if flag in a.option_strings)


PATHS = command_paths(build_parser())

# Builds the parser and asks every command for its help, then names the heavy modules that got imported.
_PROBE = """
import contextlib, io, json, sys
from dapt_core.cli import HEAVY_MODULES, build_parser
for path in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args([*path, "--help"])
        except SystemExit:
            pass
print(json.dumps([m for m in HEAVY_MODULES if m in sys.modules]))
"""


def test_building_the_parser_and_every_help_imports_nothing_heavy():
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps([[], *PATHS])], capture_output=True, text=True,
                          check=True, cwd=PROJECT_DIR)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert {"torch", "open_clip", "pytorch_grad_cam", "gradio", "matplotlib", "cv2"} <= set(HEAVY_MODULES)


def test_the_heavy_probe_sees_a_heavy_import():
    # the same probe, after one import a command module might make at its top, must report it
    code = _PROBE.replace("from dapt_core.cli import", "import PIL.Image\nfrom dapt_core.cli import")
    done = subprocess.run([sys.executable, "-c", code, json.dumps([["train"]])], capture_output=True, text=True,
                          check=True, cwd=PROJECT_DIR)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["PIL"]


def test_python_m_dapt_core_lists_every_command_and_needs_one():
    ok = subprocess.run([sys.executable, "-m", "dapt_core", "--help"], capture_output=True, text=True,
                        cwd=PROJECT_DIR)
    assert ok.returncode == 0
    listed = re.search(r"\{([a-z,-]+)\}", ok.stdout).group(1).split(",")
    assert listed == [path[0] for path in PATHS if len(path) == 1] == list(_subparsers(build_parser()))
    assert len(listed) == len(COMMANDS)
    bare = subprocess.run([sys.executable, "-m", "dapt_core"], capture_output=True, text=True, cwd=PROJECT_DIR)
    assert bare.returncode == 2 and "required" in bare.stderr and bare.stdout == ""


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_every_command_has_help(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith(f"usage: python -m dapt_core {' '.join(path)}")


def test_every_leaf_command_runs_something():
    leaves = [p for p in PATHS if not _subparsers(_parser_of(p))]
    for path in leaves:
        func = _parser_of(path)._defaults.get("func")
        assert callable(func) and func.__module__.startswith("dapt_core.cli."), path


def test_light_choices_match_the_library_registries():
    from dapt_core.attention.cam import CAM_METHODS
    from dapt_core.data.folders import subsample_classes
    from dapt_core.learners import LEARNERS
    from dapt_core.minclip.pretrain import ATTENTION
    from dapt_core.objective import CUES, SCHEDULES

    assert common.CAM_METHOD_NAMES == tuple(CAM_METHODS)
    assert common.LEARNER_NAMES == tuple(LEARNERS)
    assert common.DAPT_CUES == CUES
    # the command line offers a subset of the library's schedules (the flags that expose the rest come apart)
    assert common.DAPT_SCHEDULES and set(common.DAPT_SCHEDULES) <= set(SCHEDULES)
    assert common.SUBSAMPLES == typing.get_args(typing.get_type_hints(subsample_classes)["which"])
    assert cli_synth.ATTENTION_KERNELS == tuple(ATTENTION)
    # and the parser offers exactly those
    assert tuple(_option(("analyze",), "--cam").choices) == tuple(sorted(CAM_METHODS))
    assert tuple(_option(("train",), "--learner").choices) == tuple(LEARNERS)
    assert tuple(_option(("import-official",), "--learner").choices) == ("auto", *LEARNERS)
    assert tuple(_option(("train",), "--dapt").choices) == CUES
    assert tuple(_option(("bench", "synth"), "--schedule").choices) == common.DAPT_SCHEDULES
    assert tuple(_option(("train",), "--schedule").choices) == common.DAPT_SCHEDULES
    assert tuple(_option(("synth", "pretrain"), "--attention").choices) == tuple(ATTENTION)


def test_pretrain_positives_are_what_the_loss_accepts():
    import torch

    from dapt_core.minclip.losses import clip_loss

    feats = torch.eye(2)
    for positives in _option(("synth", "pretrain"), "--positives").choices:
        assert torch.isfinite(clip_loss(feats, feats, torch.tensor(1.0), positives=positives))
    with pytest.raises(ValueError, match="positives"):
        clip_loss(feats, feats, torch.tensor(1.0), positives="every")


def test_synth_defaults_are_the_recipe_and_the_evaluation_defaults():
    from dapt_core.minclip import config, pretrain
    from dapt_core.minclip.zeroshot import evaluate_backbone

    assert pretrain.PretrainConfig is config.PretrainConfig  # one recipe, not two that can drift apart
    args = build_parser().parse_args(["synth", "pretrain"])
    recipe = config.PretrainConfig()
    fields = {"seed": "seed", "steps": "steps", "batch_size": "batch_size", "lr": "lr", "warmup": "warmup_steps",
              "group_size": "group_size", "positives": "positives", "probe_head_weight": "probe_head_weight",
              "class_caption_weight": "class_caption_weight", "model": "model_name", "eval_every": "eval_every",
              "threads": "threads", "precision": "precision", "attention": "attention"}
    assert {flag: getattr(args, flag) for flag in fields} == {flag: getattr(recipe, f) for flag, f in fields.items()}
    zs = build_parser().parse_args(["synth", "zeroshot"])
    assert zs.seed == inspect.signature(evaluate_backbone).parameters["seed"].default


def test_switch_epoch_help_states_what_an_omitted_flag_gives():
    from dapt_core.experiments.background_shift import quick_config
    from dapt_core.objective import DaptConfig

    train_help = _option(("train",), "--switch-epoch").help
    assert int(re.search(r"\(default (\d+)\)", train_help).group(1)) == DaptConfig().switch_epoch
    bench = build_parser().parse_args(["bench", "synth"])
    switch, of = map(int, re.search(r"i\.e\. (\d+) of (\d+)", _option(("bench", "synth"), "--switch-epoch").help)
                     .groups())
    assert of == bench.epochs and switch == quick_config(1, epochs=bench.epochs).effective_switch_epoch


def test_zero_shot_words_in_the_help_are_the_learners_zero_shot_words():
    assert f"'{constants.ZERO_SHOT_CONTEXT}'" in _option(("train",), "--ctx-init").help
    assert f"'{constants.ZERO_SHOT_CONTEXT} <class>.'" in _option(("masks",), "--prompts").help


def test_bad_input_is_exit_status_2_with_a_message(tmp_path, capsys):
    missing = tmp_path / "nowhere.safetensors"
    assert main(["eval", "--prompts", str(missing), "--data", f"imagefolder:{tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err
    for name in ("circle", "star"):
        for split in ("train", "test"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / "data" / split / name / "0.png")
    assert main(["masks", "--data", f"imagefolder:{tmp_path / 'data'}", "--out", str(tmp_path / "m"),
                 "--segmenter", "cam", "--cam-method", "scorecam"]) == 2
    assert capsys.readouterr().err == (f"error: unknown --cam-method 'scorecam'; choose from "
                                       f"{', '.join(common.CAM_METHOD_NAMES)}\n")
    assert not (tmp_path / "m").exists()


def test_weights_list_prints_every_backbone(capsys):
    from dapt_core.backbones import list_backbones

    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.split("\nbackbones:\n")[1].splitlines() if line.strip()]
    assert listed == [b.name for b in list_backbones()]
