"""Start-up on a Hugging Face Space: where the visitors' prompt sets and the weights cache live, and ZeroGPU.

A Space is recognised by ``SPACE_ID`` (the platform sets it). When the Space has persistent storage (a
writable volume at ``/data``), :func:`prepare_space` points the visitors' prompt sets and the Hugging Face
cache at it, so neither is lost when the Space restarts:

- ``DAPT_USER_PROMPTS`` (read by :mod:`dapt_core.app_support.startup`) becomes ``/data/dapt/user-prompts``;
- ``HF_HOME`` (read by ``huggingface_hub`` when it is imported) becomes ``/data/.huggingface``, the
  location the Spaces documentation recommends for caches on persistent storage.

A variable the Space's owner set explicitly wins over these defaults. Both are read when their modules are
imported, so this must run first: ``app.py`` calls it before it imports the library or gradio, and this
module imports nothing but the standard library. It also imports the ``spaces`` package when it is installed
(every Gradio Space has it): on ZeroGPU hardware that package must be imported before CUDA is initialised.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import MutableMapping

log = logging.getLogger(__name__)

SPACE_ID_ENV = "SPACE_ID"  # set by the platform on every Space, e.g. "user/dapt-attention-lab"
DATA_DIR_ENV = "DAPT_SPACE_DATA"  # where the persistent volume is (a deployment or a test points it elsewhere)
DEFAULT_DATA_DIR = Path("/data")  # Spaces mount persistent storage here
USER_PROMPTS_ENV = "DAPT_USER_PROMPTS"
USER_PROMPTS_SUBDIR = Path("dapt") / "user-prompts"
HF_HOME_ENV = "HF_HOME"
HF_HOME_SUBDIR = Path(".huggingface")
# modules that read their settings from the environment when they are imported
READS_ENV_AT_IMPORT = {HF_HOME_ENV: "huggingface_hub", USER_PROMPTS_ENV: "dapt_core.app_support.startup"}


@dataclass
class SpaceSetup:
    """What :func:`prepare_space` found and decided."""

    space_id: str | None  # the Space's id; None when not running as a Space
    data_dir: Path | None  # the persistent volume in use; None when there is none (or not on a Space)
    environ: dict[str, str] = field(default_factory=dict)  # the variables this call set
    kept: dict[str, str] = field(default_factory=dict)  # variables already set by the owner, left as they were
    spaces_package: bool = False  # whether the ``spaces`` package was imported (ZeroGPU's decorator)

    @property
    def on_space(self) -> bool:
        return self.space_id is not None

    def describe(self) -> str:
        """One log line: the Space, its storage, and where prompt sets and weights go."""
        if not self.on_space:
            return "not running as a Hugging Face Space"
        chosen = {**self.kept, **self.environ}
        storage = f"persistent storage at {self.data_dir}" if self.data_dir else "no persistent storage"
        where = ", ".join(f"{k}={chosen[k]}" for k in (USER_PROMPTS_ENV, HF_HOME_ENV) if k in chosen)
        return (f"Space {self.space_id}: {storage}" + (f"; {where}" if where else
                "; visitors' prompt sets and downloaded weights are lost when the Space restarts")
                + ("; ZeroGPU decorator from the spaces package" if self.spaces_package else ""))


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _import_spaces() -> bool:
    """Imports ``spaces`` when it is installed (before CUDA is initialised, as ZeroGPU requires)."""
    try:
        importlib.import_module("spaces")
    except ImportError:
        return False
    return True


def prepare_space(environ: MutableMapping[str, str] | None = None, data_dir: str | Path | None = None) -> SpaceSetup:
    """On a Space, puts the visitors' prompt sets and the weights cache on its persistent storage.

    Off a Space (no ``SPACE_ID``) it changes nothing. On a Space without a writable ``data_dir`` it changes
    nothing either (the defaults, inside the Space's ephemeral disk, stay) and logs why.

    Args:
        environ: the environment to read and update (default ``os.environ``).
        data_dir: the persistent volume; default ``$DAPT_SPACE_DATA``, else ``/data``.

    Returns:
        What was found and which variables were set.
    """
    environ = os.environ if environ is None else environ
    space_id = environ.get(SPACE_ID_ENV) or None
    if space_id is None:
        return SpaceSetup(None, None)
    setup = SpaceSetup(space_id, None, spaces_package=_import_spaces())
    root = Path(data_dir or environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
    if not _writable_dir(root):
        log.info("Space %s has no writable persistent storage at %s", space_id, root)
        return setup
    setup.data_dir = root
    for name, sub in ((USER_PROMPTS_ENV, USER_PROMPTS_SUBDIR), (HF_HOME_ENV, HF_HOME_SUBDIR)):
        if environ.get(name):
            setup.kept[name] = environ[name]
            continue
        target = root / sub
        target.mkdir(parents=True, exist_ok=True)
        environ[name] = setup.environ[name] = str(target)
        module = READS_ENV_AT_IMPORT[name]
        if module in sys.modules:  # too late for this process: say so rather than pretend
            log.warning("%s was set after %s was imported; it takes effect at the next start", name, module)
    return setup
