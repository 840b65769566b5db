import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dapt_core.data.dataset import PromptDataset
from dapt_core.data.folders import few_shot, list_coop_datasets, load_coop, load_imagefolder, parse_data_spec, subsample_classes
from dapt_core.data.records import DataError, DatasetSplits, Sample
from dapt_core.data.masks import InMemoryMasks

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def save_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def noise_image(path: Path, seed: int, size=(30, 20)) -> Path:
    return save_image(path, np.random.default_rng(seed).integers(0, 256, (*size, 3)))


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "flowers"
    for c, name in enumerate(["red_rose", "daisy", "tulip"]):
        for i in range(5):
            noise_image(root / name / f"img{i}.png", seed=10 * c + i)
    return root


# ---- image folders ----------------------------------------------------------------------------------------

def test_imagefolder_classes_labels_and_splits(image_folder):
    splits = load_imagefolder(image_folder, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert splits.classnames == ["daisy", "red rose", "tulip"]
    assert splits.num_classes == 3
    for split in (splits.train, splits.val, splits.test):
        assert sorted({s.label for s in split}) == [0, 1, 2]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 3)
    everything = splits.train + splits.val + splits.test
    assert len({s.path for s in everything}) == 15
    for s in everything:
        assert s.path.parent.name.replace("_", " ") == s.classname == splits.classnames[s.label]


def test_imagefolder_split_is_seeded(image_folder):
    a = load_imagefolder(image_folder, seed=0)
    b = load_imagefolder(image_folder, seed=0)
    assert a.test == b.test and a.train == b.train
    others = [load_imagefolder(image_folder, seed=s).test for s in range(1, 6)]
    assert any(o != a.test for o in others)


def test_imagefolder_extensions_case_insensitive(tmp_path):
    for name in ("a", "b"):
        noise_image(tmp_path / name / "x.PNG", 0)
        (tmp_path / name / "notes.txt").write_text("not an image")
    splits = load_imagefolder(tmp_path, test_fraction=0.0)
    assert [s.path.name for s in splits.train] == ["x.PNG", "x.PNG"]


def test_imagefolder_given_splits(tmp_path):
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for name in ("cat", "dog"):
            for i in range(n):
                noise_image(tmp_path / split / name / f"{i}.jpg", i)
    splits = load_imagefolder(tmp_path)
    assert splits.classnames == ["cat", "dog"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 4)
    assert all(s.path.parts[-3] == "test" for s in splits.test)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        load_imagefolder(tmp_path / "nowhere")
    noise_image(tmp_path / "only" / "a.png", 0)
    with pytest.raises(DataError, match="at least 2 class"):
        load_imagefolder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*no images"):
        load_imagefolder(tmp_path)


def test_imagefolder_given_split_with_unknown_class(tmp_path):
    for name in ("cat", "dog"):
        noise_image(tmp_path / "train" / name / "0.png", 0)
    noise_image(tmp_path / "test" / "cow" / "0.png", 0)
    with pytest.raises(DataError, match="cow"):
        load_imagefolder(tmp_path)


# ---- CoOp layouts -----------------------------------------------------------------------------------------

def test_coop_split_zhou(tmp_path):
    image_dir = tmp_path / "oxford_pets" / "images"
    names = ["abyssinian", "american bulldog"]
    content = {split: [] for split in ("train", "val", "test")}
    for i, split in enumerate(["train", "train", "val", "test"] * 2):
        label = i % 2
        rel = f"{names[label].replace(' ', '_')}_{i}.jpg"
        noise_image(image_dir / rel, i)
        content[split].append([rel, label, names[label]])
    (tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json").write_text(json.dumps(content))
    splits = load_coop("oxford_pets", tmp_path)
    assert splits.classnames == names
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 2, 2)
    assert all(s.path.is_file() and s.path.parent == image_dir for s in splits.train)
    assert splits.train[1].classname == "american bulldog" and splits.train[1].label == 1


