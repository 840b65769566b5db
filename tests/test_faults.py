"""Faults: a process killed with SIGKILL mid-work, a full disk, a full user folder. After each, nothing is
half-written, the old files are intact, and running the same command again gives what an uninterrupted run
gives."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dapt_core import app_support as support
from dapt_core.app_support.catalog import UserFolderFullError
from dapt_core.checkpoint import read_info, save_prompt_set
from dapt_core.cli import main
from dapt_core.learners import build_learner
from dapt_core.run_state import TrainState, save_state

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square"]
KILL_TIMEOUT_S = 300.0  # how long a victim may take to reach the point where it is killed (a loaded CI machine)
SMALL_DISK_BYTES = 256 * 1024
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "DAPT_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _image_folder(root: Path, train_per_class: int, other_per_class: int = 2) -> Path:
    """An image folder (train/val/test, one sub-folder per class) of small random pictures."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("val", other_per_class), ("test", other_per_class)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _kill_when(cmd: list[str], ready, *, cwd: Path = ROOT, env: dict | None = None) -> subprocess.Popen:
    """Starts ``cmd``, polls ``ready(proc)`` until it is true, then kills the process with SIGKILL; fails the test
    when the process ends by itself first (then nothing was interrupted)."""
    # as many torch threads as this process uses: a float sum split over other threads rounds otherwise, and the
    # killed run's epochs are compared bit for bit with epochs run here
    env = {**(env or ENV), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    try:
        while not ready(proc):
            assert proc.poll() is None, f"{cmd[:4]} ended with {proc.returncode} before it could be killed"
            assert time.monotonic() < deadline, f"{cmd[:4]} never reached the point where it is killed"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return proc


def _same_prompt_sets(a: Path, b: Path) -> None:
    """Equal tensors, and equal training histories and metrics (the seconds each epoch took aside)."""
    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb)
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    ma, mb = read_info(a).meta, read_info(b).meta

    def history(meta: dict) -> list[dict]:
        return [{k: v for k, v in h.items() if k != "seconds"} for h in meta["train"].get("history", [])]

    assert history(ma) == history(mb) and ma["metrics"] == mb["metrics"]


# --- SIGKILL, then the same command again ------------------------------------------------------------------

def test_cli_train_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path, caplog):
    data = _image_folder(tmp_path / "data", train_per_class=6)
    args = ["train", "--backbone", "tiny-vit", "--device", "cpu", "--learner", "coop", "--data",
            f"imagefolder:{data}", "--shots", "6", "--epochs", "2"]
    out, state = tmp_path / "run" / "p.safetensors", tmp_path / "run" / "p.safetensors.state.pt"
    # killed once epoch 1's state is on disk, while epoch 2 trains
    _kill_when([sys.executable, "-m", "dapt_core", *args, "--out", str(out)], lambda _: state.exists())
    left = _files(out.parent)
    assert "p.safetensors" not in left and "p.safetensors.state.pt" in left
    # at most the temporary file of a write the kill interrupted, never a half-written file under a real name
    assert all(n.startswith(".p.safetensors.") and n.endswith(".tmp") for n in left if n != "p.safetensors.state.pt")
    assert torch.load(state, weights_only=True)["epoch"] == 0  # the state file is whole: epoch 1 finished
    caplog.set_level("INFO", logger="dapt_core.train")
    assert main([*args, "--out", str(out)]) == 0
    assert any("resumed from" in r.getMessage() and "after epoch 1" in r.getMessage() for r in caplog.records)
    assert _files(out.parent) == ["p.safetensors"]  # the state file is gone once the run is done
    assert main([*args, "--out", str(tmp_path / "clean" / "p.safetensors")]) == 0
    _same_prompt_sets(out, tmp_path / "clean" / "p.safetensors")


APP_TRAINING = """
import sys
from pathlib import Path
from dapt_core import app_support as support
from dapt_core.backbones import load_backbone

root = Path(sys.argv[1])
backbone = load_backbone("tiny-vit", device="cpu")
catalog = support.PromptCatalog(backbone, root / "bundled", root / "user")
service = support.TrainingService(backbone, catalog, support.TempFiles(), max_waiting=1, redraw_s=0.02)
job = service.submit("visitor", "synthetic", None, "coop", "gradcam", 2, 3, "victim", 3, None)
for progress in service.watch(job):
    print(progress.text.replace("\\n", " "), flush=True)
"""


