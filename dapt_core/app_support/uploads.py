"""Files uploaded by visitors: where an upload lies and what the visitor called it, and labelled images (a zip
of class folders, or files with a class name) made into an image folder after checks on size, paths and content."""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dapt_core.constants import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS
from dapt_core.data.records import list_images
from dapt_core.errors import DaptError
from dapt_core.preflight import image_problem

NO_IMAGES_YET = "No images added yet."
ENCRYPTED_FLAG = 0x1  # bit 0 of a zip member's general-purpose flags: the member is encrypted


@dataclass
class UploadLimits:
    max_zip_bytes: int = 200 * 2**20  # compressed size of an uploaded zip
    max_total_bytes: int = 500 * 2**20  # uncompressed size of everything extracted
    max_file_bytes: int = 40 * 2**20  # one extracted image
    max_files: int = 5000  # images in one upload
    max_pixels: int = MAX_IMAGE_PIXELS  # width * height of one image: the reader's cap (decompression bombs)


class UploadError(DaptError):
    """An upload (zip, image set, prompt set) that cannot be used; the message says why, for the user."""


def upload_path(value: Any) -> Path | None:
    """The server path of a file input: a path string, or a dict with ``"path"`` (Gradio's FileData, when the
    handler skips preprocessing); None when nothing was uploaded."""
    if value is None or value == "":
        return None
    return Path(value["path"] if isinstance(value, dict) else value)


def upload_name(value: Any) -> str:
    """The name the visitor's file had on their machine (FileData's ``"orig_name"``), else the server file's."""
    original = value.get("orig_name") if isinstance(value, dict) else None
    return original or upload_path(value).name


def slugify(text: str, default: str = "prompts") -> str:
    """A file-name-safe stem: letters, digits, ``-``, ``_`` and ``.``, at most 64 characters."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-.")[:64]
    return slug or default


def _check_image(path: Path, label: str, limits: UploadLimits) -> None:
    """Refuses a file that is not a readable image (the check training makes before it starts); the message
    names ``label``, never the server's path."""
    problem = image_problem(path, limits.max_pixels)
    if problem is not None:
        raise UploadError(f"{label} is not a readable image ({problem})")


def _check_classes(root: Path, what: str) -> None:
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        found = f"only {classes[0].name!r}" if classes else "none"
        raise UploadError(f"{what} needs at least two classes (one folder per class); found {found}")
    empty = [c.name for c in classes if not list_images(c)]
    if empty:
        raise UploadError(f"{what}: class {empty[0]!r} has no images")


_Member = tuple[list[str], zipfile.ZipInfo | None]  # path parts in the image folder; None for a folder


