"""Property-based fuzzing of the readers of untrusted input: images, masks, zips, class lists and checkpoints.

Each reader, given any bytes (random, or a valid file truncated, with bytes flipped or inserted), either returns
a value of the documented form or raises the library's error type (:class:`~dapt_core.errors.DaptError`) with a
message; never another exception, and never a file outside its target folder.

Bounded in CI by the ``ci`` profile (few examples, no deadline); ``HYPOTHESIS_PROFILE=long`` or
``python benchmarks/fuzz.py`` runs many more.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402
from PIL import Image  # noqa: E402

import bad_inputs as bad  # noqa: E402
from dapt_core.app_support.uploads import UploadError, UploadLimits, extract_labelled_zip  # noqa: E402
from dapt_core.checkpoint import METADATA_KEY, CheckpointError, load_prompt_set, read_info, save_prompt_set  # noqa: E402
from dapt_core.data.folders import read_class_list  # noqa: E402
from dapt_core.data.masks import read_mask_file  # noqa: E402
from dapt_core.errors import DaptError  # noqa: E402
from dapt_core.imageio import load_image  # noqa: E402
from dapt_core.learners import build_learner  # noqa: E402
from dapt_core.preflight import image_problem  # noqa: E402
from dapt_core.prompt_meta import metadata_problems  # noqa: E402
from dapt_core.weights import check_weight_file, safe_torch_load  # noqa: E402
from dapt_core.weights.safe_load import KINDS  # noqa: E402

CI_EXAMPLES = 25  # per property in CI: a few seconds each on two cores
LONG_EXAMPLES = int(os.environ.get("DAPT_FUZZ_EXAMPLES", "2000"))  # per property in the long run (benchmarks/fuzz.py)
# no example database (a failure prints its shrunk input); hypothesis keeps only its constants cache in
# .hypothesis/, which git ignores through the .gitignore hypothesis writes there
settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=LONG_EXAMPLES, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SMALL_LIMITS = UploadLimits(max_zip_bytes=2**20, max_total_bytes=2**20, max_file_bytes=2**18, max_files=20,
                            max_pixels=2**16)


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """``base`` truncated, with bytes flipped, or with random bytes inserted (one to three edits)."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["truncate", "flip", "insert"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if how == "truncate":
            del data[at:]
        elif how == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def any_bytes(*valid: bytes):
    """Random bytes, or one of the valid files mutated."""
    return st.one_of(st.binary(max_size=512), *[mutated(v) for v in valid])


def _file(data: bytes, name: str) -> tuple[tempfile.TemporaryDirectory, Path]:
    folder = tempfile.TemporaryDirectory()
    path = Path(folder.name) / name
    path.write_bytes(data)
    return folder, path


PNG, JPEG = bad.png_bytes((16, 12)), bad.jpeg_bytes((16, 12))


# --- images ----------------------------------------------------------------------------------------------------

@given(any_bytes(PNG, JPEG))
def test_image_reader_returns_rgb_or_says_why(data):
    try:
        image = load_image(data, max_pixels=SMALL_LIMITS.max_pixels)
    except DaptError as err:
        assert str(err).startswith("<image bytes>")
    else:
        assert image.mode == "RGB" and image.width * image.height <= SMALL_LIMITS.max_pixels


@given(any_bytes(PNG, JPEG), st.sampled_from([".png", ".jpg"]))
def test_image_check_never_raises(data, suffix):
    folder, path = _file(data, "x" + suffix)
    with folder:
        problem = image_problem(path, SMALL_LIMITS.max_pixels)
        assert problem is None or (isinstance(problem, str) and str(path) not in problem)
        if problem is None:  # what the check lets through opens
            assert load_image(path).mode == "RGB"


@given(hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.int64, np.float32, np.float64, np.bool_, np.int8]),
                  hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6)))
def test_image_arrays_become_rgb_or_say_why(array):
    try:
        image = load_image(array)
    except DaptError:
        return
    assert image.mode == "RGB" and (image.height, image.width) == array.shape[:2]


# --- masks -----------------------------------------------------------------------------------------------------

def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


MASK_PNG = bad.png_bytes((8, 8))
MASK_NPY = _npy(np.eye(6, dtype=np.float32))


@given(any_bytes(MASK_PNG, MASK_NPY), st.sampled_from([".png", ".npy"]))
def test_mask_reader_returns_a_mask_or_says_why(data, suffix):
    folder, path = _file(data, "m" + suffix)
    with folder:
        try:
            mask = read_mask_file(path)
        except DaptError as err:
            assert "mask" in str(err)
            return
        assert mask.dtype == np.float32 and mask.ndim == 2 and mask.size > 0
        assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0


@given(hnp.arrays(st.sampled_from([np.uint8, np.int32, np.float32, np.float64, np.bool_]),
                  hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)))
def test_mask_arrays_become_masks_or_say_why(array):
    folder, path = _file(_npy(array), "m.npy")
    with folder:
        try:
            mask = read_mask_file(path)
        except DaptError:
            return
        assert mask.ndim == 2 and np.all((mask >= 0) & (mask <= 1))


# --- zips ------------------------------------------------------------------------------------------------------