def _app_train(root: Path) -> support.TrainResult:
    """What APP_TRAINING runs, in this process, to its end."""
    from dapt_core.backbones import load_backbone

    backbone = load_backbone("tiny-vit", device="cpu")
    catalog = support.PromptCatalog(backbone, root / "bundled", root / "user")
    service = support.TrainingService(backbone, catalog, support.TempFiles(), max_waiting=1, redraw_s=0.02)
    job = service.submit("visitor", "synthetic", None, "coop", "gradcam", 2, 3, "victim", 3, None)
    for _ in service.watch(job):
        pass
    return job.snapshot().result


def test_app_training_killed_mid_run_leaves_nothing_and_the_retry_is_the_uninterrupted_result(tmp_path):
    killed = tmp_path / "killed"
    lines: list[str] = []

    def training(proc: subprocess.Popen) -> bool:
        # the watcher shows the newest state, so a loaded machine may go from epoch 1 straight to epoch 3:
        # any epoch after the first is mid-run (the set is only saved after the last one ends)
        lines.append(proc.stdout.readline())
        return "Epoch 2/3" in lines[-1] or "Epoch 3/3" in lines[-1]

    _kill_when([sys.executable, "-c", APP_TRAINING, str(killed)], training,
               env={**ENV, "TMPDIR": str(tmp_path)})
    assert not any(line.startswith("Saved") for line in lines)
    assert not (killed / "user").exists() or _files(killed / "user") == []
    retried = _app_train(killed)
    assert retried.key == "user/victim" and _files(killed / "user") == ["victim.safetensors"]
    clean = _app_train(tmp_path / "clean")
    _same_prompt_sets(retried.path, clean.path)