def _class_members(zf: zipfile.ZipFile, name: str, limits: UploadLimits) -> list[_Member]:
    """The zip's folders and images, checked for unsafe paths, counts and sizes, with a single wrapping folder
    stripped ("data/cat/1.png" -> "cat/1.png") so that ``parts[0]`` is the class of every image."""
    members = []
    for info in zf.infolist():
        parts = [p for p in info.filename.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts or info.filename.startswith("/") or ".." in parts:
            raise UploadError(f"{name}: unsafe path {info.filename!r}")
        if parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
            continue
        if info.is_dir():
            members.append((parts, None))
        elif Path(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS:
            members.append((parts, info))
    images = [(p, i) for p, i in members if i is not None]
    if not images:
        raise UploadError(f"{name} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    if len(images) > limits.max_files:
        raise UploadError(f"{name} holds {len(images)} images, over the limit of {limits.max_files}")
    if sum(i.file_size for _, i in images) > limits.max_total_bytes:
        raise UploadError(f"{name} unpacks to more than {limits.max_total_bytes // 2**20} MB")
    while len({p[0] for p, _ in members}) == 1 and all(len(p) >= 3 for p, _ in images):
        members = [(p[1:], i) for p, i in members if len(p) > 1]
        images = [(p, i) for p, i in members if i is not None]
    loose = [p for p, _ in images if len(p) < 2]
    if loose:
        raise UploadError(f"{name}: {'/'.join(loose[0])} is not inside a class folder; put the images of each "
                          "class in a folder named after the class")
    return members


def extract_labelled_zip(archive: Path, dest: Path, limits: UploadLimits = UploadLimits()) -> Path:
    """Extracts a zip holding one folder of images per class (optionally inside one top folder) into ``dest``.

    Only image files are written; paths are rebuilt from their parts, so nothing lands outside ``dest``.

    Returns:
        The image-folder root (``dest``), ready for :func:`dapt_core.data.folders.load_imagefolder`.

    Raises:
        UploadError: not a zip, corrupt, too big, unsafe paths, images outside class folders, fewer than two
            classes, a class without images, or an unreadable image.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"extract_labelled_zip needs a new or empty folder to extract into, got {dest}")
    if archive.stat().st_size > limits.max_zip_bytes:
        raise UploadError(f"{archive.name} is larger than {limits.max_zip_bytes // 2**20} MB")
    if not zipfile.is_zipfile(archive):
        raise UploadError(f"{archive.name} is not a zip file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # unpacked beside dest and renamed onto it only when every check passed: a refused zip leaves nothing
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.unpacking-", dir=dest.parent))
    try:
        _unpack(archive, staging, limits)
        _check_classes(staging, archive.name)
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _unpack(archive: Path, dest: Path, limits: UploadLimits) -> None:
    """Writes the zip's class folders and images into ``dest``, checking each image as it lands."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for parts, info in _class_members(zf, archive.name, limits):
                target = dest.joinpath(*parts) if info is not None else dest / parts[0]
                if info is None:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if info.file_size > limits.max_file_bytes:
                    raise UploadError(f"{'/'.join(parts)} is larger than {limits.max_file_bytes // 2**20} MB")
                if info.flag_bits & ENCRYPTED_FLAG:
                    raise UploadError(f"{archive.name}: {'/'.join(parts)} is encrypted; upload a zip without a password")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                _check_image(target, "/".join(parts), limits)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, NotImplementedError) as err:
        # the messages of these name members of the zip, never a path on the server
        raise UploadError(f"{archive.name} is a damaged zip file ({err})") from err
    except OSError as err:  # the server's disk (full, read-only): said without the server's path
        raise UploadError(f"{archive.name} could not be unpacked on the server "
                          f"({err.strerror or type(err).__name__})") from err


def add_labelled_images(files: list[Path], classname: str, dest: Path, limits: UploadLimits = UploadLimits()) -> int:
    """Copies uploaded images into ``dest/<classname>/`` (the image-folder layout); returns how many.

    Raises:
        UploadError: an empty or path-like class name, no files, or a file that is not a readable image.
    """
    name = " ".join((classname or "").split())
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise UploadError("type a class name (no slashes) for these images")
    if not files:
        raise UploadError("choose one or more images first")
    files = [Path(f) for f in files]
    for src in files:  # every file is checked before any is kept, so a bad one leaves no trace
        if src.stat().st_size > limits.max_file_bytes:
            raise UploadError(f"{src.name} is larger than {limits.max_file_bytes // 2**20} MB")
        _check_image(src, src.name, limits)
    folder = dest / name
    new_folder = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    copied: list[Path] = []
    try:
        for src in files:
            copied.append(folder / f"{uuid.uuid4().hex[:8]}-{slugify(src.name, 'image')}")
            shutil.copyfile(src, copied[-1])
    except OSError as err:  # the server's disk: take back this call's copies, say so without the server's path
        for path in copied:
            path.unlink(missing_ok=True)
        if new_folder:
            shutil.rmtree(folder, ignore_errors=True)
        raise UploadError(f"the images could not be stored on the server ({err.strerror or type(err).__name__})") \
            from err
    return len(files)


def describe_folder(root: Path) -> dict[str, int]:
    """Images per class folder of an image-folder root."""
    if not root.is_dir():
        return {}
    return {p.name: len(list_images(p)) for p in sorted(root.iterdir()) if p.is_dir()}


def folder_summary(root: Path | None) -> str:
    """One markdown line: the images per class gathered so far in an image folder."""
    counts = describe_folder(root) if root is not None else {}
    if not counts:
        return NO_IMAGES_YET
    return "Images so far: " + ", ".join(f"**{c}** ({n})" for c, n in counts.items())


def check_image_folder(root: Path) -> None:
    """Raises UploadError unless ``root`` has at least two class folders, each with images."""
    if not root.is_dir():
        raise UploadError("no labelled images yet: add images of at least two classes")
    _check_classes(root, "the uploaded images")

