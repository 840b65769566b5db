"""The corpus of bad inputs (tests/bad_inputs.py) over every entry point: the CLI commands, the library's readers and
the app's handlers. Each input gets a clear message naming what is wrong, nothing is written and nothing is left
half-written: the listing of every folder involved is the same before and after."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bad_inputs as bad
from dapt_core import app_support as support
from dapt_core.checkpoint import CheckpointError, load_prompt_set, read_info, save_prompt_set
from dapt_core.cli import main
from dapt_core.data.folders import read_class_list
from dapt_core.data.masks import MaskFolder, read_mask_file
from dapt_core.data.records import DataError, Sample
from dapt_core.errors import DaptError
from dapt_core.imageio import ImageInputError, load_image
from dapt_core.learners import build_learner
from dapt_core.objective import DaptConfig
from dapt_core.preflight import OutputError, check_images, check_masks, check_writable
from dapt_core.train import TrainConfig, evaluate, train_prompts
from dapt_core.weights import UnsafeCheckpointError, WeightFileError, check_weight_file, safe_torch_load

CLASSES = ("red", "green", "blue")
PROJECT = Path(__file__).resolve().parent.parent


def tree(*roots: Path) -> list[str]:
    """Every file and folder under the roots, hidden ones included: what "nothing was written" compares."""
    return sorted(str(p) for root in roots if root.exists() for p in [root, *root.rglob("*")])


def _images(root: Path, sizes=None) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for c, name in enumerate(CLASSES):
            for i in range(n):
                image = (rng.random((24, 24, 3)) * 60).astype(np.uint8)
                image[6:18, 6:18, c] = 250
                (root / split / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(root / split / name / f"{i}.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_backbone):
    """A data set with masks, a prompt set of it, and a folder of bad files beside them."""
    root = tmp_path_factory.mktemp("world")
    _images(root / "data")
    for path in (root / "data" / "train").rglob("*.png"):
        bad.mask_png(root / "masks" / path.relative_to(root / "data"), (24, 24))
    prompts = save_prompt_set(build_learner("coop", tiny_backbone, list(CLASSES), n_ctx=2),
                              root / "sets" / "plain.safetensors")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return {"root": root, "data": root / "data", "masks": root / "masks", "prompts": prompts,
            "classes": root / "classes.txt"}


def _refused(capsys, argv, named: str, *watched: Path, status: int = 2) -> str:
    """Runs the CLI; asserts the status, one ``error:`` line naming ``named`` and unchanged folders."""
    before = tree(*watched)
    assert main(argv) == status
    out, err = capsys.readouterr()
    assert bad.PAYLOAD_RAN not in out  # no pickled code ran
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and named in last, err
    assert "Traceback" not in err
    assert tree(*watched) == before
    return last


def _train(world, out, *extra):
    return ["train", "--backbone", "tiny-vit", "--device", "cpu", "--learner", "coop", "--n-ctx", "2", "--data",
            f"imagefolder:{world['data']}", "--shots", "1", "--epochs", "1", "--out", str(out), *extra]


# --- the CLI -------------------------------------------------------------------------------------------------------

WEIGHT_FILES = {
    "a pickle": (bad.pickle_file, "holds objects other than tensors"),
    "torch.save of objects": (bad.torch_pickle_of_objects, "holds objects other than tensors"),
    "garbage": (bad.garbage, "neither a safetensors file nor a torch checkpoint"),
    "a text file": (bad.text_file, "neither a safetensors file nor a torch checkpoint"),
    "a zip of images": (bad.zip_of_images, "not a torch checkpoint (no data.pkl"),
    "a pickle named .safetensors": (bad.pickle_as_safetensors, "is not a safetensors file"),
    "safetensors of another model": (bad.safetensors_of_another_model, "does not fit this model"),
    "torch zip of another model": (bad.torch_zip_of_another_model, "does not fit this model"),
}


@pytest.mark.parametrize("kind", sorted(WEIGHT_FILES))
def test_backbone_weights_that_are_no_weights(world, tmp_path, capsys, kind):
    make, named = WEIGHT_FILES[kind]
    weights = make(tmp_path / "in")
    _refused(capsys, _train(world, tmp_path / "out" / "p.safetensors", "--weights", str(weights)), named,
             tmp_path, world["root"])


def test_truncated_weights_and_truncated_prompt_sets(world, tmp_path, capsys):
    weights = bad.truncated_copy(bad.torch_zip_of_another_model(tmp_path / "src"), tmp_path / "in")
    _refused(capsys, _train(world, tmp_path / "p.safetensors", "--weights", str(weights)), "is truncated or damaged",
             tmp_path)
    prompts = bad.truncated_copy(world["prompts"], tmp_path / "in", "cut.safetensors")
    _refused(capsys, ["eval", "--prompts", str(prompts), "--data", f"imagefolder:{world['data']}"],
             "not a readable safetensors file", tmp_path, world["root"])


@pytest.mark.parametrize("setup,named", [
    (lambda t: (t / "p.safetensors").mkdir(), "is a folder"),
    (lambda t: (t / "blocker").write_text("x"), "is a file, not a folder"),
])
def test_an_output_that_cannot_be_written_is_refused_before_training(world, tmp_path, capsys, monkeypatch,
                                                                   setup, named):
    from dapt_core import backbones

    setup(tmp_path)
    out = tmp_path / "p.safetensors" if named == "is a folder" else tmp_path / "blocker" / "p.safetensors"
    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: pytest.fail("loaded a backbone"))
    _refused(capsys, _train(world, out), named, tmp_path, world["root"])


def test_an_unwritable_folder_is_refused(tmp_path, monkeypatch):
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", denied)  # the test runs as root, where chmod denies nothing
    with pytest.raises(OutputError, match="cannot be written .*Permission denied"):
        check_writable(tmp_path / "sub" / "p.safetensors")
    assert tree(tmp_path) == [str(tmp_path)]


@pytest.mark.parametrize("kind", sorted(bad.BAD_IMAGES))
def test_a_bad_image_in_a_training_folder_is_found_before_the_backbone_loads(world, tmp_path, capsys,
                                                                              monkeypatch, kind):
    import shutil

    from dapt_core import backbones

    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    for split in ("train", "val"):
        for name in CLASSES:
            for f in (data / split / name).glob("*.png"):
                f.unlink()
            bad.write(data / split / name, "0.png", bad.png_bytes(seed=len(name)))
    broken = bad.BAD_IMAGES[kind](data / "train" / "red", "1.png" if kind != "truncated jpeg" else "1.jpg")
    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: pytest.fail("loaded a backbone"))
    argv = _train({"data": data}, tmp_path / "p.safetensors")
    argv[argv.index("--shots") + 1] = "0"  # every image
    last = _refused(capsys, argv, "of the training images cannot be read", tmp_path)
    assert str(broken) in last


def test_training_masks_of_another_picture_are_refused_as_analyze_refuses_them(world, tmp_path, capsys):
    masks = tmp_path / "masks"
    for path in (world["data"] / "train").rglob("*.png"):
        bad.mask_png(masks / path.relative_to(world["data"]), (36, 24))  # 3:2 masks of square images
    last = _refused(capsys, _train(world, tmp_path / "p.safetensors", "--dapt", "mask", "--masks", str(masks)),
                    "do not cover the same picture", tmp_path, world["root"])
    assert "is 36x24 but its image 0.png is 24x24" in last
    # within the tolerance a mask is rescaled, as analyze does: a 1 % wider mask trains
    for path in masks.rglob("*.png"):
        bad.mask_png(path, (100, 99))
    check_masks([Sample(p, 0, "red") for p in (world["data"] / "train").rglob("*.png")],
                MaskFolder(masks, world["data"]))


def test_a_missing_training_mask_is_refused(world, tmp_path, capsys):
    masks = tmp_path / "masks"
    for path in sorted((world["data"] / "train").rglob("*.png"))[1:]:
        bad.mask_png(masks / path.relative_to(world["data"]), (24, 24))
    _refused(capsys, _train(world, tmp_path / "p.safetensors", "--dapt", "mask", "--masks", str(masks),
                            "--shots", "0"),
             "has no mask for 1 training image", tmp_path, world["root"])


def test_resuming_the_state_of_another_learner_is_refused(world, tmp_path, capsys, monkeypatch):
    from dapt_core import checkpoint

    out = tmp_path / "p.safetensors"
    real = checkpoint.save_prompt_set
    monkeypatch.setattr(checkpoint, "save_prompt_set", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "full")))
    assert main(_train(world, out, "--no-eval")) == 1  # trained, not saved: the state file stays
    monkeypatch.setattr(checkpoint, "save_prompt_set", real)
    capsys.readouterr()
    argv = _train(world, out, "--no-eval")
    argv[argv.index("coop")] = "maple"
    argv[argv.index("--n-ctx") + 1] = "1"
    last = _refused(capsys, argv, 'learner: "coop" -> "maple"', tmp_path)
    assert "--restart" in last


def test_an_empty_evaluation_split_is_refused_before_the_backbone_loads(world, tmp_path, capsys, monkeypatch):
    import shutil

    from dapt_core import backbones

    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    shutil.rmtree(data / "val")
    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: pytest.fail("loaded a backbone"))
    _refused(capsys, ["eval", "--prompts", str(world["prompts"]), "--data", f"imagefolder:{data}", "--split", "val"],
             "has no images in its val split", tmp_path)
    _refused(capsys, ["eval", "--prompts", str(world["prompts"]), "--data", f"imagefolder:{data}", "--split", "val",
                      "--base-to-novel"], "(base classes) has no images in its val split", tmp_path)


def test_evaluating_no_images_in_the_library_says_so(tiny_backbone):
    learner = build_learner("coop", tiny_backbone, list(CLASSES), n_ctx=2)
    with pytest.raises(DataError, match="no images to evaluate"):
        evaluate(learner, [])


def test_prompt_sets_of_another_backbone_and_bad_metadata(world, tmp_path, capsys):
    meta = read_info(world["prompts"]).meta
    other = bad.with_metadata(world["prompts"], tmp_path / "in",
                              dict(meta, backbone="ViT-B-16", model="ViT-B-16-quickgelu", pretrained="openai"),
                              "other.safetensors")
    data = f"imagefolder:{world['data']}"
    _refused(capsys, ["eval", "--prompts", str(other), "--backbone", "tiny-vit", "--device", "cpu", "--data", data],
             "was made for backbone 'ViT-B-16'", tmp_path, world["root"])
    for change, named in (([meta], "the metadata is a list"), (dict(meta, format_version="1"), "'format_version'"),
                          (dict(meta, learner_options=None), "'learner_options' is null"),
                          (dict(meta, classnames="dog"), "'classnames' is a string 'dog'")):
        edited = bad.with_metadata(world["prompts"], tmp_path / "in", change)
        _refused(capsys, ["eval", "--prompts", str(edited), "--data", data], named, tmp_path, world["root"])


@pytest.mark.parametrize("kind,make,named", [
    ("text", bad.text_file, "neither a safetensors file nor a torch checkpoint"),
    ("garbage", bad.garbage, "neither a safetensors file nor a torch checkpoint"),
    ("a prompt set", None, "needs no import"),
    ("objects", bad.torch_pickle_of_objects, "refused"),
])
def test_import_official_refuses_files_that_are_no_official_checkpoint(world, tmp_path, capsys, kind, make, named):
    src = world["prompts"] if make is None else make(tmp_path / "in")
    _refused(capsys, ["import-official", str(src), "--backbone", "tiny-vit", "--device", "cpu", "--classes",
                      str(world["classes"]), "--out", str(tmp_path / "out" / "i.safetensors")], named, tmp_path,
             world["root"])


@pytest.mark.parametrize("kind", sorted(bad.BAD_CLASS_LISTS))
def test_bad_class_lists_on_the_command_line(world, tmp_path, capsys, kind):
    data, named = bad.BAD_CLASS_LISTS[kind]
    classes = bad.write(tmp_path / "in", "classes.txt", data)
    src = bad.torch_zip_of_another_model(tmp_path / "in")
    _refused(capsys, ["import-official", str(src), "--backbone", "tiny-vit", "--device", "cpu", "--classes",
                      str(classes), "--out", str(tmp_path / "i.safetensors")], named, tmp_path)
    _refused(capsys, ["analyze", str(world["data"] / "test" / "red" / "0.png"), "--prompts", str(world["prompts"]),
                      "--classes", str(classes), "--out", str(tmp_path / "a.png")], named, tmp_path)


@pytest.mark.parametrize("kind", sorted(bad.BAD_IMAGES))
def test_analyze_refuses_bad_images(world, tmp_path, capsys, kind):
    image = bad.BAD_IMAGES[kind](tmp_path / "in")
    _refused(capsys, ["analyze", str(image), "--prompts", str(world["prompts"]), "--out", str(tmp_path / "a.png")],
             image.name, tmp_path, world["root"])


def test_analyze_refuses_a_mask_of_another_picture(world, tmp_path, capsys):
    mask = bad.mask_png(tmp_path / "in" / "mask.png", (48, 24))
    _refused(capsys, ["analyze", str(world["data"] / "test" / "red" / "0.png"), "--prompts", str(world["prompts"]),
                      "--device", "cpu", "--mask", str(mask), "--out", str(tmp_path / "a.png")],
             "a mask must cover the same picture", tmp_path, world["root"])


def test_masks_with_sam_offline_names_the_sam_option(world, tmp_path, capsys, monkeypatch):
    from dapt_core import paths

    monkeypatch.setattr(paths, "CHECKPOINT_DIR", tmp_path / "no-checkpoints")
    monkeypatch.setenv("DAPT_OFFLINE", "1")
    last = _refused(capsys, ["masks", "--data", f"imagefolder:{world['data']}", "--out", str(tmp_path / "m"),
                             "--segmenter", "sam", "--backbone", "tiny-vit", "--device", "cpu"],
                    "sam-vit-b weights", tmp_path, world["root"])
    assert "--sam-checkpoint" in last and "--weights" not in last


def test_masks_into_a_file_is_refused(world, tmp_path, capsys):
    out = bad.text_file(tmp_path)
    _refused(capsys, ["masks", "--data", f"imagefolder:{world['data']}", "--out", str(out), "--segmenter", "cam",
                      "--backbone", "tiny-vit", "--device", "cpu"], "is a file; name a folder", tmp_path)


@pytest.mark.parametrize("argv", [
    ["train", "--backbone", "tiny-vit", "--device", "cpu", "--data", "imagefolder:{data}", "--shots", "1",
     "--epochs", "1", "--weights", "{pickle}", "--out", "{out}"],
    ["import-official", "{text}", "--backbone", "tiny-vit", "--device", "cpu", "--classes", "{classes}",
     "--out", "{out}"],
])
def test_in_a_real_process_there_is_no_traceback(world, tmp_path, argv):
    files = {"data": world["data"], "pickle": bad.pickle_file(tmp_path), "text": bad.text_file(tmp_path),
             "classes": world["classes"], "out": tmp_path / "o.safetensors"}
    before = tree(tmp_path)
    done = subprocess.run([sys.executable, "-m", "dapt_core", *[a.format(**files) for a in argv]], cwd=PROJECT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert tree(tmp_path) == before


# --- the library ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(bad.BAD_IMAGES))
def test_image_readers(tmp_path, kind):
    image = bad.BAD_IMAGES[kind](tmp_path)
    with pytest.raises(ImageInputError, match=image.name):
        load_image(image)
    with pytest.raises(DataError, match="cannot be read") as caught:
        check_images([Sample(image, 0, "red")])
    assert str(image) in str(caught.value)


@pytest.mark.parametrize("kind", sorted(bad.BAD_MASK_ARRAYS))
def test_mask_readers(tmp_path, kind):
    array, named = bad.BAD_MASK_ARRAYS[kind]
    with pytest.raises(DataError, match=named):
        read_mask_file(bad.npy(tmp_path / "m.npy", array))


@pytest.mark.parametrize("data", [b"", b"PK\x03\x04"])
def test_an_empty_or_zip_like_npy_mask_is_refused(tmp_path, data):
    """Found by tests/test_fuzz.py: numpy raises EOFError on an empty .npy, BadZipFile on one starting like a zip."""
    with pytest.raises(DataError, match="cannot read mask"):
        read_mask_file(bad.write(tmp_path, "m.npy", data))


def test_an_npz_archive_named_npy_is_refused(tmp_path):
    np.savez(tmp_path / "a.npz", m=np.eye(3))
    with pytest.raises(DataError, match="not a .npy array"):
        read_mask_file(bad.write(tmp_path, "m.npy", (tmp_path / "a.npz").read_bytes()))


def test_npy_headers_that_lie_are_refused_without_allocating(tmp_path):
    """Found by tests/test_fuzz.py: a damaged header raised tokenize.TokenError; a header claiming a huge shape
    made numpy try to allocate it (MemoryError, or gigabytes when it is merely large)."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.eye(6, dtype=np.float32))
    good = buf.getvalue()
    for data, named in ((good.replace(b"{'descr'", b"z'descr'"), "not a .npy array"),
                        (good.replace(b"(6, 6)", b"(99999, 99999)"), "over the cap"),
                        (good.replace(b"(6, 6)", b"(6, 7)"), "cut or padded"),
                        (good[:-8], "cut or padded")):
        with pytest.raises(DataError, match=named):
            read_mask_file(bad.write(tmp_path, "m.npy", data))


