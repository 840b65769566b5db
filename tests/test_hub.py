"""Prompt sets pushed to and pulled from the Hub, with huggingface_hub's HfApi replaced at the boundary by a fake
that keeps each repository in a folder; the real client only for the offline error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import errors as hf_errors
from safetensors.torch import load_file, save_file

from dapt_core import hub
from dapt_core.checkpoint import CheckpointError, METADATA_KEY, read_info, save_prompt_set
from dapt_core.cli import main
from dapt_core.learners import build_learner

CLASSES = ["cat|dog", "bird", "fish"]
REPO = "someone/dapt-sets"


def _response(status: int, url: str):
    import httpx2  # huggingface_hub's HTTP client: its errors carry one of its responses

    return httpx2.Response(status, request=httpx2.Request("GET", url))


class FakeHub:
    """The HfApi calls dapt_core.hub makes, on a folder (``root/owner/name/<files>``); it records each call."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[str] = []
        self.commits: list[dict] = []
        self.refuse_with: int | None = None  # an HTTP status every call answers with
        self.reported_sizes: dict[str, int] = {}  # sizes get_paths_info reports instead of the real ones
        self.break_download = False  # hf_hub_download writes half the file, then the connection drops

    def _repo(self, repo_id: str, revision: str | None = None) -> Path:
        if self.refuse_with:
            raise hf_errors.HfHubHTTPError(f"{self.refuse_with} Client Error",
                                           response=_response(self.refuse_with, f"https://hub/{repo_id}"))
        folder = self.root / repo_id
        if not folder.is_dir():
            raise hf_errors.RepositoryNotFoundError(f"404 {repo_id}", response=_response(404, f"https://hub/{repo_id}"))
        if revision not in (None, "main"):
            raise hf_errors.RevisionNotFoundError(f"404 {revision}", response=_response(404, f"https://hub/{repo_id}"))
        return folder

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False):
        self.calls.append(f"create_repo {repo_id} {repo_type} private={private}")
        if self.refuse_with:
            self._repo(repo_id)
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)
        return f"https://hub/{repo_id}"

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None):
        folder = self._repo(repo_id)
        self.calls.append(f"create_commit {repo_id}")
        for op in operations:
            with op.as_file() as f:
                (folder / op.path_in_repo).parent.mkdir(parents=True, exist_ok=True)
                (folder / op.path_in_repo).write_bytes(f.read())
        self.commits.append({"message": commit_message, "files": [op.path_in_repo for op in operations]})

    def list_repo_files(self, repo_id, *, repo_type=None, revision=None):
        folder = self._repo(repo_id, revision)
        self.calls.append(f"list_repo_files {repo_id}")
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    def get_paths_info(self, repo_id, paths, *, repo_type=None, revision=None):
        folder = self._repo(repo_id, revision)
        return [SimpleNamespace(path=p, size=self.reported_sizes.get(p, (folder / p).stat().st_size))
                for p in paths if (folder / p).is_file()]

    def hf_hub_download(self, repo_id, filename, *, repo_type=None, revision=None, local_dir=None):
        source = self._repo(repo_id, revision) / filename
        self.calls.append(f"hf_hub_download {repo_id} {filename}")
        if not source.is_file():
            raise hf_errors.RemoteEntryNotFoundError(f"404 {filename}", response=_response(404, "https://hub/f"))
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.break_download:
            target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
            raise ConnectionResetError(104, "Connection reset by peer")
        shutil.copyfile(source, target)
        return str(target)


@pytest.fixture
def fake(tmp_path) -> FakeHub:
    return FakeHub(tmp_path / "hub")


@pytest.fixture
def prompt_set(tmp_path, tiny_backbone) -> Path:
    torch.manual_seed(0)
    learner = build_learner("coop", tiny_backbone, CLASSES, n_ctx=2)
    return save_prompt_set(learner, tmp_path / "pets.safetensors", train_config={"shots": 4, "epochs": 2, "seed": 1},
                           metrics={"accuracy": 91.5, "n": 10}, name="my pets")


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# --- push ----------------------------------------------------------------------------------------------------

