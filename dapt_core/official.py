"""Official CoOp and MaPLe/DAPT checkpoints (Dassl ``model.pth.tar-N``) imported as prompt sets.

Dassl's ``save_checkpoint`` writes ``{"state_dict", "epoch", "optimizer", "scheduler", "val_result"}``. The
scheduler's state dict of its warm-up scheduler holds the successor scheduler *object* (a pickled
``CosineAnnealingLR`` with the optimizer inside), so ``torch.load(weights_only=True)`` refuses every real file.
These files are read here with :class:`RestrictedUnpickler`: it builds tensors, storages, plain containers and
numbers, and an inert :class:`OfficialObject` in place of every optimizer or scheduler class (no constructor and
no ``__setstate__`` of theirs runs); any other global is refused before anything is called.

A MaPLe/DAPT file holds the whole ``CustomCLIP`` state dict (about 0.9 GB for ViT-B/16) of which only the
``prompt_learner.*`` entries are needed: the file is memory-mapped, those entries are copied out and the map is
dropped, so the frozen CLIP weights are never read into memory (``benchmarks/bench_import.py`` measures it).
"""

from __future__ import annotations

import collections
import logging
import pickle
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dapt_core.backbones import Backbone
from dapt_core.checkpoint import CheckpointError, save_prompt_set
from dapt_core.constants import ZERO_SHOT_CONTEXT
from dapt_core.learners import build_learner
from dapt_core.objective import DaptConfig

log = logging.getLogger(__name__)

OFFICIAL_PREFIX = "prompt_learner."  # MaPLe/DAPT register the whole CustomCLIP; its prompt learner's keys
DROPPED_OFFICIAL_KEYS = ("token_prefix", "token_suffix")  # frozen token embeddings, rebuilt here
# Modules whose classes become inert placeholders: the optimizer and the (warm-up) schedulers Dassl pickles.
INERT_MODULES = ("torch.optim", "dassl.optim")
# Python 2 names that pickle protocol 2 writes for built-ins (``pickle.Unpickler`` maps them the same way).
_COMPAT_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class UnsafePickleError(CheckpointError):
    """A checkpoint pickles a global this importer does not allow; nothing of it was called."""

    def __init__(self, global_name: str) -> None:
        super().__init__(
            f"the checkpoint pickles {global_name!r}, which is neither a tensor, a plain container nor an "
            f"optimizer/scheduler class of {' or '.join(INERT_MODULES)}; it is refused unexecuted "
            "(unpickling it could run arbitrary code)")
        self.global_name = global_name


class OfficialObject:
    """An inert stand-in for a pickled optimizer or scheduler: it only keeps what the pickle gave it.

    Attributes:
        official_name: ``module.qualname`` of the class the file named (never imported).
        args: positional arguments the pickle passed when building it (``kwargs``: keyword ones).
        state: the state the pickle set on it (a scheduler's or optimizer's ``__dict__``), or None.
    """

    official_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> OfficialObject:
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.official_name}>"


def _plain_defaultdict(default_factory: Any = None, *args: Any) -> dict:
    """``collections.defaultdict`` as a plain dict: the factory (an optimizer's ``dict``) is never called."""
    return dict(*args)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for ``bytes``; other codecs are refused."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): _plain_defaultdict,
    ("_codecs", "encode"): _latin1_encode,
    **{("builtins", t.__name__): t for t in (dict, list, tuple, set, frozenset, complex)},
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    **{("torch._utils", f): getattr(torch._utils, f)
       for f in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state")
       if hasattr(torch._utils, f)},
}


def _torch_attribute(name: str) -> Any:
    """A dtype (``torch.float16``) or a storage class (``torch.FloatStorage``) of ``torch``, else None."""
    value = getattr(torch, name, None)
    if isinstance(value, torch.dtype):
        return value
    if name.endswith("Storage") and isinstance(value, type) and issubclass(value, torch.storage.TypedStorage):
        return value
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles tensors, plain containers, numbers and inert optimizer/scheduler placeholders only.

    Every class or function a pickle names goes through :meth:`find_class`, so a refused global is refused
    before it could be called (by ``REDUCE``, ``NEWOBJ``, ``INST``/``OBJ`` or ``BUILD``).
    """

    def find_class(self, module: str, name: str) -> Any:
        module = _COMPAT_MODULES.get(module, module)
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch" and (value := _torch_attribute(name)) is not None:
            return value
        if any(module == m or module.startswith(m + ".") for m in INERT_MODULES):
            return self._placeholder(f"{module}.{name}")
        raise UnsafePickleError(f"{module}.{name}")

    def _placeholder(self, official_name: str) -> type[OfficialObject]:
        cache = self.__dict__.setdefault("_placeholders", {})
        if official_name not in cache:
            cache[official_name] = type(official_name.rsplit(".", 1)[-1], (OfficialObject,),
                                        {"official_name": official_name, "__module__": __name__})
        return cache[official_name]


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# ``torch.load(pickle_module=...)`` subclasses ``pickle_module.Unpickler`` (adding torch's storage handling on top
# of our find_class) and calls ``pickle_module.load`` for the headers of the legacy format.
restricted_pickle = types.ModuleType("dapt_core.official.restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = _restricted_load
restricted_pickle.UnpicklingError = pickle.UnpicklingError


def load_official(path: str | Path, *, mmap: bool = True) -> Any:
    """Reads a Dassl checkpoint with :class:`RestrictedUnpickler`, tensors on the CPU.

    Args:
        path: a ``torch.save`` file (zip format, or the legacy format of torch < 1.6).
        mmap: map the tensors' storage from the file instead of reading it (zip format only); tensors of
            the result then stay valid only while they are referenced, and cost no memory until touched.

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the file names a refused global (nothing of the file was executed).
        CheckpointError: the file is not a readable torch checkpoint.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"official checkpoint does not exist: {file}")
    mmap = mmap and zipfile.is_zipfile(file)
    try:
        return torch.load(file, map_location="cpu", pickle_module=restricted_pickle, weights_only=False,
                          mmap=mmap)
    except UnsafePickleError:
        raise
    except RuntimeError as err:
        if "pickle_module" in str(err):  # TORCH_FORCE_WEIGHTS_ONLY_LOAD is set in the environment
            raise CheckpointError(f"{file.name}: TORCH_FORCE_WEIGHTS_ONLY_LOAD forbids the restricted reader "
                                  "official checkpoints need; unset it for this command") from err
        raise CheckpointError(f"{file.name} is not a readable torch checkpoint: {err}") from err
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, AttributeError, TypeError) as err:
        raise CheckpointError(f"{file.name} is not a readable torch checkpoint: {err}") from err


