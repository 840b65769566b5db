"""Start-up as a Hugging Face Space: persistent storage for prompt sets and the weights cache, and ZeroGPU's
decorator on the handlers that run the model (a fake ``spaces`` module stands in for the real one)."""

from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import pytest
import torch

import app
from dapt_core import space
from dapt_core.app_support import zerogpu
from dapt_core.checkpoint import save_prompt_set
from dapt_core.learners import build_learner

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square", "triangle"]
GPU_HANDLERS = {"compare": zerogpu.COMPARE_GPU_S, "upload_prompt_set": zerogpu.UPLOAD_GPU_S,
                "make_masks": zerogpu.MASKS_GPU_S}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "DAPT_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
STARTUP_TIMEOUT_S = 240.0

# The fake ``spaces`` package: GPU(duration=...) wraps a function (a generator stays a generator), marks the
# wrapper with the duration and, when LOG is set, appends a line per call to that file; when FACTS is set,
# it writes where the process keeps the weights cache and the user prompt sets there.
FAKE_SPACES = '''
import functools, inspect, json, sys
LOG = FACTS = None
def _note(fn):
    if LOG:
        with open(LOG, "a") as f:
            f.write(fn.__name__ + "\\n")
def GPU(task=None, *, duration=None, size=None):
    if FACTS:  # what the process uses once everything is imported
        with open(FACTS, "w") as f:
            json.dump({"hf_hub_cache": sys.modules["huggingface_hub"].constants.HF_HUB_CACHE,
                       "user_prompts": str(sys.modules["dapt_core.app_support.startup"].USER_PROMPT_DIR)}, f)
    def decorate(fn):
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                _note(fn)
                yield from fn(*args, **kwargs)
        else:
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                _note(fn)
                return fn(*args, **kwargs)
        wrapper.fake_gpu_duration = duration
        return wrapper
    return decorate if task is None else decorate(task)
'''


def fake_spaces(log: Path | None = None) -> types.ModuleType:
    module = types.ModuleType("spaces")
    exec(FAKE_SPACES, module.__dict__)
    module.LOG = str(log) if log else None
    return module


# --- prepare_space -----------------------------------------------------------------------------------------

def test_off_a_space_nothing_is_set(tmp_path):
    environ = {"DAPT_SPACE_DATA": str(tmp_path)}
    setup = space.prepare_space(environ)
    assert not setup.on_space and setup.data_dir is None and setup.environ == {}
    assert environ == {"DAPT_SPACE_DATA": str(tmp_path)}
    assert list(tmp_path.iterdir()) == []


def test_on_a_space_prompt_sets_and_the_weights_cache_go_to_persistent_storage(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # not installed
    environ = {"SPACE_ID": "someone/dapt-lab"}
    setup = space.prepare_space(environ, data_dir=tmp_path)
    prompts, hf_home = tmp_path / "dapt" / "user-prompts", tmp_path / ".huggingface"
    assert environ == {"SPACE_ID": "someone/dapt-lab", "DAPT_USER_PROMPTS": str(prompts), "HF_HOME": str(hf_home)}
    assert setup.environ == {"DAPT_USER_PROMPTS": str(prompts), "HF_HOME": str(hf_home)}
    assert setup.data_dir == tmp_path and setup.space_id == "someone/dapt-lab" and not setup.spaces_package
    assert prompts.is_dir() and hf_home.is_dir()
    assert setup.describe() == (f"Space someone/dapt-lab: persistent storage at {tmp_path}; "
                                f"DAPT_USER_PROMPTS={prompts}, HF_HOME={hf_home}")


def test_the_data_folder_comes_from_the_config_hook_and_the_owners_variables_win(tmp_path):
    environ = {"SPACE_ID": "someone/dapt-lab", "DAPT_SPACE_DATA": str(tmp_path), "HF_HOME": "/elsewhere/hf"}
    setup = space.prepare_space(environ)
    assert environ["HF_HOME"] == "/elsewhere/hf" and setup.kept == {"HF_HOME": "/elsewhere/hf"}
    assert environ["DAPT_USER_PROMPTS"] == str(tmp_path / "dapt" / "user-prompts")
    assert not (tmp_path / ".huggingface").exists()


def test_a_space_without_persistent_storage_keeps_the_defaults(tmp_path):
    environ = {"SPACE_ID": "someone/dapt-lab"}
    setup = space.prepare_space(environ, data_dir=tmp_path / "no-volume")
    assert environ == {"SPACE_ID": "someone/dapt-lab"} and setup.data_dir is None and setup.on_space
    assert "no persistent storage" in setup.describe() and "lost when the Space restarts" in setup.describe()


def test_the_spaces_package_is_imported_at_start_up_when_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", fake_spaces())
    assert space.prepare_space({"SPACE_ID": "someone/dapt-lab"}, data_dir=tmp_path).spaces_package
    assert space.prepare_space({"SPACE_ID": "someone/dapt-lab"}, data_dir=tmp_path).describe().endswith(
        "ZeroGPU decorator from the spaces package")


# --- zerogpu.gpu -------------------------------------------------------------------------------------------

def _double(x: int) -> int:
    return 2 * x


def test_without_the_spaces_package_the_decorator_changes_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)
    assert zerogpu.spaces_module() is None
    assert zerogpu.gpu(60)(_double) is _double


