"""A corpus of bad inputs, made on the spot: truncated, of the wrong type, huge, hostile zips, pickles posing as
weights, odd masks and bad class lists. Each maker writes one file into a folder and returns its path."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

HUGE_SIDE = (8000, 6000)  # 48 M pixels, over the readers' 40 M cap; as a 1-bit PNG of zeros it is a few KB


def png_bytes(size: tuple[int, int] = (32, 32), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


# --- images -----------------------------------------------------------------------------------------------------

def truncated_png(folder: Path, name: str = "truncated.png") -> Path:
    data = png_bytes()
    return write(folder, name, data[: len(data) // 2])


def truncated_jpeg(folder: Path, name: str = "truncated.jpg") -> Path:
    data = jpeg_bytes()
    return write(folder, name, data[: len(data) // 2])


def text_as_png(folder: Path, name: str = "notes.png") -> Path:
    return write(folder, name, b"these are my holiday notes, not a picture\n" * 10)


def empty_png(folder: Path, name: str = "empty.png") -> Path:
    return write(folder, name, b"")


def huge_png(folder: Path, name: str = "huge.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("1", HUGE_SIDE).save(folder / name)
    return folder / name


BAD_IMAGES = {"truncated png": truncated_png, "truncated jpeg": truncated_jpeg, "text named .png": text_as_png,
              "empty file": empty_png, "48 MP decompression bomb": huge_png}


# --- weights and prompt sets ------------------------------------------------------------------------------------

PAYLOAD_RAN = "this ran while loading"


class Payload:
    """A class a pickle would have to import and call: what no loader here may ever do (it would print)."""

    def __reduce__(self):
        return (print, (PAYLOAD_RAN,))


def pickle_file(folder: Path, name: str = "model.pth") -> Path:
    return write(folder, name, pickle.dumps({"weight": Payload()}))


def torch_pickle_of_objects(folder: Path, name: str = "objects.pth") -> Path:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(2), "payload": Payload()}, folder / name)
    return folder / name


def pickle_as_safetensors(folder: Path, name: str = "posing.safetensors") -> Path:
    return write(folder, name, pickle.dumps({"ctx": [0.0] * 8}))


def garbage(folder: Path, name: str = "garbage.bin", n: int = 4096) -> Path:
    data = np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes()
    return write(folder, name, b"\x07" + data[1:])  # never a pickle's first byte


def text_file(folder: Path, name: str = "readme.txt") -> Path:
    return write(folder, name, b"model weights coming soon\n")


def safetensors_of_another_model(folder: Path, name: str = "other.safetensors") -> Path:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"encoder.weight": torch.zeros(4, 4)}, str(folder / name))
    return folder / name


def torch_zip_of_another_model(folder: Path, name: str = "other.pth") -> Path:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"encoder.weight": torch.zeros(4, 4)}, folder / name)
    return folder / name


def zip_of_images(folder: Path, name: str = "images.pth") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / name, "w") as zf:
        zf.writestr("cat/1.png", png_bytes())
    return folder / name


def truncated_copy(src: Path, folder: Path, name: str | None = None) -> Path:
    data = src.read_bytes()
    return write(folder, name or f"truncated-{src.name}", data[: len(data) // 2])


def with_metadata(src: Path, folder: Path, meta: object, name: str = "edited.safetensors") -> Path:
    """A copy of a prompt set's tensors with other metadata (any JSON)."""
    from safetensors.torch import load_file, save_file

    from dapt_core.checkpoint import METADATA_KEY

    folder.mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(src)), str(folder / name), metadata={METADATA_KEY: json.dumps(meta)})
    return folder / name


# --- zips -------------------------------------------------------------------------------------------------------

def zip_file(folder: Path, name: str, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / name, "w", compression) as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return folder / name


def good_members() -> dict[str, bytes]:
    return {"cat/1.png": png_bytes(seed=1), "cat/2.png": png_bytes(seed=2), "dog/1.png": png_bytes(seed=3)}


