from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dapt_core.data.records import DataError, Sample
from dapt_core.data.masks import (
    CachedProvider,
    InMemoryMasks,
    MaskCache,
    MaskFolder,
    MaskProvider,
    image_hash,
)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_mask_folder_lookup(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    gray = np.zeros((4, 6), np.uint8)
    gray[:, :3] = 200
    gray[0, 0] = 100  # below the threshold
    write_png(masks / "cat" / "a.png", gray)
    np.save(masks / "cat" / "b.npy", np.full((4, 6), 0.25, np.float32))
    folder = MaskFolder(masks, images)
    assert isinstance(folder, MaskProvider)

    a = folder.get(0, Sample(images / "cat" / "a.jpg", 0, "cat"))
    assert a.dtype == np.float32 and a.shape == (4, 6)
    assert a[0, 0] == 0 and a[1, 0] == 1 and a[:, 3:].max() == 0
    b = folder.get(1, Sample(images / "cat" / "b.jpg", 0, "cat"))
    assert np.allclose(b, 0.25)  # float npy values are kept
    assert folder.get(2, Sample(images / "cat" / "c.jpg", 0, "cat")) is None
    with pytest.raises(DataError, match="not under"):
        folder.get(3, Sample(tmp_path / "elsewhere.jpg", 0, "cat"))
    with pytest.raises(DataError, match="missing"):
        MaskFolder(tmp_path / "missing", images)


def test_mask_folder_same_file_name(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_png(masks / "x.png", np.full((3, 3), 255, np.uint8))
    assert MaskFolder(masks, images).get(0, Sample(images / "x.png", 0, "c")).min() == 1.0


def test_mask_folder_rejects_out_of_range_npy(tmp_path):
    np.save(tmp_path / "m.npy", np.full((2, 2), 3.0, np.float32))
    with pytest.raises(DataError, match=r"m\.npy"):
        MaskFolder(tmp_path, tmp_path).get(0, Sample(tmp_path / "m.jpg", 0, "c"))


def test_in_memory_masks():
    masks = InMemoryMasks()
    assert masks.get(0, None) is None
    masks.set(0, np.ones((2, 3), bool))
    assert masks.get(0, None).dtype == np.float32 and 0 in masks and len(masks) == 1
    with pytest.raises(DataError, match="index 5"):
        masks.set(5, np.ones((2, 3, 3), np.float32))
    masks.clear()
    assert len(masks) == 0


def test_hash_follows_content_not_path(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"same bytes")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"same bytes")
    (tmp_path / "c.bin").write_bytes(b"other bytes")
    key = image_hash(tmp_path / "a.bin")
    assert key == image_hash(str(tmp_path / "sub" / "b.bin")) == image_hash(b"same bytes")
    assert key != image_hash(tmp_path / "c.bin")
    assert len(key) == 64 and int(key, 16) >= 0


def test_mask_cache_round_trip_and_atomic_write(tmp_path):
    cache = MaskCache(tmp_path / "cache")
    key = image_hash(b"image")
    assert key not in cache and cache.get(key) is None
    mask = np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 6)
    cache.put(key, mask)
    assert key in cache
    back = cache.get(key)
    assert back.dtype == np.float32 and back.shape == (4, 6)
    assert np.abs(back - mask).max() <= 0.5 / 255 + 1e-6
    stored = np.asarray(Image.open(cache.path_for(key)))
    assert stored.dtype == np.uint8 and stored.max() == 255 and stored.min() == 0
    cache.put(key, 1 - mask)  # overwrite in place
    assert np.allclose(cache.get(key), 1 - back, atol=1 / 255)
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files == [cache.path_for(key)]  # no temporary file left behind


def test_mask_cache_failed_write_leaves_nothing(tmp_path):
    cache = MaskCache(tmp_path)
    with pytest.raises(DataError):
        cache.put(image_hash(b"x"), np.full((2, 2), np.nan, np.float32))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    with pytest.raises(DataError, match="hex"):
        cache.get("../../etc/passwd")


def test_cached_provider_computes_once(tmp_path):
    image = tmp_path / "img.png"
    write_png(image, np.zeros((4, 4, 3), np.uint8))
    copy = tmp_path / "copy.png"
    copy.write_bytes(image.read_bytes())
    calls = []

    def compute(sample):
        calls.append(sample.path)
        return np.full((4, 4), 0.6, np.float32)

    cache = MaskCache(tmp_path / "cache")
    provider = CachedProvider(cache, compute)
    assert isinstance(provider, MaskProvider)
    first = provider.get(0, Sample(image, 0, "c"))
    second = provider.get(0, Sample(image, 0, "c"))
    third = provider.get(1, Sample(copy, 0, "c"))  # same content at another path
    assert calls == [image]
    assert np.array_equal(first, second) and np.array_equal(first, third)
    assert np.allclose(first, 0.6, atol=1 / 255)
    # A fresh provider over the same cache (a new run) computes nothing.
    assert np.array_equal(CachedProvider(cache, compute).get(0, Sample(image, 0, "c")), first)
    assert len(calls) == 1


def test_atomic_writes_leave_ordinary_permissions_and_nothing_on_failure(tmp_path):
    import os

    import pytest as _pytest

    from dapt_core.fileio import NEW_FILE_MODE, atomic_path, write_bytes_atomic

    target = write_bytes_atomic(tmp_path / "a.bin", b"first")
    assert os.stat(target).st_mode & 0o777 == NEW_FILE_MODE
    with _pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