def test_push_uploads_the_set_and_its_card_in_one_commit_and_pull_brings_back_the_same_bytes(
        fake, prompt_set, tmp_path, tiny_backbone):
    pushed = hub.push_prompt_set(prompt_set, REPO, api=fake)
    assert pushed == {"repo": REPO, "file": "pets.safetensors",
                      "url": f"https://huggingface.co/{REPO}/blob/main/pets.safetensors"}
    assert fake.calls == [f"create_repo {REPO} model private=False", f"create_commit {REPO}"]
    assert fake.commits == [{"message": "Add prompt set pets.safetensors (CoOp, 3 classes)",
                             "files": ["pets.safetensors", "README.md"]}]
    stored = fake.root / REPO
    assert (stored / "pets.safetensors").read_bytes() == prompt_set.read_bytes()
    assert (stored / "README.md").read_text() == hub.model_card(read_info(prompt_set), REPO, "pets.safetensors")
    info = hub.pull_prompt_set(REPO, tmp_path / "pulled", api=fake, backbone=tiny_backbone)
    assert info.path == tmp_path / "pulled" / "pets.safetensors"
    assert info.path.read_bytes() == prompt_set.read_bytes() and _listing(tmp_path / "pulled") == ["pets.safetensors"]


def test_the_model_card_says_what_the_set_is_from_its_metadata(prompt_set):
    card = hub.model_card(read_info(prompt_set), REPO, "sets/pets.safetensors").splitlines()
    assert card[:8] == ["---", "tags:", "- dapt-attention-lab", "- prompt-tuning", "- clip", "- dapt", "- coop", "---"]
    assert "# my pets" in card
    rows = {line.split(" | ")[0][2:]: line.split(" | ", 1)[1][:-2] for line in card if line.startswith("| ")
            and not line.startswith("| |")}
    assert rows["file"] == "`sets/pets.safetensors`"
    assert rows["classes"] == "3: cat\\|dog, bird, fish"  # a pipe in a class name does not break the table
    assert rows["DAPT"] == "off (the plain learner)"
    assert rows["backbone"] == "tiny-vit (open_clip `tiny-vit`, weights random)"
    assert rows["training"] == '{"epochs": 2, "seed": 1, "shots": 4}'
    assert rows["metrics"] == "accuracy 91.5, n 10"
    assert rows["learner"].startswith('coop {"') and '"n_ctx": 2' in rows["learner"]
    assert f"python -m dapt_core hub pull {REPO}/sets/pets.safetensors" in card
    assert "python -m dapt_core eval --prompts pets.safetensors --data imagefolder:PATH" in card


def test_the_card_names_the_weights_repository_of_a_real_backbone_as_base_model():
    assert hub._base_model("ViT-B-16") == "timm/vit_base_patch16_clip_224.openai"
    assert hub._base_model("tiny-vit") is None and hub._base_model("no-such-backbone") is None


def test_a_dapt_set_card_states_its_dapt_settings(tmp_path, tiny_backbone):
    from dapt_core.objective import DaptConfig

    path = save_prompt_set(build_learner("coop", tiny_backbone, CLASSES, n_ctx=2), tmp_path / "d.safetensors",
                           dapt=DaptConfig(cue="gradcam"))
    card = hub.model_card(read_info(path), REPO, "d.safetensors")
    assert "A **CoOp + DAPT (gradcam)** prompt set" in card and '| DAPT | {"' in card and '"cue": "gradcam"' in card


def test_push_refuses_what_is_not_a_prompt_set_before_calling_the_hub(fake, prompt_set, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="junk.safetensors is not a readable safetensors file"):
        hub.push_prompt_set(junk, REPO, api=fake)
    with pytest.raises(hub.HubError, match=r"push takes a repository id \(someone/dapt-sets\)"):
        hub.push_prompt_set(prompt_set, f"{REPO}/x.safetensors", api=fake)
    with pytest.raises(hub.HubError, match="must end in .safetensors, got 'pets.bin'"):
        hub.push_prompt_set(prompt_set, REPO, path_in_repo="pets.bin", api=fake)
    assert fake.calls == []


