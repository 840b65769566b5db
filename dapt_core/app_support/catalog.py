"""The prompt sets that fit the loaded backbone, a cache of built learners, and installing uploaded sets."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from dapt_core.app_support.errors import DISK_FULL_ERRNOS
from dapt_core.app_support.startup import (
    BUNDLED_PROMPT_DIR, LEARNER_CACHE_SIZE, USER_PROMPT_DIR, USER_PROMPT_MAX_BYTES, USER_PROMPT_MAX_SETS, TempFiles,
)
from dapt_core.app_support.uploads import UploadError, slugify
from dapt_core.backbones import Backbone
from dapt_core.checkpoint import (
    CheckpointError, PromptSetInfo, backbone_fingerprint, list_prompt_sets, load_prompt_set,
)
from dapt_core.learners.base import PromptLearner
from dapt_core.metric_units import format_metrics

log = logging.getLogger(__name__)


class UserFolderFullError(UploadError):
    """The user folder holds as many prompt sets, or as many bytes, as it may; nothing was added or deleted."""


@dataclass
class CatalogEntry:
    key: str  # "<source>/<file stem>", what the UI and the API pass around
    source: str  # "bundled" or "user"
    info: PromptSetInfo  # the checkpoint's metadata

    @property
    def display(self) -> str:
        return f"{self.info.name} — {self.info.label} ({self.source})"

    def summary(self) -> dict:
        """What the API's /prompt_sets lists for this set."""
        meta = self.info.meta
        return {"key": self.key, "name": self.info.name, "label": self.info.label, "source": self.source,
                **{k: meta.get(k) for k in ("learner", "dapt", "classnames", "metrics", "train", "created")}}

    def row(self) -> list:
        meta = self.info.meta
        metrics = format_metrics(meta.get("metrics"))  # each in its unit: 90.0% for accuracies, 0.90 for shares
        classes = meta.get("classnames") or []
        return [self.key, self.info.label, len(classes), ", ".join(classes[:6]) + (" …" if len(classes) > 6 else ""),
                (meta.get("train") or {}).get("shots", ""), metrics, meta.get("created", "")]


CATALOG_HEADERS = ["key", "method", "classes", "class names", "shots", "metrics", "created"]


@dataclass(frozen=True)
class CatalogView:
    """One reading of the catalogue, for every list the app shows of it."""

    choices: list[tuple[str, str]]  # (display, key) per prompt set, for pickers
    selected: list[str]  # the chosen keys that are still listed, else the default pair
    rows: list[list]  # the catalogue table (CATALOG_HEADERS)
    summaries: list[dict]  # per set, what the API's /prompt_sets lists

    @property
    def first_key(self) -> str | None:
        return self.choices[0][1] if self.choices else None


