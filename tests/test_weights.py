"""Tests of the weights registry and resolution: local files first, a quick offline decision, atomic downloads."""

from __future__ import annotations

import hashlib
import io
import pickle
import socket
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants as hf_constants

from dapt_core import paths, weights
from dapt_core.weights import online, registry, resolve
from dapt_core.weights import (
    UnknownWeightsError,
    UnsafeCheckpointError,
    WeightSpec,
    WeightsIntegrityError,
    WeightsNotFoundError,
)

# The issue asks for the offline decision to be bounded; this is that bound, far above the expected few ms.
OFFLINE_DECISION_BOUND_S = 5.0
PAYLOAD = b"not really weights, but bytes with a known digest" * 100


class NotATensor:
    """A custom class: a checkpoint that pickles it must be refused by safe_torch_load."""

    def __init__(self) -> None:
        self.value = 1


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Points checkpoints/ and the HF cache into tmp_path, restores the registry and the online cache, and
    sets DAPT_OFFLINE so no test reaches the network unless it says so."""
    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setattr(paths, "CHECKPOINT_DIR", checkpoints)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(online, "_ONLINE_CACHE", {})
    monkeypatch.setenv("DAPT_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return checkpoints


def _url_spec(url: str, sha256: str | None = None, name: str = "test-url") -> WeightSpec:
    spec = WeightSpec(
        name=name, filename="test_weights.pth", hf_repo=None, url=url, sha256=sha256, size_mb=1.0,
        description="test weights served from a URL",
    )
    weights.register_weights(spec)
    return spec


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fake_hf_cache(root: Path, repo: str, filename: str, revision: str = "0123abcd") -> Path:
    """Builds the real cache layout: models--org--name/refs/main and snapshots/<rev>/<file>."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_bytes(PAYLOAD)
    return snapshot / filename


def test_registry_lists_the_builtin_weights() -> None:
    names = [spec.name for spec in weights.list_weights()]
    assert names == sorted(names)
    assert {"clip-vit-b-16-openai", "sam-vit-b", "sam-vit-l", "sam-vit-h"} <= set(names)
    clip = weights.get_weight_spec("clip-vit-b-16-openai")
    assert (clip.hf_repo, clip.filename) == ("timm/vit_base_patch16_clip_224.openai", "open_clip_model.safetensors")
    sam_h = weights.get_weight_spec("sam-vit-h")
    assert sam_h.url is not None and sam_h.url.endswith("/sam_vit_h_4b8939.pth")
    # Meta's SAM downloads have published digests (see registry._SAM_SHA256); the others have none pinned
    pinned = {spec.name for spec in weights.list_weights() if spec.sha256 is not None}
    assert {"sam-vit-b", "sam-vit-l", "sam-vit-h"} <= pinned and "clip-vit-b-16-openai" not in pinned
    assert len({weights.get_weight_spec(n).sha256 for n in pinned}) == len(pinned)  # one digest per file
    assert all(weights.get_weight_spec(n).path_option == "--sam-checkpoint" for n in pinned if "sam" in n)


def test_offline_sam_names_its_own_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dapt_core.weights.resolve.is_online", lambda *args, **kwargs: False)
    with pytest.raises(WeightsNotFoundError) as info:
        weights.resolve_weights("sam-vit-b")
    assert "--sam-checkpoint" in str(info.value) and "--weights" not in str(info.value)


def test_a_registered_digest_is_checked_on_a_hub_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("dapt_core.weights.resolve.is_online", lambda *args, **kwargs: True)
    downloaded = tmp_path / "hub" / "w.safetensors"

    def fake_download(**kwargs: object) -> str:
        downloaded.parent.mkdir(exist_ok=True)
        downloaded.write_bytes(PAYLOAD)
        return str(downloaded)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    for name, digest in (("hub-good", hashlib.sha256(PAYLOAD).hexdigest()), ("hub-bad", "0" * 64)):
        weights.register_weights(WeightSpec(name=name, filename="w.safetensors", hf_repo="org/repo", url=None,
                                            sha256=digest, size_mb=None, description="test"))
    assert weights.fetch_weights("hub-good") == downloaded and downloaded.read_bytes() == PAYLOAD
    with pytest.raises(WeightsIntegrityError, match="sha256.*discarded"):
        weights.fetch_weights("hub-bad")
    assert not downloaded.exists()


def test_unknown_name_lists_registered_names() -> None:
    with pytest.raises(UnknownWeightsError, match="sam-vit-b") as info:
        weights.get_weight_spec("sam-vit-xl")
    assert isinstance(info.value, ValueError)
    assert "'sam-vit-xl'" in str(info.value) and "clip-vit-b-16-openai" in str(info.value)


