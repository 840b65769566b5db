"""The library's one error type: every error class derives from it (keeping its old bases), the CLI shows it as
one line with exit status 2, the app as a plain message without server paths; prompt-set metadata is checked
against its schema, each bad field named."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil

import pytest
from safetensors.torch import load_file, save_file

import dapt_core
from dapt_core.app_support.errors import INTERNAL_ERROR, hide_paths, user_message
from dapt_core.checkpoint import METADATA_KEY, CheckpointError, load_prompt_set, read_info, save_prompt_set
from dapt_core.cli import main
from dapt_core.errors import DaptError, os_error_message
from dapt_core.learners import build_learner
from dapt_core.prompt_meta import SCHEMA, metadata_problems

CLASSES = ["red square", "green circle", "blue star"]
# The error classes of the library and the built-in base each had before DaptError, which it keeps.
ERROR_CLASSES = {
    "dapt_core.data.records.DataError": ValueError,
    "dapt_core.checkpoint.CheckpointError": ValueError,
    "dapt_core.imageio.ImageInputError": ValueError,
    "dapt_core.analysis.AnalysisError": ValueError,
    "dapt_core.learners.base.PromptError": ValueError,
    "dapt_core.backbones.BackboneError": ValueError,
    "dapt_core.segment.base.SegmentationError": ValueError,
    "dapt_core.run_state.RunMismatchError": ValueError,
    "dapt_core.selection.SelectionError": ValueError,
    "dapt_core.weights.resolve.WeightsNotFoundError": FileNotFoundError,
    "dapt_core.weights.resolve.WeightsIntegrityError": ValueError,
    "dapt_core.weights.registry.UnknownWeightsError": ValueError,
    "dapt_core.weights.safe_load.UnsafeCheckpointError": ValueError,
    "dapt_core.official.UnsafePickleError": ValueError,
    "dapt_core.app_support.uploads.UploadError": ValueError,
    "dapt_core.grid.errors.GridConfigError": ValueError,
    "dapt_core.attention.capture.AttentionCaptureError": ValueError,
    "dapt_core.world.shapes.UnknownClassError": ValueError,
}


def _resolve(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("dotted", sorted(ERROR_CLASSES))
def test_every_error_class_is_a_dapt_error_and_keeps_its_old_base(dotted):
    cls = _resolve(dotted)
    assert issubclass(cls, DaptError) and issubclass(cls, ERROR_CLASSES[dotted])


def test_no_error_class_of_the_package_is_left_out():
    """Every exception class defined in dapt_core for bad input is listed above (so it is checked)."""
    found = set()
    for info in pkgutil.walk_packages(dapt_core.__path__, "dapt_core."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name:
                found.add(f"{info.name}.{name}")
    # not bad input: a cancelled run, a full training queue (shown as is), the grid's worker failures
    not_input = {n for n in found if n.endswith(("TrainingCancelled", "QueueFullError"))}
    missing = {n for n in found - not_input - set(ERROR_CLASSES) if not issubclass(_resolve(n), DaptError)}
    assert not missing, f"error classes that do not derive from DaptError: {sorted(missing)}"


def test_os_error_message_is_one_plain_line():
    err = OSError(28, "No space left on device", "/data/p.safetensors")
    assert os_error_message(err) == "No space left on device: /data/p.safetensors"
    assert os_error_message(PermissionError(13, "Permission denied")) == "Permission denied"


def test_cli_shows_a_dapt_error_as_one_line_with_status_2(tmp_path, capsys, monkeypatch):
    from dapt_core.cli import weights as weights_command

    def refuse(args):
        raise CheckpointError("p.safetensors: first line\nsecond line")
    monkeypatch.setattr(weights_command, "run_list", refuse)
    assert main(["weights", "list"]) == 2
    err = capsys.readouterr().err
    assert err == "error: p.safetensors: first line second line\n"


def test_cli_shows_an_os_error_as_one_line_with_status_1(capsys, monkeypatch):
    from dapt_core.cli import weights as weights_command

    def disk_full(args):
        raise OSError(28, "No space left on device", "out/p.safetensors")
    monkeypatch.setattr(weights_command, "run_list", disk_full)
    assert main(["weights", "list"]) == 1
    assert capsys.readouterr().err == "error: No space left on device: out/p.safetensors\n"


def test_cli_keeps_the_traceback_of_a_fault(monkeypatch):
    from dapt_core.cli import weights as weights_command

    def bug(args):
        raise ZeroDivisionError("a bug, not bad input")
    monkeypatch.setattr(weights_command, "run_list", bug)
    with pytest.raises(ZeroDivisionError):
        main(["weights", "list"])


def test_cli_verbose_logs_the_traceback(capsys, caplog, monkeypatch):
    from dapt_core.cli import weights as weights_command

    def refuse(args):
        raise CheckpointError("bad file")
    monkeypatch.setattr(weights_command, "run_list", refuse)
    with caplog.at_level("DEBUG", logger="dapt_core"):
        assert main(["-v", "weights", "list"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("error: bad file")
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [CheckpointError]


def test_app_shows_dapt_errors_without_server_paths():
    err = DaptError("cat.png is not a readable image (cannot identify image file '/tmp/gradio/9f1c/cat.png')")
    assert user_message(err) == "cat.png is not a readable image (cannot identify image file 'cat.png')"
    assert user_message(FileNotFoundError(2, "No such file or directory", "/srv/app/user/x.png")) == \
        "No such file or directory: x.png"
    assert user_message(PermissionError(13, "Permission denied", "/srv/app/user/x.png")) is None  # the server's
    assert user_message(RuntimeError("/tmp/x/y failed")) is None  # a fault: the app shows INTERNAL_ERROR
    assert "/" not in INTERNAL_ERROR


@pytest.mark.parametrize("text,shown", [
    ("see /home/bob/project/checkpoints/prompts/a.safetensors now", "see a.safetensors now"),
    ("C:\\Users\\bob\\cat.png is broken", "cat.png is broken"),
    ("choose cpu/cuda or a 1/2 split", "choose cpu/cuda or a 1/2 split"),
    ("folder /tmp/gradio/ is gone", "folder (folder) is gone"),
])
def test_hide_paths(text, shown):
    assert hide_paths(text) == shown


# --- prompt-set metadata -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_backbone):
    path = tmp_path_factory.mktemp("meta") / "p.safetensors"
    return save_prompt_set(build_learner("coop", tiny_backbone, CLASSES, n_ctx=2), path)


def _with_meta(src, dst, meta):
    save_file(load_file(str(src)), str(dst), metadata={METADATA_KEY: json.dumps(meta)})
    return dst


def test_metadata_written_by_the_library_fits_the_schema(saved):
    meta = read_info(saved).meta
    assert metadata_problems(meta) == []
    assert set(SCHEMA) <= set(meta)  # the writer writes every field the schema knows


@pytest.mark.parametrize("change,named", [
    (lambda m: [m], "the metadata is a list"),
    (lambda m: {**m, "format_version": "1"}, "'format_version' is a string '1'"),
    (lambda m: {**m, "format_version": True}, "'format_version' is true or false"),
    (lambda m: {**m, "learner_options": None}, "'learner_options' is null"),
    (lambda m: {**m, "classnames": "dog"}, "'classnames' is a string 'dog'"),
    (lambda m: {**m, "classnames": ["dog"]}, "classnames holds 1 name(s)"),
    (lambda m: {**m, "classnames": ["dog", 3]}, "classnames[1] is an integer 3"),
    (lambda m: {**m, "classnames": ["dog", "  "]}, "classnames[1] is a string '  '"),
    (lambda m: {k: v for k, v in m.items() if k != "classnames"}, "field 'classnames'"),
    (lambda m: {**m, "learner": "clip-adapter"}, "learner is 'clip-adapter', not one of coop, maple"),
    (lambda m: {**m, "learner_options": {"n_ctx": "2"}}, "learner_options.n_ctx is a string '2'"),
    (lambda m: {**m, "learner_options": {"n_ctx": 2.5}}, "learner_options.n_ctx is a number 2.5"),
    (lambda m: {**m, "learner_options": {"depth": 3}}, "learner_options.depth is no option of coop"),
    (lambda m: {**m, "dapt": {"cue": 1}}, "dapt.cue is an integer 1"),
    (lambda m: {**m, "text_width": "64"}, "'text_width' is a string '64'"),
    (lambda m: {**m, "metrics": [90.0]}, "'metrics' is a list"),
    (lambda m: {**m, "backbone": None}, "'backbone' is null"),
])
def test_bad_metadata_is_refused_naming_the_field(saved, tmp_path, tiny_backbone, change, named):
    bad = _with_meta(saved, tmp_path / "bad.safetensors", change(read_info(saved).meta))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError) as caught:
        read_info(bad)
    assert named in str(caught.value) and "bad.safetensors" in str(caught.value)
    with pytest.raises(CheckpointError):
        load_prompt_set(bad, tiny_backbone)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_newer_format_version_says_to_update(saved, tmp_path):
    meta = dict(read_info(saved).meta, format_version=99)
    with pytest.raises(CheckpointError, match="version 99 is newer"):
        read_info(_with_meta(saved, tmp_path / "new.safetensors", meta))


def test_options_of_the_right_type_that_cannot_build_a_learner(saved, tmp_path, tiny_backbone):
    meta = read_info(saved).meta
    meta["learner_options"]["n_ctx"] = -3
    path = _with_meta(saved, tmp_path / "neg.safetensors", meta)
    read_info(path)  # the types fit
    with pytest.raises(CheckpointError, match="cannot be built from its metadata"):
        load_prompt_set(path, tiny_backbone)


def test_cli_refuses_bad_metadata_in_one_line(saved, tmp_path, capsys):
    bad = _with_meta(saved, tmp_path / "bad.safetensors", dict(read_info(saved).meta, classnames="dog"))
    assert main(["eval", "--prompts", str(bad), "--data", f"imagefolder:{tmp_path}", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: bad.safetensors has metadata") and "'classnames'" in err[-1]
