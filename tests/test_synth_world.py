"""Tests of the synthetic world: rendering, exact masks, determinism, the spurious task and export."""

from __future__ import annotations

import itertools
import json
import os

import cv2
import numpy as np
import pytest

from dapt_core.world import (
    BACKGROUND_CLASSES,
    CAPTION_TEMPLATES,
    COLOURS,
    METADATA_NAME,
    OBJECT_CLASSES,
    ObjectPose,
    UnknownClassError,
    choose_colour,
    default_mask_root,
    TASK_SPLITS,
    export_imagefolder,
    export_task,
    generate,
    load_scenes,
    make_caption,
    make_task,
    read_mask,
    render_background,
    render_object_mask,
    render_scene,
    sample_pose,
    spurious_pairing,
)
from dapt_core.world import export as export_module


def _same_scenes(a, b) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.image, y.image)
        and np.array_equal(x.mask, y.mask)
        and (x.object, x.background, x.colour, x.caption) == (y.object, y.background, y.colour, y.caption)
        for x, y in zip(a, b)
    )


def test_class_lists_meet_the_brief():
    assert len(OBJECT_CLASSES) >= 10 and len(set(OBJECT_CLASSES)) == len(OBJECT_CLASSES)
    assert len(BACKGROUND_CLASSES) >= 8 and len(set(BACKGROUND_CLASSES)) == len(BACKGROUND_CLASSES)
    official = {"ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea",
                "railway", "railroad", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley",
                "bridge"}
    assert set(BACKGROUND_CLASSES) <= official
    assert len(CAPTION_TEMPLATES) >= 8 and all("{object}" in t for t in CAPTION_TEMPLATES)


def test_generate_is_deterministic_per_seed():
    first, again, other = generate(12, seed=3), generate(12, seed=3), generate(12, seed=4)
    assert _same_scenes(first, again)
    assert not any(np.array_equal(x.image, y.image) for x, y in zip(first, other))


