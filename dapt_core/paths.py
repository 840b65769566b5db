"""Locations of the project's own files, resolved from the package, never from the working directory."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
# DAPT_CHECKPOINTS lets a deployment keep weights on a volume of its own.
CHECKPOINT_DIR = Path(os.environ.get("DAPT_CHECKPOINTS", PROJECT_DIR / "checkpoints"))
ASSETS_DIR = PROJECT_DIR / "assets"
MODEL_CONFIG_DIR = PACKAGE_DIR / "model_configs"