NAME_PARTS = st.sampled_from(["cat", "dog", "..", ".", "", "/", "\\", "C:", "__MACOSX", ".hidden", "a b", "é", "x"])
MEMBER_NAMES = st.lists(NAME_PARTS, min_size=1, max_size=4).map("/".join).flatmap(
    lambda stem: st.sampled_from([".png", ".jpg", ".txt", ""]).map(lambda ext: stem + ext))


@st.composite
def zips(draw) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in draw(st.lists(MEMBER_NAMES, max_size=6)):
            data = draw(st.sampled_from([PNG, JPEG, b"", b"text"]))
            try:
                zf.writestr(name, data)
            except (ValueError, UnicodeEncodeError, IndexError):  # names zipfile itself cannot write ("")
                pass
    return buf.getvalue()


@given(st.one_of(zips(), mutated(bad.zip_file(Path(tempfile.mkdtemp()), "z.zip", bad.good_members()).read_bytes()),
                 st.binary(max_size=256)))
def test_zip_reader_writes_only_checked_class_folders_inside_its_target(data):
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        archive = root / "in" / "upload.zip"
        archive.parent.mkdir()
        archive.write_bytes(data)
        work = root / "work"
        work.mkdir()
        try:
            dest = extract_labelled_zip(archive, work / "images", SMALL_LIMITS)
        except UploadError:
            assert sorted(p.name for p in work.iterdir()) == []  # nothing half-extracted
        else:
            files = [p for p in dest.rglob("*") if p.is_file()]
            assert files and all(len(p.relative_to(dest).parts) >= 2 for p in files)  # each under a class
            assert all(image_problem(p) is None for p in files)
            assert len({p.parent for p in files}) >= 2
        assert sorted(p.name for p in root.iterdir()) == ["in", "work"]  # nothing landed outside work/


# --- class lists -----------------------------------------------------------------------------------------------

@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
                 st.lists(st.text(max_size=12), max_size=6).map(lambda names: "\n".join(names).encode())))
def test_class_list_reader_returns_distinct_names_or_says_why(data):
    folder, path = _file(data, "classes.txt")
    with folder:
        try:
            names = read_class_list(path)
        except DaptError as err:
            assert "class list" in str(err)
            return
        assert len(names) >= 2 and len(set(names)) == len(names)
        assert all(n == n.strip() and n and "," not in n and "\n" not in n for n in names)


# --- checkpoints -----------------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=3), max_leaves=12)


@pytest.fixture(scope="module")
def prompt_set(tmp_path_factory, tiny_backbone):
    path = tmp_path_factory.mktemp("fuzz") / "p.safetensors"
    return save_prompt_set(build_learner("coop", tiny_backbone, ["cat", "dog"], n_ctx=2), path)


def _meta_edits(meta: dict):
    """The stored metadata with one field replaced, removed or added, by any JSON."""
    keys = st.sampled_from(sorted(meta) + ["extra"])
    return st.one_of(
        st.tuples(keys, JSON).map(lambda kv: {**meta, kv[0]: kv[1]}),
        keys.map(lambda k: {key: v for key, v in meta.items() if key != k}),
        st.tuples(st.sampled_from(sorted(meta["learner_options"]) + ["depth"]), JSON).map(
            lambda kv: {**meta, "learner_options": {**meta["learner_options"], kv[0]: kv[1]}}),
        JSON)


@given(data=st.data())
def test_prompt_set_reader_checks_any_metadata(prompt_set, tiny_backbone, data):
    meta = data.draw(_meta_edits(read_info(prompt_set).meta))
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "edited.safetensors"
        save_file(load_file(str(prompt_set)), str(path), metadata={METADATA_KEY: json.dumps(meta)})
        try:
            info = read_info(path)
        except CheckpointError as err:
            assert "edited.safetensors" in str(err)
            return
        assert metadata_problems(info.meta) == []
        try:
            learner = load_prompt_set(path, tiny_backbone)
        except CheckpointError:
            return
        assert learner.classnames == [" ".join(n.split()) for n in info.meta["classnames"]]


@given(data=st.data())
def test_prompt_set_reader_refuses_damaged_files(prompt_set, tiny_backbone, data):
    raw = data.draw(mutated(prompt_set.read_bytes()))
    folder, path = _file(raw, "damaged.safetensors")
    with folder:
        try:
            load_prompt_set(path, tiny_backbone)
        except CheckpointError:
            pass


def _torch_zip() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"weight": torch.arange(6.0)}, buf)
    return buf.getvalue()


@given(any_bytes(_torch_zip(), MASK_NPY))
def test_weight_file_readers_return_tensors_or_say_why(data):
    folder, path = _file(data, "w.pth")
    with folder:
        try:
            kind = check_weight_file(path)
        except DaptError:
            kind = None
        assert kind is None or kind in KINDS
        try:
            state = safe_torch_load(path)
        except DaptError:
            return
        assert isinstance(state, dict) and kind in ("torch-zip", "torch-legacy")


@given(st.binary(max_size=64), st.integers(0, 2**40))
def test_safetensors_headers_of_any_length_are_refused_not_read(tail, size):
    folder, path = _file(size.to_bytes(8, "little") + tail, "w.safetensors")
    with folder:
        try:
            kind = check_weight_file(path)
        except DaptError:
            return
        assert kind == "safetensors"


def test_a_profile_bounds_ci():
    assert settings().max_examples in (CI_EXAMPLES, LONG_EXAMPLES) and settings().deadline is None
    assert Image.MAX_IMAGE_PIXELS is not None