def test_scene_decomposes_into_background_and_exact_mask():
    for seed, (obj, bg) in enumerate(zip(OBJECT_CLASSES, BACKGROUND_CLASSES)):
        scene = render_scene(obj, bg, 64, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        background = render_background(bg, 64, rng)
        mask = render_object_mask(obj, 64, sample_pose(64, rng))
        assert np.array_equal(scene.mask, mask)
        assert np.array_equal(scene.image[~mask], background[~mask])
        assert (scene.image[mask] == np.array(COLOURS[scene.colour], dtype=np.uint8)).all()


def test_forced_colour_keeps_the_rest_of_the_scene():
    free = render_scene("star", "grass", 64, np.random.default_rng(7))
    forced = render_scene("star", "grass", 64, np.random.default_rng(7), colour="green")
    assert forced.colour == "green" and free.colour != "green"  # green never contrasts with grass
    assert np.array_equal(free.mask, forced.mask)
    assert np.array_equal(free.image[~free.mask], forced.image[~forced.mask])
    assert (forced.image[forced.mask] == np.array(COLOURS["green"], dtype=np.uint8)).all()


@pytest.mark.parametrize("size", [32, 64, 128])
def test_every_pair_renders_at_every_size(size):
    rng = np.random.default_rng(size)
    for obj, bg in itertools.product(OBJECT_CLASSES, BACKGROUND_CLASSES):
        scene = render_scene(obj, bg, size, rng)
        assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
        assert scene.mask.shape == (size, size) and scene.mask.dtype == bool
        assert 0 < scene.mask.sum() < 0.6 * size * size
        # The object's disk stays inside the frame, so the border rows and columns are background.
        assert not (scene.mask[0].any() or scene.mask[-1].any() or scene.mask[:, 0].any() or scene.mask[:, -1].any())
        assert (scene.object, scene.background) == (obj, bg)
        assert obj in scene.caption and scene.colour in COLOURS


def test_object_mask_is_pure_and_classes_differ_at_one_pose():
    pose = ObjectPose(cx=31.5, cy=31.5, radius=24.0, angle=0.3)
    masks = {obj: render_object_mask(obj, 64, pose) for obj in OBJECT_CLASSES}
    for obj in OBJECT_CLASSES:
        assert np.array_equal(masks[obj], render_object_mask(obj, 64, pose))
    for a, b in itertools.combinations(OBJECT_CLASSES, 2):
        iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert iou < 0.9, (a, b, iou)
    assert masks["ring"][32, 32] == 0 and masks["circle"][32, 32] == 1  # the ring has a hole


def _shape_features(mask: np.ndarray) -> np.ndarray:
    """Rotation- and scale-free outline features: solidity, circularity, elongation, holes."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    outer = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(outer)
    width, height = cv2.minAreaRect(outer)[1]
    return np.array([
        area / cv2.contourArea(cv2.convexHull(outer)),
        4 * np.pi * area / cv2.arcLength(outer, True) ** 2,
        min(width, height) / max(width, height),
        len(contours) - 1,
    ])


def _nearest_centroid_accuracy(train: np.ndarray, test: np.ndarray) -> float:
    """train, test: (classes, samples, features); accuracy of nearest standardised class mean."""
    centroids, scale = train.mean(axis=1), train.reshape(-1, train.shape[-1]).std(axis=0) + 1e-9
    distance = (((test[:, :, None, :] - centroids[None, None]) / scale) ** 2).sum(axis=-1)
    return float((distance.argmin(axis=-1) == np.arange(len(train))[:, None]).mean())


def test_objects_are_told_apart_by_outline_alone():
    rng = np.random.default_rng(0)

    def features(count: int) -> np.ndarray:
        return np.array([[_shape_features(render_object_mask(o, 64, sample_pose(64, rng))) for _ in range(count)]
                         for o in OBJECT_CLASSES])

    assert _nearest_centroid_accuracy(features(20), features(20)) >= 0.85


def test_backgrounds_are_told_apart_by_simple_statistics():
    rng = np.random.default_rng(0)

    def features(count: int) -> np.ndarray:
        rows = []
        for bg in BACKGROUND_CLASSES:
            images = [render_background(bg, 64, rng).astype(np.float32) for _ in range(count)]
            rows.append([np.concatenate([im.mean((0, 1)), im.std((0, 1)), [np.abs(np.diff(im, axis=1)).mean(),
                                                                          np.abs(np.diff(im, axis=0)).mean()]])
                         for im in images])
        return np.array(rows)

    assert _nearest_centroid_accuracy(features(12), features(12)) >= 0.95


def test_colour_choice_avoids_the_background_colour():
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        pixels = np.tile(np.array(rgb, dtype=np.uint8), (50, 1))
        assert all(choose_colour(pixels, rng) != name for _ in range(30))


def test_captions_use_articles_and_name_the_background():
    assert make_caption("arrow", "orange", "road", "a photo of a {colour} {object} on {background}.") == \
        "a photo of an orange arrow on a road."
    for template in CAPTION_TEMPLATES:
        text = make_caption("star", "red", "railway", template)
        assert "star" in text and ("railway" in text) == ("{background}" in template)
        assert "{" not in text


def test_bad_arguments_raise_clear_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(UnknownClassError, match="object.*'blob'.*circle"):
        render_scene("blob", "grass", 64, rng)
    with pytest.raises(UnknownClassError, match="background.*'moon'"):
        render_scene("star", "moon", 64, rng)
    with pytest.raises(ValueError, match="size"):
        render_scene("star", "grass", 8, rng)
    with pytest.raises(ValueError, match="colour.*'mauve'"):
        render_scene("star", "grass", 64, rng, colour="mauve")
    with pytest.raises(ValueError, match="n:"):
        generate(-1, seed=0)
    with pytest.raises(ValueError, match="either backgrounds or pairing"):
        generate(2, seed=0, backgrounds=["sky"], pairing={"star": "sky"})
    with pytest.raises(ValueError, match="pairing.*circle"):
        generate(2, seed=0, objects=["circle", "star"], pairing={"star": "sky"})


def test_generate_with_pairing_and_balanced_objects():
    pairing = {"star": "sky", "ring": "wall"}
    scenes = generate(6, seed=1, pairing=pairing)
    assert [s.object for s in scenes] == ["star", "ring"] * 3
    assert all(s.background == pairing[s.object] for s in scenes)
    mixed = generate(40, seed=1, objects=["heart"], backgrounds=["rock", "road"])
    assert {s.background for s in mixed} == {"rock", "road"} and {s.object for s in mixed} == {"heart"}


def test_pairing_is_one_to_one_when_possible_and_even_otherwise():
    pairing = spurious_pairing(5)
    assert list(pairing) == list(OBJECT_CLASSES) and len(set(pairing.values())) == len(OBJECT_CLASSES)
    assert pairing == spurious_pairing(5)
    assert any(spurious_pairing(seed) != pairing for seed in range(5))
    crowded = spurious_pairing(0, OBJECT_CLASSES, ["sky", "wall", "grass"])
    counts = [list(crowded.values()).count(bg) for bg in ("sky", "wall", "grass")]
    assert sum(counts) == len(OBJECT_CLASSES) and max(counts) - min(counts) <= 1


def test_spurious_task_splits():
    n_bg = len(BACKGROUND_CLASSES)
    task = make_task(seed=2, shots=2, size=32, n_test=n_bg)
    n_cls = len(task.classnames)
    assert task.pairing == spurious_pairing(2)
    assert len(task.train) == 2 * n_cls
    assert len(task.test_aligned) == len(task.test_conflicting) == len(task.test_balanced) == n_bg * n_cls
    assert all(s.background == task.pairing[s.object] for s in task.train + task.test_aligned)
    assert all(s.background != task.pairing[s.object] for s in task.test_conflicting)
    for obj in task.classnames:
        assert {s.background for s in task.test_balanced if s.object == obj} == set(BACKGROUND_CLASSES)
    assert np.array_equal(np.bincount(task.labels(task.train)), np.full(n_cls, 2))
    train_bytes = {s.image.tobytes() for s in task.train}
    tests = task.test_aligned + task.test_conflicting + task.test_balanced
    assert not any(s.image.tobytes() in train_bytes for s in tests)


def test_spurious_task_is_deterministic_and_validates():
    a = make_task(seed=9, shots=1, size=32, n_test=2, objects=["circle", "star"], backgrounds=["sky", "rock"])
    b = make_task(seed=9, shots=1, size=32, n_test=2, objects=["circle", "star"], backgrounds=["sky", "rock"])
    for split in ("train", "test_aligned", "test_conflicting", "test_balanced"):
        assert _same_scenes(getattr(a, split), getattr(b, split))
    with pytest.raises(ValueError, match="backgrounds"):
        make_task(seed=0, shots=1, backgrounds=["sky"])
    with pytest.raises(ValueError, match="shots"):
        make_task(seed=0, shots=0)
    with pytest.raises(ValueError, match="seed"):
        make_task(seed=-1, shots=1)


def test_export_round_trip(tmp_path):
    scenes = generate(8, seed=0, size=32)
    root = tmp_path / "train"
    result = export_imagefolder(scenes, root)
    assert result.mask_root == default_mask_root(root) == tmp_path / "train_masks"
    for index, (scene, path) in enumerate(zip(scenes, result.image_paths)):
        assert path == root / scene.object / f"{index:05d}.png"
        relative = path.relative_to(root)
        raw = cv2.imread(str(result.mask_root / relative), cv2.IMREAD_UNCHANGED)
        assert raw.ndim == 2 and set(np.unique(raw)) <= {0, 255}
        assert np.array_equal(read_mask(result.mask_root / relative), scene.mask)
    assert _same_scenes(load_scenes(root), scenes)
    lines = (root / METADATA_NAME).read_text().splitlines()
    assert [json.loads(line)["caption"] for line in lines] == [s.caption for s in scenes]
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(FileExistsError, match="root"):
        export_imagefolder(scenes, root)


def test_export_leaves_no_partial_file_when_a_write_fails(tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(export_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        export_imagefolder(generate(1, seed=0, size=32), tmp_path / "out")
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []
    assert not os.path.exists(tmp_path / "out" / METADATA_NAME)


def test_export_task_mirrors_images_and_masks(tmp_path):
    task = make_task(seed=0, shots=1, size=32, n_test=1, objects=["circle", "star"], backgrounds=["sky", "rock"])
    exports = export_task(task, tmp_path / "task")
    assert set(exports) == set(TASK_SPLITS)
    for split, result in exports.items():
        assert result.image_root == tmp_path / "task" / split
        assert result.mask_root == tmp_path / "task_masks" / split
        assert sorted(p.name for p in result.image_root.iterdir() if p.is_dir()) == ["circle", "star"]
        assert _same_scenes(load_scenes(result.image_root, result.mask_root), getattr(task, split))


def test_example_images_read_back_as_given(tmp_path):
    from PIL import Image

    from dapt_core.world.export import write_example_images

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image[0, 0] = (250, 10, 40)  # channels that differ: an RGB/BGR swap shows
    mask = np.zeros((8, 8), bool)
    mask[2:5, 1:4] = True
    paths = write_example_images(tmp_path, ("a.png", "a_mask.png", "a_big.png"), image, mask, 32)
    assert [p.name for p in paths] == ["a.png", "a_mask.png", "a_big.png"]
    assert (np.asarray(Image.open(paths[0])) == image).all()
    assert (np.asarray(Image.open(paths[1])) == mask.astype(np.uint8) * 255).all()
    big = np.asarray(Image.open(paths[2]))
    assert big.shape == (32, 32, 3) and (big[::4, ::4] == image).all() and (big[3::4, 3::4] == image).all()
