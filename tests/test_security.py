"""Security: no untrusted pickle is loaded anywhere (a scan of every module for unsafe loads), the app serves no
file outside what it hands out itself, and uploads have size limits."""

from __future__ import annotations

import ast
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
SCANNED = sorted([*(PROJECT / "dapt_core").rglob("*.py"), PROJECT / "app.py", *(PROJECT / "benchmarks").glob("*.py")])
# The one reader of pickles: official Dassl checkpoints, through a restricted Unpickler whose find_class allows
# tensors, plain containers and inert stand-ins only (tests/test_official_import.py tries hostile files on it).
RESTRICTED_PICKLE_MODULE = "dapt_core/official.py"
FORBIDDEN_CALLS = {  # dotted call -> why
    "pickle.load": "unpickles anything", "pickle.loads": "unpickles anything", "cPickle.load": "unpickles anything",
    "dill.load": "unpickles anything", "dill.loads": "unpickles anything", "joblib.load": "unpickles anything",
    "shelve.open": "unpickles anything", "marshal.load": "loads code", "marshal.loads": "loads code",
    "torch.jit.load": "runs TorchScript", "torch.hub.load": "runs downloaded code",
    "yaml.unsafe_load": "builds any object", "open_clip.load_checkpoint": "bypasses the weight-file checks",
    "eval": "runs text as code", "exec": "runs text as code",
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_loads(source: str, where: str) -> list[str]:
    """Every call in ``source`` that could load an untrusted pickle or run loaded code, as ``where:line: why``."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = {_dotted(b) for b in node.bases}
            defines = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            if bases & {"pickle.Unpickler", "Unpickler"} and "find_class" not in defines:
                found.append(f"{where}:{node.lineno}: an Unpickler without its own find_class")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        at = f"{where}:{node.lineno}"
        if name in FORBIDDEN_CALLS:
            found.append(f"{at}: {name} ({FORBIDDEN_CALLS[name]})")
        elif name == "torch.load":
            weights_only = _keyword(node, "weights_only")
            restricted = _dotted(_keyword(node, "pickle_module") or ast.Name("")) == "restricted_pickle"
            if not (_is_const(weights_only, True) or (restricted and where == RESTRICTED_PICKLE_MODULE)):
                found.append(f"{at}: torch.load without weights_only=True")
        elif name.endswith("np.load") or name == "numpy.load":
            if not (_keyword(node, "allow_pickle") is None or _is_const(_keyword(node, "allow_pickle"), False)):
                found.append(f"{at}: np.load with allow_pickle")
        elif name == "yaml.load":
            loader = _dotted(_keyword(node, "Loader") or ast.Name(""))
            if not loader.endswith(("SafeLoader", "CSafeLoader")):
                found.append(f"{at}: yaml.load without a safe Loader")
        elif isinstance(node.func, ast.Subscript) and _dotted(node.func.value).endswith("sam_model_registry"):
            if not _is_const(_keyword(node, "checkpoint"), None):
                found.append(f"{at}: segment-anything loads its checkpoint with a plain torch.load")
    return found


@pytest.mark.parametrize("snippet,caught", [
    ("import torch\ntorch.load(f)\n", "torch.load without weights_only=True"),
    ("import torch\ntorch.load(f, weights_only=False)\n", "torch.load without weights_only=True"),
    ("import torch\ntorch.load(f, pickle_module=restricted_pickle, weights_only=False)\n", "torch.load without"),
    ("import pickle\npickle.loads(b)\n", "pickle.loads"),
    ("import numpy as np\nnp.load(p, allow_pickle=True)\n", "allow_pickle"),
    ("import yaml\nyaml.load(text)\n", "yaml.load without"),
    ("import pickle\nclass U(pickle.Unpickler):\n    pass\n", "without its own find_class"),
    ("sam_model_registry['vit_b'](checkpoint=path)\n", "segment-anything"),
    ("eval(text)\n", "eval"),
])
def test_the_scan_finds_unsafe_loads(snippet, caught):
    assert any(caught in f for f in unsafe_loads(snippet, "dapt_core/x.py"))


def test_safe_loads_pass_the_scan():
    safe = ("torch.load(f, map_location='cpu', weights_only=True)\nnp.load(p, allow_pickle=False)\nnp.load(p)\n"
            "yaml.load(t, Loader=yaml.SafeLoader)\nyaml.safe_load(t)\nsam_model_registry['vit_b'](checkpoint=None)\n")
    assert unsafe_loads(safe, "dapt_core/x.py") == []


def test_no_module_loads_a_pickle_unsafely():
    assert len(SCANNED) > 50  # the whole package, the app and the benchmarks
    found = [f for path in SCANNED
             for f in unsafe_loads(path.read_text(encoding="utf-8"), str(path.relative_to(PROJECT)))]
    assert found == []


def test_the_restricted_reader_is_the_only_pickle_module():
    uses = [str(p.relative_to(PROJECT)) for p in SCANNED
            if "pickle_module=" in p.read_text(encoding="utf-8") and p.parent.name != "benchmarks"]
    assert uses == [RESTRICTED_PICKLE_MODULE]


# --- the app's file serving and upload limits -----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_backbone):
    pytest.importorskip("gradio")
    import app
    from dapt_core.checkpoint import save_prompt_set
    from dapt_core.learners import build_learner

    root = tmp_path_factory.mktemp("served")
    save_prompt_set(build_learner("coop", tiny_backbone, ["cat", "dog"], n_ctx=2), root / "prompts" / "p.safetensors")
    save_prompt_set(build_learner("coop", tiny_backbone, ["cat", "dog"], n_ctx=2), root / "user" / "u.safetensors")
    demo = app.build_app(tiny_backbone, bundled_dir=root / "prompts", user_dir=root / "user",
                         examples_dir=root / "examples")
    port = _free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "root": root, "demo": demo, "app": app}
    finally:
        demo.close()


def test_no_file_outside_what_the_app_hands_out_is_served(served):
    from gradio_client import Client

    root = served["root"]
    private = ["/etc/passwd", PROJECT / "app.py", PROJECT / "dapt_core" / "paths.py", root / "user" / "u.safetensors",
               root / "prompts" / "p.safetensors", "../../../../etc/passwd"]
    private += [p for p in (PROJECT / "checkpoints").glob("*.safetensors")]
    for path in private:
        assert _status(f"{served['url']}/gradio_api/file={path}") in (403, 404), path
    # what the app hands out (a copy made for a download) is served: the refusals above are not of everything
    handed = Client(served["url"] + "/", verbose=False).predict("bundled/p", api_name="/download_prompt_set")
    assert Path(handed).read_bytes() == (root / "prompts" / "p.safetensors").read_bytes()


def test_uploads_are_capped(served):
    from dapt_core.app_support import UploadLimits

    demo, app = served["demo"], served["app"]
    assert app.MAX_UPLOAD.endswith("mb")
    cap = int(app.MAX_UPLOAD.removesuffix("mb")) * 2**20
    assert demo.max_file_size == cap  # gradio refuses a bigger file before any handler sees it
    limits = UploadLimits()
    assert limits.max_zip_bytes <= cap and limits.max_file_bytes <= limits.max_total_bytes