def test_push_without_the_right_to_write_says_to_log_in(fake, prompt_set):
    fake.refuse_with = 401
    with pytest.raises(hub.HubError, match=r"refused access to someone/dapt-sets \(HTTP 401\): log in with "
                                           r"`hf auth login` or set HF_TOKEN"):
        hub.push_prompt_set(prompt_set, REPO, api=fake)


# --- pull ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, parsed", [
    ("someone/sets", ("someone/sets", None)),
    ("someone/sets/p.safetensors", ("someone/sets", "p.safetensors")),
    ("someone/sets/dir/p.safetensors", ("someone/sets", "dir/p.safetensors")),
    ("gpt2/p.safetensors", ("gpt2", "p.safetensors")),
    ("/someone/sets/", ("someone/sets", None)),
])
def test_hub_specs(spec, parsed):
    assert hub.parse_hub_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["", "  ", "someone//x.safetensors", "someone/../x.safetensors"])
def test_bad_hub_specs_are_refused(spec):
    with pytest.raises(hub.HubError, match="is not REPO_ID or REPO_ID/FILE.safetensors"):
        hub.parse_hub_spec(spec)


def _repo_with(fake: FakeHub, files: dict[str, bytes]) -> None:
    folder = fake.root / REPO
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def test_a_repository_with_several_sets_needs_the_file_named(fake, prompt_set, tmp_path):
    _repo_with(fake, {"a.safetensors": prompt_set.read_bytes(), "b/c.safetensors": prompt_set.read_bytes()})
    with pytest.raises(hub.HubError, match=r"holds 2 prompt sets \(a.safetensors, b/c.safetensors\); name one"):
        hub.pull_prompt_set(REPO, tmp_path / "out.safetensors", api=fake)
    info = hub.pull_prompt_set(f"{REPO}/b/c.safetensors", tmp_path / "out.safetensors", api=fake)
    assert info.path.read_bytes() == prompt_set.read_bytes() and info.name == "my pets"


def test_a_pulled_file_that_is_not_a_prompt_set_never_lands(fake, tmp_path):
    _repo_with(fake, {"evil.safetensors": b"\x80\x04\x95 a pickle, not safetensors"})
    with pytest.raises(CheckpointError, match="out.safetensors is not a readable safetensors file"):
        hub.pull_prompt_set(REPO, tmp_path / "dest" / "out.safetensors", api=fake)
    assert _listing(tmp_path / "dest") == []  # no file, no staging folder


def test_a_pulled_set_that_does_not_fit_the_backbone_never_lands(fake, prompt_set, tmp_path, tiny_backbone):
    meta = read_info(prompt_set).meta
    meta["learner_options"]["n_ctx"] = 4  # its tensors hold 2 context vectors
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(prompt_set)), str(bad), metadata={METADATA_KEY: json.dumps(meta)})
    _repo_with(fake, {"bad.safetensors": bad.read_bytes()})
    with pytest.raises(CheckpointError, match="does not fit a coop learner on tiny-vit"):
        hub.pull_prompt_set(REPO, tmp_path / "dest", api=fake, backbone=tiny_backbone)
    assert _listing(tmp_path / "dest") == []


def test_an_interrupted_download_leaves_nothing_and_an_existing_file_is_kept(fake, prompt_set, tmp_path):
    _repo_with(fake, {"pets.safetensors": prompt_set.read_bytes()})
    dest = tmp_path / "dest" / "pets.safetensors"
    dest.parent.mkdir()
    dest.write_bytes(b"the visitor's own file")
    with pytest.raises(hub.HubError, match="pets.safetensors exists already; pass --overwrite"):
        hub.pull_prompt_set(REPO, dest, api=fake)
    fake.break_download = True
    with pytest.raises(hub.HubError, match=r"the connection to the Hub failed for pets.safetensors in "
                                           r"someone/dapt-sets: .*Connection reset by peer"):
        hub.pull_prompt_set(REPO, dest, api=fake, overwrite=True)
    assert dest.read_bytes() == b"the visitor's own file" and _listing(dest.parent) == ["pets.safetensors"]
    fake.break_download = False
    hub.pull_prompt_set(REPO, dest, api=fake, overwrite=True)
    assert dest.read_bytes() == prompt_set.read_bytes() and _listing(dest.parent) == ["pets.safetensors"]