def test_coop_fgvc_aircraft(tmp_path):
    base = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Cessna 172"]
    (base).mkdir()
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    for split, ids in (("train", ["0001", "0002", "0003"]), ("val", ["0004"]), ("test", ["0005", "0006"])):
        lines = []
        for k, imgid in enumerate(ids):
            noise_image(base / "images" / f"{imgid}.jpg", int(imgid))
            lines.append(f"{imgid} {variants[k % 3]}")
        (base / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    splits = load_coop("fgvc_aircraft", tmp_path)
    assert splits.classnames == variants
    assert [s.label for s in splits.train] == [0, 1, 2]
    assert splits.train[2].classname == "Cessna 172"
    assert splits.test[0].path == base / "images" / "0005.jpg"


def test_coop_imagenet(tmp_path):
    base = tmp_path / "imagenet"
    base.mkdir()
    (base / "classnames.txt").write_text("n02 goldfish\nn01 great white shark\n")
    for split, n in (("train", 2), ("val", 1)):
        for wnid in ("n01", "n02"):
            for i in range(n):
                noise_image(base / "images" / split / wnid / f"{wnid}_{i}.JPEG", i)
    splits = load_coop("imagenet", tmp_path)
    assert splits.classnames == ["great white shark", "goldfish"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 0, 2)
    assert {(s.label, s.path.parent.name) for s in splits.test} == {(0, "n01"), (1, "n02")}


def test_coop_errors(tmp_path):
    assert "eurosat" in list_coop_datasets() and len(list_coop_datasets()) == 11
    with pytest.raises(DataError, match="known: .*oxford_pets"):
        load_coop("pets", tmp_path)
    (tmp_path / "eurosat" / "2750").mkdir(parents=True)
    with pytest.raises(DataError, match=r"split_zhou_EuroSAT\.json.*CoOp"):
        load_coop("eurosat", tmp_path)
    (tmp_path / "dtd" / "dtd").mkdir(parents=True)
    with pytest.raises(DataError, match=r"dtd/dtd/images.*DATASETS\.md"):
        load_coop("dtd", tmp_path)


# ---- specs, few-shot, base/novel --------------------------------------------------------------------------

def test_parse_data_spec(image_folder, tmp_path):
    assert parse_data_spec(f"imagefolder:{image_folder}").classnames == ["daisy", "red rose", "tulip"]
    with pytest.raises(DataError, match="CoOp"):
        parse_data_spec(f"coop:eurosat:{tmp_path}")
    for bad in ("folder:/x", "imagefolder:", "coop:eurosat", "coop::/x", str(image_folder)):
        with pytest.raises(DataError, match="imagefolder:PATH.*coop:NAME:ROOT"):
            parse_data_spec(bad)


def make_samples(n_classes: int, per_class: int) -> list[Sample]:
    return [Sample(Path(f"/d/c{c}/{i:02d}.png"), c, f"class {c}")
            for c in range(n_classes) for i in range(per_class)]


def test_few_shot_k_per_class_and_determinism():
    samples = make_samples(4, 10)
    picked = few_shot(samples, 3, seed=1)
    assert [sum(s.label == c for s in picked) for c in range(4)] == [3, 3, 3, 3]
    assert len(set(picked)) == 12 and set(picked) <= set(samples)
    assert few_shot(list(reversed(samples)), 3, seed=1) == picked
    assert any(few_shot(samples, 3, seed=s) != picked for s in (2, 3, 4))


def test_few_shot_short_classes_and_all(caplog):
    samples = make_samples(2, 10) + [Sample(Path("/d/x.png"), 2, "rare")]
    with caplog.at_level("WARNING"):
        picked = few_shot(samples, 4, seed=0)
    assert sum(s.label == 2 for s in picked) == 1
    assert "rare" in caplog.text
    assert few_shot(samples, 0, seed=0) == samples and few_shot(samples, None, seed=0) == samples


def test_subsample_classes_base_novel():
    samples = make_samples(5, 2)
    splits = DatasetSplits("toy", [f"class {c}" for c in range(5)], samples, [], samples[:4])
    base = subsample_classes(splits, "base")
    novel = subsample_classes(splits, "novel")
    assert base.classnames == ["class 0", "class 1", "class 2"]
    assert novel.classnames == ["class 3", "class 4"]
    assert sorted({s.label for s in novel.train}) == [0, 1]
    assert all(novel.classnames[s.label] == s.classname for s in novel.train)
    assert len(base.train) == 6 and len(novel.train) == 4 and len(base.test) == 4 and novel.test == []
    assert subsample_classes(splits, "all") is splits
    with pytest.raises(DataError, match="novel"):
        subsample_classes(splits, "half")


# ---- PromptDataset ----------------------------------------------------------------------------------------

def test_dataset_shapes_dtypes_and_normalisation(tmp_path):
    colour = np.array([255, 0, 128])
    path = save_image(tmp_path / "solid.png", np.broadcast_to(colour, (30, 20, 3)))
    for train in (True, False):
        ds = PromptDataset([Sample(path, 2, "x")], image_size=16, mean=MEAN, std=STD, train=train)
        item = ds[0]
        assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, 16, 16) and torch.all(item["mask"] == 1)
        assert item["label"].dtype == torch.int64 and item["label"].item() == 2 and item["index"] == 0
        restored = item["image"] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
        expected = torch.tensor(colour / 255.0, dtype=torch.float32).view(3, 1, 1)
        assert torch.allclose(restored, expected.expand_as(restored), atol=1e-3)