def test_bulk_masks_killed_mid_run_keep_whole_masks_and_the_rerun_writes_only_the_rest(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", train_per_class=20)
    args = ["masks", "--data", f"imagefolder:{data}", "--segmenter", "cam", "--backbone", "tiny-vit",
            "--device", "cpu"]
    masks = tmp_path / "masks"

    def some_written(_) -> bool:
        return len(list(masks.rglob("*.png"))) >= 3

    _kill_when([sys.executable, "-m", "dapt_core", *args, "--out", str(masks)], some_written)
    kept = sorted(masks.rglob("*.png"))
    assert 3 <= len(kept) < 40
    for path in kept:  # every mask on disk is a whole PNG
        with Image.open(path) as img:
            img.load()
    assert main([*args, "--out", str(masks)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["skipped"], report["written"]) == (len(kept), 40 - len(kept))
    assert main([*args, "--out", str(tmp_path / "clean")]) == 0
    assert _files(masks) == _files(tmp_path / "clean") and len(_files(masks)) == 40
    for name in _files(masks):
        assert np.array_equal(np.asarray(Image.open(masks / name)), np.asarray(Image.open(tmp_path / "clean" / name)))


# --- a full disk -------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A small tmpfs mounted inside tmp_path (needs root), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK_BYTES}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this machine does not let root mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> None:
    """Writes a filler file until the disk has no room left."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


def _learner(tiny_backbone, seed: int):
    torch.manual_seed(seed)
    return build_learner("coop", tiny_backbone, CLASSES, n_ctx=2)


def test_a_prompt_set_saved_onto_a_full_disk_fails_clearly_and_the_old_file_stays(small_disk, tiny_backbone):
    path = small_disk / "set.safetensors"
    save_prompt_set(_learner(tiny_backbone, 0), path)
    old = path.read_bytes()
    _fill(small_disk)
    with pytest.raises(OSError) as raised:
        save_prompt_set(_learner(tiny_backbone, 1), path)
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(path))
    assert raised.value.strerror.startswith("No space left on device")
    assert path.read_bytes() == old and _files(small_disk) == ["filler", "set.safetensors"]


def test_a_training_state_saved_onto_a_full_disk_fails_clearly_and_the_old_state_stays(small_disk):
    path = small_disk / "run.state.pt"
    state = TrainState({"run": 1}, {"ctx": torch.zeros(4, 8)}, {}, 0, [], torch.get_rng_state())
    save_state(path, state)
    old = path.read_bytes()
    _fill(small_disk)
    state.learner = {"ctx": torch.ones(64, 512)}
    with pytest.raises(OSError) as raised:
        save_state(path, state)
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(path))
    assert path.read_bytes() == old and _files(small_disk) == ["filler", "run.state.pt"]


def test_cli_train_onto_a_full_disk_says_so_in_one_line_and_keeps_the_old_prompt_set(small_disk, tmp_path,
                                                                                        tiny_backbone, capsys):
    data = _image_folder(tmp_path / "data", train_per_class=2)
    out = small_disk / "p.safetensors"
    save_prompt_set(_learner(tiny_backbone, 0), out)
    old = out.read_bytes()
    _fill(small_disk)
    status = main(["train", "--backbone", "tiny-vit", "--device", "cpu", "--learner", "coop", "--data",
                   f"imagefolder:{data}", "--shots", "2", "--epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 1 and "Traceback" not in err and len(said) == 1
    assert said[0] == ("error: No space left on device (nothing was written; a previous file of that name is "
                       f"unchanged): {small_disk / 'p.safetensors.state.pt'}")
    assert out.read_bytes() == old and _files(small_disk) == ["filler", "p.safetensors"]


def test_an_upload_onto_a_full_disk_is_refused_clearly_and_the_user_folder_is_unchanged(small_disk, tmp_path,
                                                                                          tiny_backbone):
    user = small_disk / "user"
    save_prompt_set(_learner(tiny_backbone, 0), user / "old.safetensors")
    before = {name: (user / name).read_bytes() for name in _files(user)}
    upload = save_prompt_set(_learner(tiny_backbone, 1), tmp_path / "new.safetensors")
    _fill(small_disk)
    catalog = support.PromptCatalog(tiny_backbone, tmp_path / "bundled", user)
    with pytest.raises(support.UploadError, match=r"^new\.safetensors was not added: the server's disk is full$"):
        catalog.install(upload, "new.safetensors")
    assert {name: (user / name).read_bytes() for name in _files(user)} == before


# --- the user folder's limits ------------------------------------------------------------------------------

def test_the_user_folder_refuses_a_set_beyond_its_count_and_deletes_nothing(tmp_path, tiny_backbone):
    catalog = support.PromptCatalog(tiny_backbone, tmp_path / "bundled", tmp_path / "user", max_user_sets=2)
    uploads = [save_prompt_set(_learner(tiny_backbone, s), tmp_path / f"set{s}.safetensors") for s in range(3)]
    assert [catalog.install(u, u.name).key for u in uploads[:2]] == ["user/set0", "user/set1"]
    with pytest.raises(UserFolderFullError) as refused:
        catalog.install(uploads[2], uploads[2].name)
    assert str(refused.value) == ("The folder of saved prompt sets holds 2 prompt sets, its limit: nothing was saved, "
                                  "and no set is deleted to make room. The server's owner can remove sets no longer "
                                  "needed.")
    assert _files(tmp_path / "user") == ["set0.safetensors", "set1.safetensors"]


def test_the_user_folder_refuses_a_set_beyond_its_size(tmp_path, tiny_backbone):
    first = save_prompt_set(_learner(tiny_backbone, 0), tmp_path / "first.safetensors")
    size = first.stat().st_size
    catalog = support.PromptCatalog(tiny_backbone, tmp_path / "bundled", tmp_path / "user",
                                    max_user_bytes=size + size // 2)
    catalog.install(first, first.name)
    with pytest.raises(UserFolderFullError, match=rf"would hold {2 * size / 1024:.1f} KB, over its limit of "
                                                  rf"{(size + size // 2) / 1024:.1f} KB: nothing was saved"):
        catalog.install(first, "second.safetensors")
    assert _files(tmp_path / "user") == ["first.safetensors"]


def test_a_full_user_folder_refuses_training_before_it_starts(tmp_path, tiny_backbone):
    import app

    catalog = support.PromptCatalog(tiny_backbone, tmp_path / "bundled", tmp_path / "user", max_user_sets=1)
    save_prompt_set(_learner(tiny_backbone, 0), tmp_path / "user" / "only.safetensors")
    handlers = app.Handlers(tiny_backbone, catalog, support.Examples(tmp_path / "examples"))
    with pytest.raises(app.gr.Error, match="holds 1 prompt sets, its limit"):
        next(handlers.train("synthetic", None, "coop", "off", 1, 1, "x", 1, None, None))
    assert handlers.trainer.cancel("anonymous") == "No training job of yours is waiting or running."
    assert _files(tmp_path / "user") == ["only.safetensors"]
    images = tmp_path / "images"
    for i, name in enumerate(CLASSES * 2):
        (images / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(images / name / f"{i}.png")
    request = support.TrainRequest("folder", "coop", "off", 1, 1, "y", folder=images)
    with pytest.raises(UserFolderFullError):  # and the save itself checks again (a set that came meanwhile)
        support.run_training(request, tiny_backbone, catalog, tmp_path / "work")
    assert _files(tmp_path / "user") == ["only.safetensors"]
