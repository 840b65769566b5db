"""Pretrained weight files: a registry of named specs, the one place that finds and downloads them, safe loading.

A weight is known by a short registry name (``"clip-vit-b-16-openai"``, ``"sam-vit-b"``). The package has
one module per concept:

- :mod:`~dapt_core.weights.registry`: :class:`WeightSpec`, the registry and its built-in entries;
- :mod:`~dapt_core.weights.online`: whether the machine is online, decided once per process by a single
  short TCP connect, so an offline machine gets a clear :class:`WeightsNotFoundError` within seconds instead
  of a minute of HTTP retries;
- :mod:`~dapt_core.weights.resolve`: an explicit path, then ``checkpoints/``, then the Hugging Face cache,
  and only then the network;
- :mod:`~dapt_core.weights.safe_load`: ``weights_only`` loading of ``.pth`` checkpoints, and telling a weight
  file from anything else before a loader sees it.
"""

from dapt_core.weights.online import is_online
from dapt_core.weights.registry import (
    UnknownWeightsError,
    WeightSpec,
    get_weight_spec,
    list_weights,
    register_weights,
)
from dapt_core.weights.resolve import (
    WeightsIntegrityError,
    WeightsNotFoundError,
    fetch_weights,
    resolve_weights,
    weights_status,
)
from dapt_core.weights.safe_load import (
    UnsafeCheckpointError,
    WeightFileError,
    check_weight_file,
    safe_torch_load,
    weight_load_errors,
)

__all__ = [
    "UnknownWeightsError",
    "UnsafeCheckpointError",
    "WeightFileError",
    "WeightSpec",
    "WeightsIntegrityError",
    "WeightsNotFoundError",
    "check_weight_file",
    "fetch_weights",
    "get_weight_spec",
    "is_online",
    "list_weights",
    "register_weights",
    "resolve_weights",
    "safe_torch_load",
    "weight_load_errors",
    "weights_status",
]
