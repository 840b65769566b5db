"""``bench attention`` end to end on a tiny random backbone: arguments to config, files written, last line."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from dapt_core.checkpoint import save_prompt_set
from dapt_core.cli.bench_attention import add_attention_parser
from dapt_core.learners import build_learner
from dapt_core.world.shapes import OBJECT_CLASSES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_attention_parser(parser.add_subparsers(dest="bench_command", required=True))
    return parser


def test_bench_attention_writes_the_report_and_prints_the_means(tiny_backbone, tmp_path, capsys):
    prompts = []
    for kind in ("coop", "maple"):
        torch.manual_seed(2)
        path = tmp_path / f"{kind}.safetensors"
        save_prompt_set(build_learner(kind, tiny_backbone, list(OBJECT_CLASSES[:2])), path)
        prompts.append(str(path))
    args = _parser().parse_args(["attention", "--backbone", "tiny-vit", "--device", "cpu", "--prompts", *prompts,
                                 "--seed", "3", "4", "--per-class", "1", "--methods", "gradcam", "relevance",
                                 "--steps", "2", "--out", str(tmp_path / "out"), "--name", "tiny"])
    assert args.func(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    stored = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert stored["config"]["seeds"] == [3, 4] and stored["config"]["methods"] == ["gradcam", "relevance"]
    assert line["seeds"] == [3, 4] and set(line["methods"]) == {"gradcam", "relevance"}
    assert line["n_scenes"] == stored["n_scenes"] == 2
    assert (tmp_path / "out" / "tiny.md").exists() and (tmp_path / "out" / "tiny.png").exists()


def test_bench_attention_refuses_unknown_methods_and_bad_threads(tmp_path):
    with pytest.raises(SystemExit):
        _parser().parse_args(["attention", "--methods", "saliency"])
    args = _parser().parse_args(["attention", "--threads", "0", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        args.func(args)
    assert not any(tmp_path.iterdir())