def half_white_fixture(tmp_path, mask_scale: int):
    """A 48x96 image whose left half is white and right half black, and the mask of the left half."""
    height, width = 48, 96
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2] = 255
    path = save_image(tmp_path / "half.png", img)
    mask = np.zeros((height // mask_scale, width // mask_scale), np.float32)
    mask[:, : width // mask_scale // 2] = 1.0
    return path, mask


@pytest.mark.parametrize("mask_scale", [1, 2])
def test_mask_stays_aligned_under_train_augmentation(tmp_path, mask_scale):
    path, mask = half_white_fixture(tmp_path, mask_scale)
    masks = InMemoryMasks()
    for i in range(12):
        masks.set(i, mask)
    ds = PromptDataset([Sample(path, 0, "x")] * 12, image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                       train=True, masks=masks, seed=3)
    flipped = mixed = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(12):
            item = ds[i]
            img = item["image"][0] * 0.5 + 0.5  # back to [0, 1]
            m = item["mask"][0]
            assert 0.0 <= m.min() and m.max() <= 1.0
            clear = (img < 0.05) | (img > 0.95)  # pixels away from the black/white edge
            assert torch.equal(m[clear] > 0.5, img[clear] > 0.5)
            has_both = bool((img > 0.95).any() and (img < 0.05).any())
            mixed += has_both
            # white on the right means the view was flipped
            flipped += has_both and bool(img[:, -1].mean() > img[:, 0].mean())
    assert mixed >= 5 and flipped >= 1  # the check really saw crops across the edge, flipped and not


def test_train_augmentation_is_seeded(tmp_path):
    path = noise_image(tmp_path / "n.png", 0, size=(40, 50))
    make = lambda seed: PromptDataset([Sample(path, 0, "x")], image_size=16, mean=MEAN, std=STD,  # noqa: E731
                                      train=True, seed=seed)
    a, b = make(0), make(0)
    assert torch.equal(a[0]["image"], b[0]["image"])
    views = []
    for epoch in range(3):
        a.set_epoch(epoch)
        views.append(a[0]["image"])
    assert not torch.equal(views[0], views[1]) or not torch.equal(views[0], views[2])
    assert not torch.equal(make(1)[0]["image"], b[0]["image"])


def test_eval_view_is_centre_crop_with_aligned_mask(tmp_path):
    # 96 wide, 48 high: the centre crop keeps columns 24..72, so half of it is white.
    path, mask = half_white_fixture(tmp_path, 1)
    masks = InMemoryMasks()
    masks.set(0, mask)
    ds = PromptDataset([Sample(path, 0, "x")], image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3,
                       train=False, masks=masks)
    item = ds[0]
    img = item["image"][0] * 0.5 + 0.5
    assert img[:, :7].min() > 0.95 and img[:, 9:].max() < 0.05
    assert torch.all(item["mask"][0, :, :7] > 0.99) and torch.all(item["mask"][0, :, 9:] < 0.01)


def test_missing_mask_is_an_error_naming_the_image(tmp_path):
    path = noise_image(tmp_path / "lonely.png", 0)
    ds = PromptDataset([Sample(path, 0, "x")], image_size=8, mean=MEAN, std=STD, train=False,
                       masks=InMemoryMasks())
    with pytest.raises(DataError, match="lonely.png"):
        ds[0]


def test_mask_on_wrong_scale_is_rejected(tmp_path):
    path = noise_image(tmp_path / "img.png", 0)
    masks = InMemoryMasks()
    masks._masks[0] = np.full((30, 20), 255.0, np.float32)  # bypass set()'s own check
    ds = PromptDataset([Sample(path, 0, "x")], image_size=8, mean=MEAN, std=STD, train=False, masks=masks)
    with pytest.raises(DataError, match=r"img\.png.*\[0, 1\]"):
        ds[0]


def test_full_view_squashes_whole_image(tmp_path):
    path, _ = half_white_fixture(tmp_path, 1)
    ds = PromptDataset([Sample(path, 0, "x")], image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3, train=True)
    image, size = ds.full_view(0)
    assert size == (48, 96)
    assert image.shape == (3, 16, 16)
    img = image[0] * 0.5 + 0.5
    assert img[:, :7].min() > 0.95 and img[:, 9:].max() < 0.05  # left half white across 8 of 16 columns


def test_unreadable_image_is_an_error(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png")
    ds = PromptDataset([Sample(path, 0, "x")], image_size=8, mean=MEAN, std=STD, train=False)
    with pytest.raises(DataError, match="broken.png"):
        ds[0]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((30, 20, 3), np.uint8))  # 20 wide, 30 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to display
    img.save(tmp_path / "rotated.jpg", exif=exif)
    ds = PromptDataset([Sample(tmp_path / "rotated.jpg", 0, "x")], image_size=8, mean=MEAN, std=STD,
                       train=False)
    assert ds.full_view(0)[1] == (20, 30)  # (H, W) of the upright image