class PromptCatalog:
    """The prompt sets that fit the loaded backbone, re-read from disk on every call (metadata only), and an
    LRU of built learners keyed by file identity and class list, so a cached learner is never shared between
    calls that need different classes."""

    def __init__(self, backbone: Backbone, bundled_dir: Path = BUNDLED_PROMPT_DIR,
                 user_dir: Path = USER_PROMPT_DIR, cache_size: int = LEARNER_CACHE_SIZE,
                 max_user_sets: int = USER_PROMPT_MAX_SETS, max_user_bytes: int = USER_PROMPT_MAX_BYTES) -> None:
        self.backbone = backbone
        self.folders = {"bundled": Path(bundled_dir), "user": Path(user_dir)}
        self.cache_size = cache_size
        self.max_user_sets, self.max_user_bytes = max_user_sets, max_user_bytes
        self._cache: OrderedDict[tuple, PromptLearner] = OrderedDict()
        self._lock = threading.Lock()
        self._fingerprint: str | None = None  # of the shared backbone, frozen for the app's life: taken once
        self.write_lock = threading.Lock()  # choosing a new file name and writing it happen together
        self.preferred: tuple[str, ...] = ()  # bundled file stems selected by default (the examples' pair)

    @property
    def user_dir(self) -> Path:
        return self.folders["user"]

    def entries(self) -> list[CatalogEntry]:
        if self._fingerprint is None:
            self._fingerprint = backbone_fingerprint(self.backbone)
        found = []
        for source, folder in self.folders.items():
            if folder.is_dir():
                found += [CatalogEntry(f"{source}/{info.path.stem}", source, info)
                          for info in list_prompt_sets(folder, self.backbone, fingerprint=self._fingerprint)]
        return found

    def get(self, key: str) -> CatalogEntry:
        return self.get_many([key])[0]

    def get_many(self, keys: list[str]) -> list[CatalogEntry]:
        """The entries of ``keys``, in order, from one reading of the folders.

        Raises:
            KeyError: a key that is not listed (the first such).
        """
        listed = {entry.key: entry for entry in self.entries()}
        for key in keys:
            if key not in listed:
                raise KeyError(f"no prompt set {key!r} for backbone {self.backbone.name}; refresh the list")
        return [listed[key] for key in keys]

    def default_keys(self, entries: list[CatalogEntry] | None = None) -> list[str]:
        """The bundled pair of :attr:`preferred` (file stems) when both are listed; else the first plain set and the
        first DAPT set (CoOp preferred); else the first two."""
        entries = self.entries() if entries is None else entries
        wanted = [f"bundled/{stem}" for stem in self.preferred]
        if wanted and all(key in {e.key for e in entries} for key in wanted):
            return wanted

        def first(dapt: bool) -> str | None:
            kinds = [e for e in entries if bool((e.info.meta.get("dapt") or {}).get("cue", "off") != "off") == dapt]
            kinds.sort(key=lambda e: (e.info.meta.get("learner") != "coop", e.source != "bundled"))
            return kinds[0].key if kinds else None

        keys = [k for k in (first(False), first(True)) if k]
        return keys if len(keys) == 2 else [e.key for e in entries[:2]]

    def view(self, selected: list[str] | None = None) -> CatalogView:
        """The catalogue as it is on disk now, keeping those of ``selected`` that are still listed."""
        entries = self.entries()
        keys = [e.key for e in entries]
        kept = [k for k in (selected or []) if k in keys] or self.default_keys(entries)
        return CatalogView([(e.display, e.key) for e in entries], kept, [e.row() for e in entries],
                           [e.summary() for e in entries])

    def export(self, key: str | None, files: TempFiles) -> Path:
        """A copy of a prompt set's file in a new folder of ``files``, to hand to a visitor.

        Raises:
            ValueError: no key. KeyError: an unknown key.
        """
        if not key:
            raise ValueError("Pick a prompt set to download.")
        source = self.get(key).info.path
        target = files.new_dir() / source.name
        shutil.copyfile(source, target)
        return target

    def learner(self, key: str, classnames: list[str] | None = None,
                entry: CatalogEntry | None = None) -> PromptLearner:
        """The learner of a prompt set, with its stored classes or ``classnames``; built once per (file, classes).

        Args:
            entry: the set's entry when the caller has just read it (:meth:`get_many`); else it is looked up.

        Raises:
            KeyError: unknown key.
            CheckpointError: the file cannot be loaded onto the backbone.
        """
        path = (entry if entry is not None and entry.key == key else self.get(key)).info.path
        stat = path.stat()
        cache_key = (str(path), stat.st_mtime_ns, stat.st_size, tuple(classnames) if classnames else None)
        with self._lock:
            if cache_key in self._cache:
                self._cache.move_to_end(cache_key)
                return self._cache[cache_key]
        learner = load_prompt_set(path, self.backbone, classnames).eval()
        with self._lock:
            self._cache[cache_key] = learner
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return learner

    def check_room(self, incoming_bytes: int = 0) -> None:
        """Refuses a new prompt set of ``incoming_bytes`` when the user folder is at its limits.

        Raises:
            UserFolderFullError: it holds ``max_user_sets`` sets, or the new one would take it past
                ``max_user_bytes``. Nothing is deleted to make room.
        """
        sizes = []
        for path in self.user_dir.glob("*.safetensors") if self.user_dir.is_dir() else []:
            try:
                sizes.append(path.stat().st_size)
            except OSError:  # removed meanwhile
                continue
        total = sum(sizes) + incoming_bytes
        if len(sizes) >= self.max_user_sets:
            full = f"holds {len(sizes)} prompt sets, its limit"
        elif total > self.max_user_bytes:
            full = f"would hold {_size(total)}, over its limit of {_size(self.max_user_bytes)}"
        else:
            return
        raise UserFolderFullError(f"The folder of saved prompt sets {full}: nothing was saved, and no set is "
                                  "deleted to make room. The server's owner can remove sets no longer needed.")

    def unique_user_path(self, stem: str, incoming_bytes: int = 0) -> Path:
        """A free ``<user_dir>/<stem>[-N].safetensors`` for a set of ``incoming_bytes``; call with
        :attr:`write_lock` held.

        Raises:
            UserFolderFullError: the user folder is at its limits (see :meth:`check_room`).
        """
        self.check_room(incoming_bytes)
        stem = slugify(stem)
        candidate = self.user_dir / f"{stem}.safetensors"
        n = 1
        while candidate.exists():
            candidate = self.user_dir / f"{stem}-{n}.safetensors"
            n += 1
        return candidate

    def install(self, upload: Path, filename: str, staging: Path | None = None) -> CatalogEntry:
        """Checks an uploaded prompt set against the backbone and copies it into the user folder atomically,
        never over an existing file (a taken name gets a ``-N`` suffix). ``staging``: where the copy under
        check is kept meanwhile (an app's :class:`TempFiles` root, removed with it if the app is killed), by
        default the system's temporary directory.

        Raises:
            UploadError: not a ``.safetensors`` file, unreadable, another backbone, tensors that do not fit.
        """
        if Path(filename).suffix.lower() != ".safetensors":
            raise UploadError(f"{filename}: prompt sets are .safetensors files")
        self.check_room(Path(upload).stat().st_size)  # before the copy and the checks
        staged = Path(tempfile.mkdtemp(prefix="dapt-upload-", dir=staging))
        staged /= f"{slugify(Path(filename).stem)}.safetensors"
        try:
            shutil.copyfile(upload, staged)
            try:
                load_prompt_set(staged, self.backbone)  # reads the metadata, checks the backbone and every tensor
            except CheckpointError as err:
                raise UploadError(f"{filename} was refused: {err}") from err
            self.user_dir.mkdir(parents=True, exist_ok=True)
            with self.write_lock:
                target = self.unique_user_path(staged.stem, staged.stat().st_size)
                tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
                try:
                    shutil.copyfile(staged, tmp)
                    os.link(tmp, target)  # fails rather than replace a file that appeared meanwhile
                except OSError as err:
                    if err.errno not in DISK_FULL_ERRNOS:
                        raise
                    raise UploadError(f"{filename} was not added: the server's disk is full") from err
                finally:
                    tmp.unlink(missing_ok=True)
        finally:
            shutil.rmtree(staged.parent, ignore_errors=True)
        log.info("installed uploaded prompt set %s as %s", filename, target)
        return self.get(f"user/{target.stem}")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KB"


def install_note(entry: CatalogEntry) -> str:
    """The markdown line that confirms an installed upload: its key, method and number of classes."""
    return f"Added **{entry.key}** ({entry.info.label}, {len(entry.info.meta['classnames'])} classes)."