def test_a_file_over_the_size_limit_is_not_downloaded(fake, prompt_set, tmp_path):
    _repo_with(fake, {"pets.safetensors": prompt_set.read_bytes()})
    fake.reported_sizes["pets.safetensors"] = hub.MAX_PULL_BYTES + 1
    with pytest.raises(hub.HubError, match=r"pets.safetensors in someone/dapt-sets is 200 MB, over the 200 MB"):
        hub.pull_prompt_set(REPO, tmp_path / "dest", api=fake)
    assert not any(c.startswith("hf_hub_download") for c in fake.calls) and not (tmp_path / "dest").exists()


def test_missing_repositories_files_and_revisions_are_named(fake, prompt_set, tmp_path):
    with pytest.raises(hub.HubError, match="no repository someone/dapt-sets on the Hub, or it is private"):
        hub.pull_prompt_set(REPO, tmp_path / "out.safetensors", api=fake)
    _repo_with(fake, {"pets.safetensors": prompt_set.read_bytes()})
    with pytest.raises(hub.HubError, match="no file other.safetensors in someone/dapt-sets on the Hub"):
        hub.pull_prompt_set(f"{REPO}/other.safetensors", tmp_path / "out.safetensors", api=fake)
    with pytest.raises(hub.HubError, match="someone/dapt-sets has no such revision"):
        hub.pull_prompt_set(REPO, tmp_path / "out.safetensors", api=fake, revision="v9")
    assert not (tmp_path / "out.safetensors").exists()


# --- offline, and the command line ---------------------------------------------------------------------------

def test_offline_push_and_pull_fail_at_once_with_a_clear_message(prompt_set, tmp_path, monkeypatch):
    monkeypatch.setenv("DAPT_OFFLINE", "1")
    monkeypatch.setattr(hub, "HfApi", lambda: pytest.fail("no client may be made offline"))
    with pytest.raises(hub.HubError, match=r"^cannot reach the Hugging Face Hub \(huggingface.co\): this machine "
                                           r"is offline, or HF_HUB_OFFLINE or DAPT_OFFLINE is set; `hub push` "
                                           r"needs the network$"):
        hub.push_prompt_set(prompt_set, REPO)
    with pytest.raises(hub.HubError, match="`hub pull` needs the network"):
        hub.pull_prompt_set(REPO, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_the_cli_offline_is_one_line_and_status_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DAPT_OFFLINE", "1")
    assert main(["hub", "pull", REPO, "--out", str(tmp_path / "out.safetensors")]) == 2
    assert capsys.readouterr().err.strip() == ("error: cannot reach the Hugging Face Hub (huggingface.co): this "
                                               "machine is offline, or HF_HUB_OFFLINE or DAPT_OFFLINE is set; "
                                               "`hub pull` needs the network")


def test_the_cli_pushes_and_pulls_through_the_client(fake, prompt_set, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hub, "HfApi", lambda: fake)
    monkeypatch.setattr(hub, "is_online", lambda host: host == "huggingface.co")
    assert main(["hub", "push", str(prompt_set), REPO, "--path-in-repo", "sets/pets.safetensors", "--private"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {
        "repo": REPO, "file": "sets/pets.safetensors",
        "url": f"https://huggingface.co/{REPO}/blob/main/sets/pets.safetensors"}
    assert fake.calls[0] == f"create_repo {REPO} model private=True"
    out = tmp_path / "pulled.safetensors"
    assert main(["hub", "pull", REPO, "--out", str(out), "--backbone", "tiny-vit", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {
        "out": str(out), "name": "my pets", "label": "CoOp", "backbone": "tiny-vit", "classes": 3}
    assert out.read_bytes() == prompt_set.read_bytes()
