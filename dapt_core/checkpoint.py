"""Prompt checkpoints: one ``.safetensors`` file per prompt set, JSON metadata inside, written atomically.

Official CoOp and MaPLe/DAPT checkpoints (Dassl ``.pth.tar``) are imported into this format by
:mod:`dapt_core.official`; nothing here unpickles anything.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dapt_core.constants import DAPT_RECORD_DEFAULTS
from dapt_core.errors import DaptError
from dapt_core.fileio import atomic_path
from dapt_core.backbones import Backbone
from dapt_core.learners import build_learner
from dapt_core.learners.base import PromptLearner
from dapt_core.objective import DaptConfig
from dapt_core.prompt_meta import metadata_problems

log = logging.getLogger(__name__)

FORMAT = "dapt-prompts"
FORMAT_VERSION = 1
METADATA_KEY = "dapt_core"
FINGERPRINT_SAMPLES = 4096  # about this many evenly spaced values of each frozen tensor enter the fingerprint


class CheckpointError(DaptError):
    """A prompt checkpoint that is unreadable, of another format, or made for another backbone."""


@dataclass
class PromptSetInfo:
    """What a prompt checkpoint says about itself (no tensors)."""

    path: Path
    meta: dict

    @property
    def name(self) -> str:
        return self.meta.get("name") or self.path.stem

    @property
    def label(self) -> str:
        """Short human description, e.g. ``"CoOp + DAPT (mask)"``, ``"MaPLe + DAPT (gradcam)"``, or
        ``"CoOp + DAPT (legrad cue)"`` for a coarse cue from another attribution map than Grad-CAM."""
        learner = {"coop": "CoOp", "maple": "MaPLe"}.get(self.meta["learner"], self.meta["learner"])
        dapt = self.meta.get("dapt") or {}
        if dapt.get("cue", "off") == "off":
            return learner
        cam_method = dapt.get("cam_method", DAPT_RECORD_DEFAULTS["cam_method"])
        cue = f"{cam_method} cue" if dapt["cue"] == "gradcam" and cam_method != "gradcam" else dapt["cue"]
        return f"{learner} + DAPT ({cue})"

    @property
    def dapt_config(self) -> DaptConfig | None:
        """The DAPT settings the set was trained with; None for a plain learner. A set written before a
        setting was recorded reads as trained with its default (``cam_method``: the official Grad-CAM cue).

        Raises:
            CheckpointError: the recorded settings are not a valid :class:`DaptConfig`.
        """
        record = self.meta.get("dapt")
        if record is None:
            return None
        try:
            return DaptConfig.from_record(record)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{self.path.name}: its recorded DAPT settings are not valid: {err}") from err


def backbone_fingerprint(backbone: Backbone) -> str:
    """A short hash of the backbone's frozen weights, to tell two sets of weights of one architecture apart.

    Every parameter tensor contributes its name, its shape and an evenly strided sample of about
    :data:`FINGERPRINT_SAMPLES` of its values (all of them below twice that many), as float32, so the same
    values held in another precision give the same fingerprint: other weights of the same architecture (another
    pre-training, a fine-tune, another random seed) differ everywhere, and hashing a sample keeps this at a few
    milliseconds for a ViT-B/16. It is not a checksum of every byte of a weight file.

    Returns:
        16 hexadecimal digits.
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(backbone.model.named_parameters()):
            flat = tensor.detach().reshape(-1)
            sample = flat[::max(1, flat.numel() // FINGERPRINT_SAMPLES)]
            digest.update(f"{name}{tuple(tensor.shape)}".encode())
            digest.update(sample.to(device="cpu", dtype=torch.float32).numpy().tobytes())
    return digest.hexdigest()[:16]


def save_prompt_set(learner: PromptLearner, path: str | Path, *, dapt: DaptConfig | None = None,
                    train_config: dict | None = None, metrics: dict | None = None, name: str | None = None) -> Path:
    """Writes the learner's prompts and metadata to ``path`` (temporary file, then rename)."""
    path = Path(path)
    backbone = learner.backbone
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name or path.stem,
        "learner": learner.kind,
        "learner_options": learner.options(),
        "dapt": asdict(dapt) if dapt is not None else None,
        "backbone": backbone.name,
        "model": backbone.spec.model_name,
        "pretrained": backbone.pretrained,
        "backbone_fingerprint": backbone_fingerprint(backbone),
        "text_width": backbone.text_width,
        "vision_width": backbone.vision_width,
        "classnames": learner.classnames,
        "train": train_config or {},
        "metrics": metrics or {},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in learner.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    log.info("saved prompt set %s (%s, %d classes)", path, learner.kind, len(learner.classnames))
    return path


def read_info(path: str | Path) -> PromptSetInfo:
    """Reads only the metadata of a prompt checkpoint."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path.name}: prompt sets are .safetensors files; import official .pth.tar "
                              "checkpoints with `python -m dapt_core import-official`")
    if not path.is_file():
        raise CheckpointError(f"prompt checkpoint {path} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path.name} is not a readable safetensors file: {err}") from err
    if raw is None:
        raise CheckpointError(f"{path.name} has no DAPT prompt metadata; it is not a prompt set of this tool")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path.name}: its metadata is not valid JSON ({err})") from err
    if isinstance(meta, dict) and meta.get("format") != FORMAT:
        raise CheckpointError(f"{path.name}: format {meta.get('format')!r} is not {FORMAT!r}; it is not a prompt "
                              "set of this tool")
    problems = metadata_problems(meta)
    if problems:
        raise CheckpointError(f"{path.name} has metadata that does not fit a prompt set: {'; '.join(problems)}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path.name}: format version {meta['format_version']} is newer than this tool's "
                              f"({FORMAT_VERSION}); update dapt_core to read it")
    return PromptSetInfo(path, meta)


def check_compatible(meta: dict, backbone: Backbone, source: str = "prompt set", *,
                     fingerprint: str | None = None) -> None:
    """Refuses a prompt set made for another backbone, naming both: another architecture or weights tag, or
    (prompt sets that record it) other weights under the same name.

    Args:
        fingerprint: :func:`backbone_fingerprint` of ``backbone``, when the caller has it already.
    """
    theirs = (meta.get("model"), meta.get("pretrained"))
    ours = (backbone.spec.model_name, backbone.pretrained)
    same = theirs == ours and (ours[1] is not None or meta.get("backbone") == backbone.name)
    if not same or meta.get("text_width", backbone.text_width) != backbone.text_width:
        raise CheckpointError(
            f"{source} was made for backbone {meta.get('backbone')!r} ({theirs[0]}, weights "
            f"{theirs[1] or 'random'}), but the loaded backbone is {backbone.name!r} ({ours[0]}, weights "
            f"{ours[1] or 'random'}); load it with the backbone it was trained on")
    theirs_weights = meta.get("backbone_fingerprint")
    if theirs_weights is None:  # written before prompt sets kept one: the name and tag are all there is
        return
    ours_weights = fingerprint or backbone_fingerprint(backbone)
    if theirs_weights != ours_weights:
        raise CheckpointError(
            f"{source} was made for backbone {meta.get('backbone')!r} with weights fingerprint {theirs_weights}, "
            f"but the loaded backbone {backbone.name!r} has the same architecture with other weights "
            f"(fingerprint {ours_weights}); load it with the weights it was trained on")


def load_prompt_set(path: str | Path, backbone: Backbone, classnames: list[str] | None = None) -> PromptLearner:
    """Rebuilds a learner from a prompt checkpoint onto ``backbone``.

    Args:
        classnames: another class list to use instead of the stored one (the learned context is kept).

    Raises:
        CheckpointError: unreadable file, wrong format, other backbone, or tensors that do not fit.
    """
    info = read_info(path)
    meta = info.meta
    check_compatible(meta, backbone, f"prompt set {info.path.name}")
    if "backbone_fingerprint" not in meta:
        log.info("prompt set %s records no weights fingerprint (written before it was kept): only the "
                 "backbone's name and weights tag were checked", info.path.name)
    try:
        learner = build_learner(meta["learner"], backbone, meta["classnames"], **meta["learner_options"])
    except (ValueError, TypeError, RuntimeError) as err:  # fields of the right types, values it cannot use
        raise CheckpointError(f"{info.path.name}: a {meta['learner']} learner cannot be built from its metadata "
                              f"(learner_options {meta['learner_options']}): {err}") from err
    try:
        tensors = load_file(str(info.path), device=str(backbone.device))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{info.path.name}: its tensors cannot be read ({err})") from err
    expected = learner.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(f"{info.path.name} does not fit a {meta['learner']} learner on {backbone.name}: "
                              f"missing {missing}, unexpected {unexpected}, wrong shape {wrong}")
    learner.load_state_dict(tensors)
    if classnames is not None:
        learner.set_classnames(classnames)
    learner.info = info
    return learner


def list_prompt_sets(folder: str | Path, backbone: Backbone | None = None, *,
                     fingerprint: str | None = None) -> list[PromptSetInfo]:
    """Prompt checkpoints in a folder (sorted by name); with a backbone, only those that fit it.

    Args:
        fingerprint: :func:`backbone_fingerprint` of ``backbone``, when the caller has it already.
    """
    found = []
    if backbone is not None and fingerprint is None:
        fingerprint = backbone_fingerprint(backbone)
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            info = read_info(path)
            if backbone is not None:
                check_compatible(info.meta, backbone, fingerprint=fingerprint)
        except CheckpointError:
            continue
        found.append(info)
    return found

