"""The app after a fault: what a killed app left behind is removed by the next one (and nothing of an app that
still runs), and a full disk during a training says so, with nothing saved."""

from __future__ import annotations

import errno
import logging
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from dapt_core import app_support as support
from dapt_core.app_support import jobs, leftovers, trainer
from dapt_core.checkpoint import save_prompt_set
from dapt_core.learners import build_learner

HOUR = 3600.0


def _fork_app_folder(parent: Path) -> tuple[int, Path]:
    """A child process that makes its TempFiles folder in ``parent`` and waits to be killed: (pid, folder)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            files = support.TempFiles(parent=parent)
            (files.new_dir() / "figure.png").write_bytes(b"png")
            os.write(write, str(files.root).encode())
            os.close(write)
            time.sleep(300)
        finally:
            os._exit(0)  # no clean-up of any kind, as after a kill
    os.close(write)
    with os.fdopen(read) as pipe:
        folder = Path(pipe.read())
    return pid, folder


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _aged(path: Path, age_s: float) -> Path:
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_the_folder_of_a_killed_app_is_removed_and_a_running_apps_is_kept(tmp_path, caplog):
    killed_pid, killed = _fork_app_folder(tmp_path)
    running_pid, running = _fork_app_folder(tmp_path)
    try:
        mine = support.TempFiles(parent=tmp_path)
        ownerless = tmp_path / "dapt-app-ownerless"  # no .owner: not known to be a leftover
        ownerless.mkdir()
        other = tmp_path / "other-tool-folder"
        other.mkdir()
        (other / leftovers.OWNER_FILE).write_text("1\n")
        _kill(killed_pid)
        assert (killed / leftovers.OWNER_FILE).read_text() == f"{killed_pid}\n"  # recorded, then left behind
        caplog.set_level(logging.INFO, logger="dapt_core.app_support.leftovers")
        assert support.remove_dead_temp_folders(tmp_path) == [killed]
        assert not killed.exists()
        assert running.is_dir() and mine.root.is_dir() and ownerless.is_dir() and other.is_dir()
        assert f"left by app process {killed_pid}, which no longer runs" in caplog.text
        assert support.remove_dead_temp_folders(tmp_path) == []  # nothing else is a leftover
    finally:
        _kill(running_pid)
    assert support.remove_dead_temp_folders(tmp_path) == [running]  # once it is killed too
    assert mine.root.is_dir()


def test_pruning_keeps_the_owner_record(tmp_path):
    files = support.TempFiles(parent=tmp_path, max_age_s=60)
    _aged(files.root / leftovers.OWNER_FILE, 2 * HOUR)
    files.new_dir()
    assert (files.root / leftovers.OWNER_FILE).is_file()
    assert support.remove_dead_temp_folders(tmp_path) == []  # still locked by this process


def _partials(folder: Path) -> dict[str, Path]:
    """A prompt set and a partial file of each kind, old or fresh."""
    folder.mkdir(parents=True, exist_ok=True)
    kept = folder / "pets.safetensors"
    kept.write_bytes(b"a whole prompt set")
    made = {"set": _aged(kept, 2 * HOUR)}
    for name in (".pets.safetensors.k2j3.tmp", ".dapt-write-check-x1"):
        (folder / name).write_bytes(b"half")
        made[name] = _aged(folder / name, 2 * HOUR)
    made["fresh.tmp"] = folder / ".cats.safetensors.9z8y.tmp"  # a write in progress
    made["fresh.tmp"].write_bytes(b"half")
    for name, inner_age in ((".hub-pull-old", 2 * HOUR), (".hub-pull-busy", 0.0)):
        part = folder / name / ".cache" / "part"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"downloading")
        _aged(part, inner_age)
        _aged(part.parent, 2 * HOUR)
        made[name] = _aged(folder / name, 2 * HOUR)
    return made


def test_old_partial_files_go_only_when_no_other_app_uses_the_user_folder(tmp_path):
    user = tmp_path / "user"
    other_app, removed = support.claim_user_folder(user)  # another app holds the folder (its own descriptor)
    assert removed == []
    made = _partials(user)
    try:
        mine, removed = support.claim_user_folder(user)
        assert removed == [] and all(p.exists() for p in made.values())
        leftovers.release(mine)
    finally:
        leftovers.release(other_app)
    mine, removed = support.claim_user_folder(user)
    leftovers.release(mine)
    gone = [made[".pets.safetensors.k2j3.tmp"], made[".hub-pull-old"], made[".dapt-write-check-x1"]]
    assert sorted(removed) == sorted(gone)
    assert sorted(p.name for p in user.iterdir()) == [".cats.safetensors.9z8y.tmp", ".hub-pull-busy",
                                                      "pets.safetensors"]
    assert made["set"].read_bytes() == b"a whole prompt set"


def test_an_app_starting_removes_what_a_killed_one_left(tmp_path, tiny_backbone, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    killed_pid, killed = _fork_app_folder(tmp_path / "tmp")
    _kill(killed_pid)
    user = tmp_path / "user"
    partial = _partials(user)[".pets.safetensors.k2j3.tmp"]
    catalog = support.PromptCatalog(tiny_backbone, tmp_path / "bundled", user)
    services = support.AppServices(tiny_backbone, catalog, support.Examples(tmp_path / "examples"),
                                   limits=support.CompareLimits(2, 10_000, 64), max_waiting=1, redraw_s=0.01)
    assert killed in services.leftovers and partial in services.leftovers
    assert not killed.exists() and not partial.exists()
    assert ".cats.safetensors.9z8y.tmp" in {p.name for p in user.iterdir()}  # a write in progress stays
    assert services.files.root.parent == tmp_path / "tmp" and support.remove_dead_temp_folders() == []
    assert services.files.root.is_dir()  # the running app's own folder stays


# --- a full disk -------------------------------------------------------------------------------------------

def test_a_full_disk_is_said_as_such_and_other_faults_are_not():
    full = OSError(errno.ENOSPC, "No space left on device", "/srv/user/x.safetensors")
    assert support.user_message(full) == support.DISK_FULL
    assert "disk is full" in support.DISK_FULL and "nothing was saved" in support.DISK_FULL
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as quota:
            raise RuntimeError("safetensors: write failed") from quota
    except RuntimeError as wrapped:
        assert support.disk_full(wrapped) and support.user_message(wrapped) == support.DISK_FULL
    assert support.user_message(OSError(errno.EIO, "Input/output error")) is None  # an internal fault
    refused = support.UploadError("x.safetensors was not added: the server's disk is full")
    refused.__cause__ = full
    assert support.user_message(refused) == "x.safetensors was not added: the server's disk is full"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_training_job_on_a_full_disk_fails_with_the_disk_full_message(code):
    def runner(job):
        raise OSError(code, os.strerror(code), "/srv/user/.x.safetensors.ab12.tmp")

    queue = jobs.TrainingQueue(runner)
    job = queue.submit("alice", None)
    while not job.finished:
        job.wait(job.version, 1.0)
    view = job.snapshot()
    assert view.state == "failed"
    if code == errno.ENOSPC:
        assert view.error == support.DISK_FULL and view.message == f"Training failed: {support.DISK_FULL}"
    else:
        assert view.message == "Training failed with an internal error; the details are in the server log."


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_training_in_the_app_onto_a_full_disk_says_so_and_saves_nothing(tmp_path, tiny_backbone, monkeypatch,
                                                                        code):
    gr = pytest.importorskip("gradio")
    import app
    from dapt_core import checkpoint

    user = tmp_path / "user"
    save_prompt_set(build_learner("coop", tiny_backbone, ["cat", "dog"], n_ctx=2), user / "victim.safetensors")
    before = (user / "victim.safetensors").read_bytes()
    written = []

    def full_disk(tensors, filename, metadata=None):  # writes a part, then the disk is full
        Path(filename).write_bytes(b"half of a prompt set")
        written.append(Path(filename))
        raise OSError(code, os.strerror(code), filename)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    catalog = support.PromptCatalog(tiny_backbone, tmp_path / "bundled", user)
    h = app.Handlers(tiny_backbone, catalog, support.Examples(tmp_path / "examples"))
    shown = []
    with pytest.raises(gr.Error) as raised:
        for progress in h.train("synthetic", None, "coop", "off", 1, 1, "victim", 1, None, None):
            shown.append(progress.text)
    assert raised.value.message == support.DISK_FULL
    assert shown[-1] == f"Training failed: {support.DISK_FULL}"
    assert len(written) == 1 and written[0].parent == user  # the save was tried, beside its target
    assert sorted(p.name for p in user.iterdir()) == ["victim.safetensors"]  # no partial file, no new set
    assert (user / "victim.safetensors").read_bytes() == before


def test_a_saved_set_without_room_for_its_download_copy_says_it_is_saved(tmp_path, tiny_backbone, monkeypatch):
    catalog = support.PromptCatalog(tiny_backbone, tmp_path / "bundled", tmp_path / "user")
    service = support.TrainingService(tiny_backbone, catalog, support.TempFiles(parent=tmp_path), max_waiting=1,
                                      redraw_s=0.01)
    saved = tmp_path / "user" / "pets.safetensors"
    saved.parent.mkdir()
    saved.write_bytes(b"prompt tensors")
    request = support.TrainRequest("synthetic", "coop", "off", 1, 1, "pets")
    job = support.TrainJob("alice", (request, tmp_path / "work"), state="done", message="Finished.",
                           result=support.TrainResult("user/pets", saved, ["cat"], {}, "not evaluated", []))
    copies = []

    def full_disk(source, target):
        Path(target).write_bytes(b"half")
        copies.append(Path(target))
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(trainer.shutil, "copyfile", full_disk)
    shown = service.progress(job, job.snapshot())
    assert shown.text.startswith("Saved **user/pets** (1 classes)") and shown.text.endswith(
        trainer.NO_DOWNLOAD_COPY)
    assert shown.download is None and shown.metrics["key"] == "user/pets"
    assert len(copies) == 1 and not copies[0].exists()  # the partial copy is not left behind
    assert saved.read_bytes() == b"prompt tensors"