def zip_bomb(folder: Path, unpacked_bytes: int, name: str = "bomb.zip") -> Path:
    """A zip whose one image member unpacks to ``unpacked_bytes`` of zeros from a few KB."""
    return zip_file(folder, name, {"cat/1.png": png_bytes(), "dog/huge.png": bytes(unpacked_bytes)})


def lying_zip_bomb(folder: Path, unpacked_bytes: int, declared_bytes: int = 1000, name: str = "lying.zip") -> Path:
    """A zip bomb whose headers claim its big member unpacks to ``declared_bytes``, so a size check believes it."""
    import struct

    path = zip_bomb(folder, unpacked_bytes, name)
    real, claimed = struct.pack("<I", unpacked_bytes), struct.pack("<I", declared_bytes)
    data = path.read_bytes()
    assert data.count(real) == 2  # the local header and the central directory
    path.write_bytes(data.replace(real, claimed))
    return path


BAD_ZIPS = {
    "parent path": ({**good_members(), "../escape.png": png_bytes()}, "unsafe path"),
    "nested parent path": ({**good_members(), "cat/../../escape.png": png_bytes()}, "unsafe path"),
    "absolute path": ({**good_members(), "/etc/escape.png": png_bytes()}, "unsafe path"),
    "one class": ({"cat/1.png": png_bytes(), "cat/2.png": png_bytes(seed=1)}, "at least two classes"),
    "loose image": ({"cat/1.png": png_bytes(), "dog/1.png": png_bytes(), "x.png": png_bytes()},
                    "not inside a class folder"),
    "no images": ({"cat/readme.txt": b"hi", "dog/notes.txt": b"ho"}, "holds no images"),
    "a text file named .png": ({**good_members(), "dog/2.png": b"not an image"}, "dog/2.png is not a readable"),
    "truncated image": ({**good_members(), "dog/2.png": png_bytes()[:60]}, "dog/2.png is not a readable"),
}


def damaged_zip(folder: Path, name: str = "damaged.zip") -> Path:
    """A zip whose first member's deflate data is overwritten (the central directory still reads)."""
    path = zip_file(folder, name, good_members())
    data = bytearray(path.read_bytes())
    start = 30 + len("cat/1.png") + 10  # past the first local header
    data[start:start + 40] = b"\xff" * 40
    path.write_bytes(bytes(data))
    return path


# --- masks and class lists --------------------------------------------------------------------------------------

def mask_png(path: Path, size: tuple[int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[size[1] // 4: 3 * size[1] // 4, size[0] // 4: 3 * size[0] // 4] = 255
    Image.fromarray(mask).save(path)
    return path


def npy(path: Path, array: np.ndarray, allow_pickle: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array, allow_pickle=allow_pickle)
    return path


BAD_MASK_ARRAYS = {
    "3-D array": (np.zeros((4, 4, 3), np.float32), "must be a 2-D"),
    "empty array": (np.zeros((0, 4), np.float32), "must be a 2-D"),
    "0..255 floats": (np.full((4, 4), 255.0, np.float32), r"\[0, 1\]"),
    "NaN": (np.full((4, 4), np.nan, np.float32), "finite"),
    "complex": (np.zeros((4, 4), np.complex64), "unsupported dtype"),
    "negative labels": (np.full((4, 4), -1, np.int32), "0/1 labels or 0..255"),  # found by the fuzzer
    "16-bit levels": (np.full((4, 4), 1000, np.uint16), "0/1 labels or 0..255"),
}

BAD_CLASS_LISTS = {
    "empty": (b"", "names 0 class"),
    "one name": (b"dog\n", "names 1 class"),
    "repeated": (b"dog\ncat\ndog\n", "more than once"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not UTF-8"),
    "control characters": ("dog\ncat\x07bell\n".encode(), "control characters"),
    "huge": (b"cat\n" * 300_000, "larger than"),
}
