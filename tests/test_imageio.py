"""load_image: every PIL mode to RGB, EXIF rotation, the pixel cap and clear errors on bad files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dapt_core.imageio import (
    DEFAULT_MAX_PIXELS,
    ImageInputError,
    image_to_array,
    load_image,
    to_rgb,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _pixel(image: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.asarray(image)[y, x])


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (1-bit grey) but holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    path.write_bytes(body + chunk(b"IEND", b""))
    return path


def _noise(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# --- every mode ---------------------------------------------------------------------------


def _mode_1(tmp: Path) -> tuple[Path, dict]:
    image = Image.new("1", (4, 3), 0)
    image.putpixel((1, 1), 1)
    image.save(tmp / "one.png")
    return tmp / "one.png", {(1, 1): WHITE, (0, 0): (0, 0, 0)}


def _mode_l(tmp: Path) -> tuple[Path, dict]:
    image = Image.new("L", (4, 3), 77)
    image.save(tmp / "grey.png")
    return tmp / "grey.png", {(2, 2): (77, 77, 77)}


def _mode_la(tmp: Path) -> tuple[Path, dict]:
    image = Image.new("LA", (4, 3), (77, 255))
    image.putpixel((0, 0), (77, 0))
    image.save(tmp / "grey_alpha.png")
    return tmp / "grey_alpha.png", {(0, 0): WHITE, (3, 2): (77, 77, 77)}


def _palette(transparent: bool, tmp: Path) -> tuple[Path, dict]:
    image = Image.new("P", (4, 3), 1)
    image.putpalette([0, 0, 0, 200, 10, 30] + [0] * (3 * 254))
    image.putpixel((0, 0), 0)
    path = tmp / ("palette_t.png" if transparent else "palette.png")
    image.save(path, **({"transparency": 0} if transparent else {}))
    with Image.open(path) as check:
        assert check.mode == "P" and (("transparency" in check.info) == transparent)
    return path, {(0, 0): WHITE if transparent else (0, 0, 0), (1, 1): (200, 10, 30)}


def _mode_rgb(tmp: Path) -> tuple[Path, dict]:
    image = Image.new("RGB", (4, 3), (10, 20, 30))
    image.save(tmp / "rgb.png")
    return tmp / "rgb.png", {(1, 2): (10, 20, 30)}


def _mode_rgba(tmp: Path) -> tuple[Path, dict]:
    image = Image.new("RGBA", (4, 3), (10, 20, 30, 255))
    image.putpixel((0, 0), (10, 20, 30, 0))
    image.save(tmp / "rgba.png")
    return tmp / "rgba.png", {(0, 0): WHITE, (2, 1): (10, 20, 30)}


def _mode_cmyk_tiff(tmp: Path) -> tuple[Path, dict]:
    Image.new("CMYK", (4, 3), (0, 255, 0, 0)).save(tmp / "cmyk.tif")
    return tmp / "cmyk.tif", {(1, 1): (255, 0, 255)}


def _mode_i16(tmp: Path) -> tuple[Path, dict]:
    values = np.array([[0, 65535], [257, 32896]], dtype=np.uint16)
    Image.fromarray(values).save(tmp / "sixteen.png")
    with Image.open(tmp / "sixteen.png") as check:
        assert check.mode.startswith("I")
    return tmp / "sixteen.png", {(0, 0): (0, 0, 0), (1, 0): WHITE, (0, 1): (1, 1, 1), (1, 1): (128, 128, 128)}


def _mode_i32(tmp: Path) -> tuple[Path, dict]:
    values = np.array([[0, 2**31 - 1]], dtype=np.int32)
    Image.fromarray(values).save(tmp / "int32.tif")
    return tmp / "int32.tif", {(0, 0): (0, 0, 0), (1, 0): WHITE}


def _mode_f(tmp: Path) -> tuple[Path, dict]:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(values).save(tmp / "float.tif")
    return tmp / "float.tif", {(0, 0): (0, 0, 0), (1, 0): (128, 128, 128), (2, 0): WHITE}


MODE_CASES = {
    "1": _mode_1,
    "L": _mode_l,
    "LA": _mode_la,
    "P": lambda tmp: _palette(False, tmp),
    "P+transparency": lambda tmp: _palette(True, tmp),
    "RGB": _mode_rgb,
    "RGBA": _mode_rgba,
    "CMYK": _mode_cmyk_tiff,
    "I;16": _mode_i16,
    "I": _mode_i32,
    "F": _mode_f,
}


@pytest.mark.parametrize("mode", sorted(MODE_CASES))
def test_every_mode_becomes_rgb_with_correct_values(mode: str, tmp_path: Path) -> None:
    path, expected = MODE_CASES[mode](tmp_path)
    with Image.open(path) as original:
        size = original.size
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == size
    for (x, y), colour in expected.items():
        assert _pixel(image, x, y) == colour, f"mode {mode} pixel ({x}, {y})"


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 16), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    image = load_image(tmp_path / "cmyk.jpg")
    assert image.mode == "RGB"
    assert np.abs(np.asarray(image, dtype=int)[8, 8] - np.array([255, 0, 255])).max() <= 8


def test_half_transparent_pixel_blends_with_white(tmp_path: Path) -> None:
    Image.new("RGBA", (2, 2), (0, 0, 0, 128)).save(tmp_path / "half.png")
    value = _pixel(load_image(tmp_path / "half.png"), 0, 0)
    assert all(abs(channel - 127) <= 1 for channel in value)


def test_int32_image_of_sixteen_bit_data_uses_the_sixteen_bit_range() -> None:
    image = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert image.mode == "I"
    assert _pixel(load_image(image), 1, 0) == WHITE


def test_pil_modes_without_a_file() -> None:
    assert _pixel(load_image(Image.new("YCbCr", (2, 2), (128, 128, 128))), 0, 0) == (128, 128, 128)
    big_endian = Image.fromarray(np.array([[65535, 0]], dtype=">u2"))
    assert big_endian.mode == "I;16B"
    assert _pixel(load_image(big_endian), 0, 0) == WHITE


def test_pil_source_is_not_modified() -> None:
    source = Image.new("RGBA", (3, 3), (1, 2, 3, 0))
    result = load_image(source)
    assert source.mode == "RGBA" and result is not source
    rgb_source = Image.new("RGB", (3, 3), (1, 2, 3))
    assert load_image(rgb_source) is not rgb_source


# --- EXIF orientation ---------------------------------------------------------------------


def test_exif_orientation_rotates_the_image(tmp_path: Path) -> None:
    image = Image.new("RGB", (4, 2), BLUE)
    image.putpixel((0, 0), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    image.save(tmp_path / "rotated.png", exif=exif.tobytes())
    upright = load_image(tmp_path / "rotated.png")
    assert upright.size == (2, 4)
    # Rotating clockwise carries the stored top-left corner to the top-right.
    assert _pixel(upright, 1, 0) == RED
    assert _pixel(upright, 0, 0) == BLUE


# --- the pixel cap ------------------------------------------------------------------------


def test_cap_argument_rejects_an_image_over_it(tmp_path: Path) -> None:
    Image.new("RGB", (10, 10)).save(tmp_path / "small.png")
    with pytest.raises(ImageInputError) as caught:
        load_image(tmp_path / "small.png", max_pixels=50)
    message = str(caught.value)
    assert "small.png" in message and "10x10" in message and "50" in message
    assert load_image(tmp_path / "small.png", max_pixels=100).size == (10, 10)


def test_default_cap_checks_the_header_before_decoding(tmp_path: Path) -> None:
    path = _png_header_only(tmp_path / "bomb.png", 7000, 7000)
    assert 7000 * 7000 > DEFAULT_MAX_PIXELS
    with pytest.raises(ImageInputError) as caught:
        load_image(path)
    message = str(caught.value)
    # The header-only file cannot be decoded: a cap message proves nothing was.
    assert "bomb.png" in message and "7000x7000" in message and f"{DEFAULT_MAX_PIXELS:,}" in message


@pytest.mark.parametrize("side", [10_000, 20_000])
def test_pil_decompression_bomb_guard_becomes_an_input_error(tmp_path: Path, side: int) -> None:
    path = _png_header_only(tmp_path / "huge.png", side, side)
    with pytest.raises(ImageInputError, match="huge.png") as caught:
        load_image(path, max_pixels=10**12)
    assert "decompression bomb" in str(caught.value) and f"{side * side}" in str(caught.value)


def test_cap_applies_to_arrays_and_pil_images() -> None:
    with pytest.raises(ImageInputError, match="over the cap"):
        load_image(np.zeros((10, 10, 3), dtype=np.uint8), max_pixels=99)
    with pytest.raises(ImageInputError, match="over the cap"):
        load_image(Image.new("RGB", (10, 10)), max_pixels=99)


# --- bad files ----------------------------------------------------------------------------


def test_text_file_named_png_is_rejected_by_name(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageInputError) as caught:
        load_image(path)
    assert "notes.png" in str(caught.value) and "not an image file" in str(caught.value)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_is_rejected(tmp_path: Path, suffix: str) -> None:
    whole = tmp_path / f"whole{suffix}"
    _noise(64, 64).save(whole)
    cut = tmp_path / f"cut{suffix}"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageInputError) as caught:
        load_image(cut)
    assert f"cut{suffix}" in str(caught.value) and "truncated or corrupt" in str(caught.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match="absent.png: no such file"):
        load_image(tmp_path / "absent.png")
    with pytest.raises(ImageInputError, match="is a directory"):
        load_image(tmp_path)


def test_unsupported_source_type() -> None:
    with pytest.raises(TypeError, match="unsupported source type int"):
        load_image(42)  # type: ignore[arg-type]


# --- bytes and file objects ---------------------------------------------------------------


def test_bytes_and_file_object_sources(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("LA", (3, 2), (50, 0)).save(buffer, format="PNG")
    data = buffer.getvalue()
    for source in (data, bytearray(data), io.BytesIO(data)):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (3, 2) and _pixel(image, 2, 1) == WHITE
    path = tmp_path / "upload.png"
    path.write_bytes(data)
    with path.open("rb") as handle:
        assert load_image(handle).size == (3, 2)


def test_error_names_the_upload_and_the_file_object(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match="holiday.jpg"):
        load_image(b"garbage bytes", name="holiday.jpg")
    with pytest.raises(ImageInputError, match="image bytes"):
        load_image(b"garbage bytes")
    path = tmp_path / "junk.bin"
    path.write_bytes(b"\x00" * 100)
    with path.open("rb") as handle, pytest.raises(ImageInputError, match="junk.bin"):
        load_image(handle)


# --- arrays -------------------------------------------------------------------------------


def test_array_sources() -> None:
    grey = np.full((2, 3), 9, dtype=np.uint8)
    assert _pixel(load_image(grey), 0, 0) == (9, 9, 9)
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    assert _pixel(load_image(rgba), 0, 0) == WHITE
    assert _pixel(load_image(np.full((2, 2, 3), 65535, dtype=np.uint16)), 1, 1) == WHITE
    assert _pixel(load_image(np.full((2, 2), 0.5)), 0, 0) == (128, 128, 128)
    assert load_image(np.zeros((5, 7, 3), dtype=np.uint8)).size == (7, 5)


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.full((2, 2), 1.5), r"\[0.0, 1.0\]"),
        (np.full((2, 2), np.nan), "NaN"),
        (np.zeros((2, 2, 2), dtype=np.uint8), "shape"),
        (np.full((2, 2), 300, dtype=np.int64), r"\[0, 255\]"),
        (np.zeros((2, 2), dtype=np.complex64), "dtype"),
    ],
)
def test_bad_arrays_are_rejected(array: np.ndarray, reason: str) -> None:
    with pytest.raises(ImageInputError, match=reason):
        load_image(array)


# --- helpers ------------------------------------------------------------------------------


def test_image_to_array_and_to_rgb() -> None:
    array = image_to_array(Image.new("L", (4, 2), 200))
    assert array.shape == (2, 4, 3) and array.dtype == np.uint8 and array.flags.writeable
    assert int(array[1, 3, 0]) == 200
    assert to_rgb(Image.new("RGBA", (1, 1), (0, 0, 0, 0))).getpixel((0, 0)) == WHITE