def read_official_prompts(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The prompt tensors of an official checkpoint (owned copies) and what the file says about itself.

    Returns:
        ``(state, info)``: the prompt learner's tensors without the ``prompt_learner.`` prefix and without
        the frozen ``token_prefix``/``token_suffix``; ``info`` has ``epoch``, ``val_result`` and the counts of
        state-dict entries kept and dropped.

    Raises:
        CheckpointError: unreadable, refused, or without a ``state_dict`` of tensors.
    """
    name = Path(path).name
    raw = load_official(path)
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{name} holds no state_dict")
    bad = sorted(str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{name}: state_dict entries that are not tensors: {bad[:8]}")
    whole_model = any(k.startswith(OFFICIAL_PREFIX) for k in state)
    keep = {}
    for key, value in state.items():
        if whole_model and not key.startswith(OFFICIAL_PREFIX):
            continue  # the frozen CLIP weights saved beside the prompts: never read from the map
        short = key[len(OFFICIAL_PREFIX):] if whole_model else key
        if short not in DROPPED_OFFICIAL_KEYS:
            keep[short] = value.detach().clone()  # owned memory, so the file's map can go
    info = {"epoch": _plain_number(raw.get("epoch")) if isinstance(raw, Mapping) else None,
            "val_result": _plain_number(raw.get("val_result")) if isinstance(raw, Mapping) else None,
            "kept_entries": len(keep), "dropped_entries": len(state) - len(keep)}
    del raw, state
    return keep, info


def _plain_number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _learner_options(kind: str, ctx: torch.Tensor, state: Mapping[str, torch.Tensor], ctx_init: str | None) -> dict:
    if kind == "maple":
        depth = 1 + sum(k.startswith("compound_prompts_text.") for k in state)
        return {"n_ctx": ctx.shape[0], "depth": depth, "ctx_init": ctx_init or ZERO_SHOT_CONTEXT}
    options = {"n_ctx": ctx.shape[-2], "class_specific": ctx.dim() == 3}
    if ctx_init:
        options["ctx_init"] = ctx_init
    return options


def import_official(src: str | Path, backbone: Backbone, classnames: list[str], out: str | Path, *,
                    learner: str | None = None, ctx_init: str | None = None, dapt: DaptConfig | None = None,
                    name: str | None = None) -> Path:
    """Converts an official CoOp or MaPLe/DAPT Dassl checkpoint into a prompt set.

    Args:
        src: ``model.pth.tar-N`` or ``model-best.pth.tar`` from the official code (read with
            :class:`RestrictedUnpickler`; optimizer and scheduler objects are never built).
        classnames: the class list, in label order (the official files do not store it).
        learner: ``coop`` or ``maple``; detected from the keys when None.
        ctx_init: the prompt words the context replaced (MaPLe: "a photo of a" by default).
        dapt: the DAPT settings it was trained with, when known (recorded in the metadata).

    Returns:
        The path of the written ``.safetensors`` prompt set.

    Raises:
        CheckpointError: refused, unreadable, or not fitting the backbone (nothing is written then).
    """
    file = Path(src)
    state, info = read_official_prompts(file)
    if "ctx" not in state:
        raise CheckpointError(f"{file.name} has no prompt context 'ctx'; keys: {sorted(state)[:8]}")
    kind = learner or ("maple" if any(k.startswith("compound_prompts_text") for k in state) else "coop")
    ctx = state["ctx"]
    if ctx.shape[-1] != backbone.text_width:
        raise CheckpointError(f"{file.name} has context width {ctx.shape[-1]}, the text width of "
                              f"{backbone.name} is {backbone.text_width}")
    model = build_learner(kind, backbone, classnames, **_learner_options(kind, ctx, state, ctx_init))
    expected = model.state_dict()
    if set(state) != set(expected):
        raise CheckpointError(f"{file.name} does not look like an official {kind} checkpoint: "
                              f"missing {sorted(set(expected) - set(state))}, "
                              f"unexpected {sorted(set(state) - set(expected))}")
    wrong = sorted(k for k in state if state[k].shape != expected[k].shape)
    if wrong:
        raise CheckpointError(f"{file.name}: tensors of the wrong shape for {kind} on {backbone.name}: "
                              + ", ".join(f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
                                          for k in wrong))
    model.load_state_dict({k: v.to(backbone.device, expected[k].dtype) for k, v in state.items()})
    log.info("imported %s (%s, epoch %s): %d prompt tensors kept, %d frozen entries dropped", file.name, kind,
             info["epoch"], info["kept_entries"], info["dropped_entries"])
    train = {"imported_from": file.name, "epoch": info["epoch"], "val_result": info["val_result"]}
    return save_prompt_set(model, out, dapt=dapt, train_config=train, name=name)