def test_register_rejects_a_conflicting_spec_and_bad_fields() -> None:
    spec = _url_spec("https://example.invalid/w.pth")
    weights.register_weights(spec)  # the identical spec again is fine
    with pytest.raises(ValueError, match="already registered"):
        _url_spec("https://example.invalid/other.pth")
    with pytest.raises(ValueError, match="bare file name"):
        WeightSpec("x", "sub/w.pth", None, None, None, None, "x")
    with pytest.raises(ValueError, match="sha256"):
        WeightSpec("x", "w.pth", None, None, "abc", None, "x")


def test_explicit_path_wins(isolated: Path, tmp_path: Path) -> None:
    isolated.mkdir()
    (isolated / "sam_vit_b_01ec64.pth").write_bytes(PAYLOAD)
    explicit = tmp_path / "elsewhere.pth"
    explicit.write_bytes(PAYLOAD)
    assert weights.resolve_weights("sam-vit-b", explicit) == explicit
    assert weights.resolve_weights("sam-vit-b", str(explicit)) == explicit


def test_missing_explicit_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsNotFoundError, match="does not exist") as info:
        weights.resolve_weights("sam-vit-b", missing)
    assert str(missing) in str(info.value)
    with pytest.raises(WeightsNotFoundError, match="is a directory"):
        weights.resolve_weights("sam-vit-b", tmp_path)


def test_checkpoints_file_is_found(isolated: Path) -> None:
    assert weights.weights_status("sam-vit-l") == "missing"
    isolated.mkdir()
    local = isolated / "sam_vit_l_0b3195.pth"
    local.write_bytes(PAYLOAD)
    assert weights.resolve_weights("sam-vit-l", download=False) == local
    assert weights.weights_status("sam-vit-l") == str(local)  # tmp_path is outside the project: absolute


def test_status_is_relative_inside_the_project(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "PROJECT_DIR", isolated.parent)
    isolated.mkdir()
    (isolated / "sam_vit_b_01ec64.pth").write_bytes(PAYLOAD)
    assert weights.weights_status("sam-vit-b") == str(Path("checkpoints") / "sam_vit_b_01ec64.pth")


def test_hf_cache_hit(tmp_path: Path) -> None:
    spec = weights.get_weight_spec("clip-vit-b-16-openai")
    assert weights.weights_status(spec.name) == "missing"
    cached = _fake_hf_cache(tmp_path / "hf-cache", spec.hf_repo, spec.filename)
    assert weights.resolve_weights(spec.name, download=False) == cached
    assert weights.weights_status(spec.name) == "hf-cache"


def test_checkpoints_file_beats_hf_cache(isolated: Path, tmp_path: Path) -> None:
    spec = weights.get_weight_spec("clip-vit-b-16-openai")
    _fake_hf_cache(tmp_path / "hf-cache", spec.hf_repo, spec.filename)
    isolated.mkdir()
    (isolated / spec.filename).write_bytes(PAYLOAD)
    assert weights.resolve_weights(spec.name) == isolated / spec.filename


def test_offline_decision_is_quick_and_says_how_to_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAPT_OFFLINE")
    monkeypatch.setattr("dapt_core.weights.resolve.is_online", lambda *args, **kwargs: False)

    def no_hub_calls(*args: object, **kwargs: object) -> str:
        raise AssertionError("hf_hub_download must not run on an offline machine")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub_calls)
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as info:
        weights.resolve_weights("clip-vit-b-16-openai")
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "python -m dapt_core weights fetch clip-vit-b-16-openai" in message
    assert "open_clip_model.safetensors" in message
    assert "Hugging Face cache (timm/vit_base_patch16_clip_224.openai)" in message
    assert "offline" in message and "--weights" in message
    assert elapsed < OFFLINE_DECISION_BOUND_S


def test_real_probe_of_a_closed_port_decides_offline_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAPT_OFFLINE")
    port = _closed_port()
    _url_spec(f"http://127.0.0.1:{port}/test_weights.pth")
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match="offline") as info:
        weights.resolve_weights("test-url")
    elapsed = time.monotonic() - start
    assert "python -m dapt_core weights fetch test-url" in str(info.value)
    assert online._ONLINE_CACHE == {("127.0.0.1", port): False}
    assert elapsed < OFFLINE_DECISION_BOUND_S