def test_with_the_spaces_package_the_decorator_is_spaces_gpu_with_the_duration(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "spaces", fake_spaces(tmp_path / "calls"))
    wrapped = zerogpu.gpu(45)(_double)
    assert wrapped is not _double and wrapped.fake_gpu_duration == 45 and wrapped.__wrapped__ is _double
    assert wrapped(21) == 42 and (tmp_path / "calls").read_text() == "_double\n"


@pytest.mark.parametrize("duration", [0, -5, "60", True, None])
def test_a_bad_duration_is_refused(duration):
    with pytest.raises(ValueError, match="positive number of seconds"):
        zerogpu.gpu(duration)


# --- the app's handlers ------------------------------------------------------------------------------------

def test_the_model_handlers_are_decorated_and_the_others_are_not(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", fake_spaces())
    demo = app.build_app(tiny_backbone, bundled_dir=tmp_path / "bundled", user_dir=tmp_path / "user",
                         examples_dir=tmp_path / "examples")
    fns = {f.api_name: f.fn for f in demo.fns.values()}
    for name, seconds in GPU_HANDLERS.items():
        assert fns[name].fake_gpu_duration == seconds, name
    assert fns["train"].fake_gpu_duration is zerogpu.train_gpu_seconds
    assert inspect.isgeneratorfunction(fns["train"])  # Gradio still streams its progress
    assert "request" in inspect.signature(fns["train"]).parameters  # and still hands it the visitor's request
    for name in ("prompt_sets", "download_prompt_set", "cancel_training", "refresh"):
        assert not hasattr(fns[name], "fake_gpu_duration"), name


def test_without_spaces_the_handlers_are_the_plain_methods(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)
    demo = app.build_app(tiny_backbone, bundled_dir=tmp_path / "bundled", user_dir=tmp_path / "user",
                         examples_dir=tmp_path / "examples")
    fns = {f.api_name: f.fn for f in demo.fns.values()}
    assert fns["compare"].__func__ is app.Handlers.compare and fns["train"].__func__ is app.Handlers.train


@pytest.mark.parametrize("epochs, seconds", [(1, 40), (5, 80), (20.0, 230), (10_000, 30 + 10 * 50), ("x", 40)])
def test_training_asks_for_gpu_seconds_by_its_epochs(epochs, seconds):
    assert zerogpu.train_gpu_seconds("synthetic", None, "coop", "gradcam", 1, epochs, "", 1, None, None) == seconds


# --- the whole start-up, as the Space runs it --------------------------------------------------------------

START_AS_SPACE = '''
import runpy, sys, types
spaces = types.ModuleType("spaces")
exec(sys.argv[1], spaces.__dict__)
spaces.LOG, spaces.FACTS = sys.argv[2], sys.argv[4]
sys.modules["spaces"] = spaces
sys.argv = ["app.py", "--backbone", "tiny-vit", "--port", sys.argv[3]]
runpy.run_path("app.py", run_name="__main__")
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the app exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the app did not answer within {STARTUP_TIMEOUT_S} s")


def test_started_as_a_space_the_app_keeps_prompt_sets_on_the_volume_and_calls_through_zerogpu(tiny_backbone,
                                                                                               tmp_path):
    from gradio_client import Client, handle_file

    data, calls, facts = tmp_path / "data", tmp_path / "gpu-calls.txt", tmp_path / "facts.json"
    prompts = data / "dapt" / "user-prompts"
    for seed, name in ((0, "a"), (1, "b"), (2, "upload-me")):
        torch.manual_seed(seed)
        folder = prompts if name != "upload-me" else tmp_path
        save_prompt_set(build_learner("coop", tiny_backbone, CLASSES, n_ctx=2), folder / f"{name}.safetensors")
    port = _free_port()
    env = {**os.environ, **OFFLINE_ENV, "SPACE_ID": "someone/dapt-lab", "DAPT_SPACE_DATA": str(data)}
    for name in ("DAPT_USER_PROMPTS", "HF_HOME", "DAPT_BACKBONE"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-c", START_AS_SPACE, FAKE_SPACES, str(calls), str(port),
                             str(facts)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_up(proc, f"http://127.0.0.1:{port}/")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        listed = {s["key"]: s["source"] for s in client.predict(api_name="/prompt_sets")}
        assert listed == {"user/a": "user", "user/b": "user"}
        note = client.predict(handle_file(str(tmp_path / "upload-me.safetensors")), api_name="/upload_prompt_set")
        assert note.startswith("Added **user/upload-me**")
        assert sorted(p.name for p in prompts.iterdir()) == ["a.safetensors", "b.safetensors",
                                                              "upload-me.safetensors"]
        image = ROOT / "assets" / "examples" / "00_aligned_circle_on_tree.png"
        summary = client.predict(handle_file(str(image)), ["user/a", "user/b"], "", "cam", "gradcam", "",
                                 api_name="/compare")[-1]
        assert summary["prompt_set_keys"] == ["user/a", "user/b"]
        assert calls.read_text().splitlines() == ["upload_prompt_set", "compare"]
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
    assert json.loads(facts.read_text()) == {"hf_hub_cache": str(data / ".huggingface" / "hub"),
                                             "user_prompts": str(prompts)}
    assert (f"Space someone/dapt-lab: persistent storage at {data}; DAPT_USER_PROMPTS={prompts}, "
            f"HF_HOME={data / '.huggingface'}; ZeroGPU decorator from the spaces package") in stderr