def test_broken_and_huge_mask_images_are_refused(tmp_path):
    """Found by tests/test_fuzz.py: PIL raises ValueError ("Truncated IHDR chunk") on a damaged PNG header."""
    data = bytearray(bad.png_bytes((8, 8)))
    data[11] = 0x0C  # IHDR's length field says 12 bytes instead of 13
    for path, named in ((bad.write(tmp_path, "ihdr.png", bytes(data)), "Truncated IHDR"),
                        (bad.huge_png(tmp_path), "over the cap")):
        with pytest.raises(DataError, match=named):
            read_mask_file(path)


def test_a_pickled_npy_mask_is_refused_unread(tmp_path):
    path = bad.npy(tmp_path / "m.npy", np.array([bad.Payload()], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="cannot read mask"):
        read_mask_file(path)
    with pytest.raises(DataError, match="cannot read mask"):
        read_mask_file(bad.text_as_png(tmp_path))


@pytest.mark.parametrize("kind", sorted(bad.BAD_CLASS_LISTS))
def test_class_list_reader(tmp_path, kind):
    data, named = bad.BAD_CLASS_LISTS[kind]
    with pytest.raises(DataError, match=named):
        read_class_list(bad.write(tmp_path, "c.txt", data))


@pytest.mark.parametrize("kind", sorted(WEIGHT_FILES))
def test_weight_readers(tmp_path, tiny_backbone, kind):
    from dapt_core.backbones import load_backbone

    make, named = WEIGHT_FILES[kind]
    path = make(tmp_path)
    with pytest.raises((WeightFileError, UnsafeCheckpointError), match=named.split(" (")[0]):
        load_backbone("tiny-vit", weights_path=path, device="cpu")
    if check_weight_file_kind(path) != "safetensors" and "another model" not in kind:
        with pytest.raises((WeightFileError, UnsafeCheckpointError)):
            safe_torch_load(path)


def check_weight_file_kind(path: Path) -> str | None:
    try:
        return check_weight_file(path)
    except DaptError:
        return None


def test_prompt_set_readers(world, tmp_path, tiny_backbone):
    for path, named in ((bad.pickle_as_safetensors(tmp_path), "not a readable safetensors file"),
                        (bad.truncated_copy(world["prompts"], tmp_path, "t.safetensors"),
                         "not a readable safetensors file"),
                        (bad.safetensors_of_another_model(tmp_path), "has no DAPT prompt metadata"),
                        (bad.text_file(tmp_path, "x.pth"), "prompt sets are .safetensors files")):
        with pytest.raises(CheckpointError, match=named):
            load_prompt_set(path, tiny_backbone)


def test_train_prompts_refuses_bad_images_and_masks_before_an_epoch(world, tmp_path, tiny_backbone):
    learner = build_learner("coop", tiny_backbone, list(CLASSES), n_ctx=2)
    good = [Sample(p, 0, "red") for p in sorted((world["data"] / "train" / "red").glob("*.png"))]
    broken = Sample(bad.truncated_png(tmp_path), 0, "red")
    steps = []
    with pytest.raises(DataError, match="1 of the training images"):
        train_prompts(learner, good + [broken], TrainConfig(epochs=1), DaptConfig(), on_step=steps.append,
                      progress=False)
    with pytest.raises(DataError, match="1 of the validation images"):
        train_prompts(learner, good, TrainConfig(epochs=1), DaptConfig(), val_samples=[broken],
                      on_step=steps.append, progress=False)
    masks = tmp_path / "masks"
    for s in good:
        bad.mask_png(masks / s.path.relative_to(world["data"]), (24, 12))
    with pytest.raises(DataError, match="do not cover the same picture"):
        train_prompts(learner, good, TrainConfig(epochs=1), DaptConfig(cue="mask"),
                      masks=MaskFolder(masks, world["data"]), on_step=steps.append, progress=False)
    assert steps == []


# --- the app -------------------------------------------------------------------------------------------------------

@pytest.fixture()
def catalog(tmp_path, tiny_backbone, world):
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    (bundled / "plain.safetensors").write_bytes(world["prompts"].read_bytes())
    return support.PromptCatalog(tiny_backbone, bundled, tmp_path / "user")


@pytest.mark.parametrize("kind", sorted(bad.BAD_ZIPS))
def test_bad_zips(tmp_path, kind):
    members, named = bad.BAD_ZIPS[kind]
    archive = bad.zip_file(tmp_path / "in", "upload.zip", members)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(support.UploadError, match=named):
        support.extract_labelled_zip(archive, work / "images")
    assert tree(work) == [str(work)]  # nothing half-extracted
    assert not (tmp_path / "escape.png").exists() and not Path("/etc/escape.png").exists()


def test_zip_bomb_damaged_and_oversized_zips(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    limits = support.UploadLimits(max_total_bytes=2**20)
    for archive, named, lim in (
            (bad.zip_bomb(tmp_path / "in", 8 * 2**20), "unpacks to more than 1 MB", limits),
            (bad.zip_bomb(tmp_path / "in", 2**20 // 2, "one-big.zip"), "is larger than 0 MB",
             support.UploadLimits(max_file_bytes=2**18)),
            (bad.damaged_zip(tmp_path / "in"), "damaged zip file", support.UploadLimits()),
            # sizes that lie: zipfile stops at the declared size and the CRC check then fails
            (bad.lying_zip_bomb(tmp_path / "in", 8 * 2**20), "Bad CRC-32 for file 'dog/huge.png'", limits),
            (bad.text_file(tmp_path / "in", "fake.zip"), "is not a zip file", support.UploadLimits()),
            (bad.zip_file(tmp_path / "in", "big.zip", bad.good_members()), "is larger than",
             support.UploadLimits(max_zip_bytes=100))):
        with pytest.raises(support.UploadError, match=named):
            support.extract_labelled_zip(archive, work / "images", lim)
        assert tree(work) == [str(work)], archive.name
    assert (bad.zip_bomb(tmp_path / "in", 8 * 2**20)).stat().st_size < 64 * 2**10  # it is a bomb


def test_images_added_class_by_class_refuse_bad_files_and_keep_nothing(tmp_path):
    folder = tmp_path / "images"
    good = bad.write(tmp_path / "in", "ok.png", bad.png_bytes())
    for kind, make in sorted(bad.BAD_IMAGES.items()):
        broken = make(tmp_path / "gradio-temp" / "a1b2c3")  # where the app's uploads lie
        with pytest.raises(support.UploadError, match=broken.name) as caught:
            support.add_labelled_images([good, broken], "cat", folder)
        assert "gradio-temp" not in str(caught.value), kind  # no server path in what the visitor reads
        assert not folder.exists()
    for name in ("", "  ", "a/b", "..", ".hidden"):
        with pytest.raises(support.UploadError, match="class name"):
            support.add_labelled_images([good], name, folder)
    assert not folder.exists()


def test_uploaded_prompt_sets_that_are_bad_change_nothing(world, tmp_path, catalog):
    meta = read_info(world["prompts"]).meta
    cases = {"posing.safetensors": bad.pickle_as_safetensors(tmp_path / "in"),
             "cut.safetensors": bad.truncated_copy(world["prompts"], tmp_path / "in", "cut.safetensors"),
             "list.safetensors": bad.with_metadata(world["prompts"], tmp_path / "in", [meta], "list.safetensors"),
             "dog.safetensors": bad.with_metadata(world["prompts"], tmp_path / "in", dict(meta, classnames="dog"),
                                                  "dog.safetensors"),
             "other.safetensors": bad.safetensors_of_another_model(tmp_path / "in"),
             "notes.txt": bad.text_file(tmp_path / "in", "notes.txt")}
    before = tree(catalog.user_dir, catalog.folders["bundled"])
    for name, path in cases.items():
        with pytest.raises(support.UploadError) as caught:
            catalog.install(path, name)
        message = support.user_message(caught.value)
        assert name in message and str(tmp_path) not in message
    assert tree(catalog.user_dir, catalog.folders["bundled"]) == before


def test_app_handlers_show_plain_errors_without_server_paths(world, tmp_path, tiny_backbone, catalog):
    gr = pytest.importorskip("gradio")
    import app

    examples = support.Examples(tmp_path / "no-examples")
    h = app.Handlers(tiny_backbone, catalog, examples)
    upload = {"path": str(bad.pickle_as_safetensors(tmp_path / "gradio" / "f00d")), "orig_name": "mine.safetensors"}
    broken = bad.truncated_png(tmp_path / "gradio" / "beef")
    before = tree(catalog.user_dir, catalog.folders["bundled"])
    calls = {
        "upload a pickle": (lambda: h.upload_prompt_set(upload), "mine.safetensors"),
        "compare a truncated image": (lambda: h.compare(str(broken), ["bundled/plain"], "", "cam", "gradcam", ""),
                                      "truncated.png"),
        "compare with one class": (lambda: h.compare(str(world["data"] / "test" / "red" / "0.png"),
                                                     ["bundled/plain"], "dog", "cam", "gradcam", ""), "class"),
        "add a truncated image": (lambda: h.add_images([str(broken)], "cat", None), "truncated.png"),
    }
    for what, (call, named) in calls.items():
        with pytest.raises(gr.Error) as caught:
            call()
        message = caught.value.message
        assert named in message and str(tmp_path) not in message and message != support.INTERNAL_ERROR, what
    assert tree(catalog.user_dir, catalog.folders["bundled"]) == before


@pytest.mark.parametrize("field,value", [("shots", "inf"), ("shots", float("nan")), ("epochs", "two"),
                                         ("epochs", 2.5), ("seed", None), ("shots", [1])])
def test_training_form_numbers_that_are_no_whole_numbers(tmp_path, field, value):
    form = {"shots": 1, "epochs": 1, "seed": 1, field: value}
    archive = bad.zip_file(tmp_path / "in", "u.zip", bad.good_members())
    with pytest.raises(ValueError, match=f"{field} must be a whole number") as caught:
        support.request_from_form("zip", archive, "coop", "off", form["shots"], form["epochs"], "x", form["seed"],
                                  None, tmp_path / "work")
    assert support.user_message(caught.value) is not None  # shown to the visitor, not "went wrong on the server"
    assert not (tmp_path / "work").exists()  # refused before the zip was unpacked


@pytest.mark.parametrize("text,named", [("dog", "at least two"), ("dog, dog", "duplicate"), ("a, , ,", "at least two")])
def test_class_lists_typed_in_the_app(text, named):
    from dapt_core.learners import PromptError

    with pytest.raises(PromptError, match=named):
        support.parse_classnames(text)
    assert support.parse_classnames(" ,  ") is None


@pytest.mark.parametrize("name,data", [("0.npy", b""), ("0.npy", b"PK\x03\x04"), ("0.png", b"not a png")])
def test_unreadable_training_masks_are_refused_before_training(world, tmp_path, name, data):
    masks = tmp_path / "masks"
    sample = Sample(world["data"] / "train" / "red" / "0.png", 0, "red")
    bad.write(masks / "train" / "red", name, data)
    with pytest.raises(DataError, match="1 mask\\(s\\) cannot be read"):
        check_masks([sample], MaskFolder(masks, world["data"]))


@pytest.mark.parametrize("device,named", [("bogus", "unknown device 'bogus'"), ("cuda:7", "cuda:7")])
def test_a_device_this_machine_lacks_is_refused(world, tmp_path, capsys, device, named):
    import torch

    from dapt_core.backbones import BackboneError, load_backbone

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    with pytest.raises(BackboneError, match=named):
        load_backbone("tiny-vit", device=device)
    _refused(capsys, ["eval", "--prompts", str(world["prompts"]), "--data", f"imagefolder:{world['data']}",
                      "--device", device], named, tmp_path, world["root"])


def test_cuda_on_a_machine_without_one_is_refused():
    import torch

    from dapt_core.backbones import BackboneError, resolve_device

    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        return
    with pytest.raises(BackboneError, match="no CUDA GPU; use cpu"):
        resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_checked_image_is_looked_at_again_only_when_it_changes(tmp_path, monkeypatch):
    from dapt_core import preflight

    path = bad.write(tmp_path, "a.png", bad.png_bytes())
    looked = []
    real = preflight.image_problem
    monkeypatch.setattr(preflight, "image_problem", lambda p, m: looked.append(p) or real(p, m))
    check_images([Sample(path, 0, "x")])
    check_images([Sample(path, 0, "x")])
    assert looked == [path]
    bad.truncated_png(tmp_path, "a.png")  # the same name, now broken: looked at again and refused
    with pytest.raises(DataError, match="cannot be read"):
        check_images([Sample(path, 0, "x")])
    assert looked == [path, path]


@pytest.mark.parametrize("kind", ["parent path", "absolute path", "truncated image"])
def test_a_bad_zip_in_the_training_form_is_refused_and_leaves_nothing(tmp_path, kind):
    members, named = bad.BAD_ZIPS[kind]
    archive = bad.zip_file(tmp_path / "in", "upload.zip", members)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(support.UploadError, match=named) as caught:
        support.request_from_form("zip", archive, "coop", "off", 1, 1, "x", 1, None, work)
    assert tree(work) == [str(work)]
    assert str(tmp_path) not in support.user_message(caught.value)


@pytest.mark.parametrize("data,named", [(b"\x89PNG\r\n\x1a\n\xff\xfe", "not UTF-8 text"),
                                        (b"data: [1, 2\n  x: {", "cannot read grid config"),
                                        (b'!!python/object/apply:os.system ["echo ran"]\n', "cannot read grid config")])
def test_grid_configs_that_are_no_yaml_mapping(tmp_path, capsys, data, named):
    config = bad.write(tmp_path / "in", "grid.yaml", data)
    _refused(capsys, ["grid", str(config), "--dry-run", "--out", str(tmp_path / "out")], named, tmp_path)