def test_is_online_env_vars_skip_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: calls.append(args))
    assert weights.is_online("127.0.0.1", port=1) is False  # DAPT_OFFLINE=1 from the fixture
    monkeypatch.delenv("DAPT_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.is_online("127.0.0.1", port=1) is False
    assert calls == [] and online._ONLINE_CACHE == {}


def test_is_online_connects_once_and_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAPT_OFFLINE")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert weights.is_online("127.0.0.1", port=port) is True
    # The listener is gone, but the answer is the one cached for this process.
    assert weights.is_online("127.0.0.1", port=port) is True
    assert weights.is_online("127.0.0.1", port=_closed_port()) is False


def test_download_not_allowed_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dapt_core.weights.resolve.is_online", lambda *args, **kwargs: True)
    with pytest.raises(WeightsNotFoundError, match="downloading was not allowed"):
        weights.resolve_weights("sam-vit-b", download=False)


def test_hf_download_uses_a_short_etag_timeout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("dapt_core.weights.resolve.is_online", lambda *args, **kwargs: True)
    seen: dict[str, object] = {}
    downloaded = tmp_path / "downloaded.safetensors"

    def fake_download(**kwargs: object) -> str:
        seen.update(kwargs)
        downloaded.write_bytes(PAYLOAD)
        return str(downloaded)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert weights.fetch_weights("clip-vit-b-16-openai") == downloaded
    assert seen["repo_id"] == "timm/vit_base_patch16_clip_224.openai"
    assert seen["etag_timeout"] == resolve.HF_ETAG_TIMEOUT_S < 10


def test_failed_hf_download_becomes_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dapt_core.weights.resolve.is_online", lambda *args, **kwargs: True)

    def failing_download(**kwargs: object) -> str:
        raise OSError("connection reset")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing_download)
    with pytest.raises(WeightsNotFoundError, match="download failed.*connection reset") as info:
        weights.resolve_weights("clip-vit-b-16-openai")
    assert isinstance(info.value.__cause__, OSError)


def test_url_download_is_atomic_and_verified(isolated: Path, tmp_path: Path) -> None:
    source = tmp_path / "served.pth"
    source.write_bytes(PAYLOAD)
    _url_spec(source.as_uri(), sha256=hashlib.sha256(PAYLOAD).hexdigest())
    resolved = weights.fetch_weights("test-url")
    assert resolved == isolated / "test_weights.pth"
    assert resolved.read_bytes() == PAYLOAD
    assert sorted(p.name for p in isolated.iterdir()) == ["test_weights.pth"]  # no temporary left


def test_sha256_mismatch_leaves_no_file(isolated: Path, tmp_path: Path) -> None:
    source = tmp_path / "served.pth"
    source.write_bytes(PAYLOAD)
    _url_spec(source.as_uri(), sha256="0" * 64)
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        weights.resolve_weights("test-url")
    assert list(isolated.iterdir()) == []


class _BrokenResponse(io.BytesIO):
    """A response that delivers some bytes and then loses the connection."""

    headers: dict[str, str] = {"Content-Length": str(len(PAYLOAD))}

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() > 0:
            raise TimeoutError("read timed out")
        return super().read(16)


def test_interrupted_download_leaves_no_file(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dapt_core.weights.resolve.is_online", lambda *args, **kwargs: True)
    monkeypatch.setattr(resolve.urllib.request, "urlopen", lambda *args, **kwargs: _BrokenResponse(PAYLOAD))
    _url_spec("https://example.invalid/test_weights.pth")
    with pytest.raises(WeightsNotFoundError, match="download failed.*timed out"):
        weights.resolve_weights("test-url")
    assert list(isolated.iterdir()) == []


def test_safe_torch_load_accepts_a_tensor_dict(tmp_path: Path) -> None:
    state = {"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.zeros(2)}
    file = tmp_path / "state.pth"
    torch.save(state, file)
    loaded = weights.safe_torch_load(file)
    assert set(loaded) == {"weight", "bias"}
    assert torch.equal(loaded["weight"], state["weight"]) and loaded["weight"].device.type == "cpu"


def test_safe_torch_load_refuses_custom_objects(tmp_path: Path) -> None:
    file = tmp_path / "unsafe.pth"
    torch.save({"weight": torch.zeros(1), "extra": NotATensor()}, file)
    with pytest.raises(UnsafeCheckpointError, match="objects other than tensors") as info:
        weights.safe_torch_load(file)
    assert str(file) in str(info.value)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)


def test_safe_torch_load_rejects_non_dicts_and_missing_files(tmp_path: Path) -> None:
    file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), file)
    with pytest.raises(ValueError, match="expected a dict"):
        weights.safe_torch_load(file)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        weights.safe_torch_load(tmp_path / "missing.pth")
