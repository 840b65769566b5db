"""Pretrained weight files: a registry of named specs, the one place that finds and downloads them, safe loading.

A weight is known by a short registry name (``"clip-vit-b-16-openai"``, ``"sam-vit-b"``). The package has
one module per concept:

- :mod:`~dapt_core.weights.registry`: :class:`WeightSpec`, the registry and its built-in entries;
- :mod:`~dapt_core.weights.online`: whether the machine is online, decided once per process by a single
  short TCP connect, so an offline machine gets a clear :class:`WeightsNotFoundError` within seconds instead
  of a minute of HTTP retries;
- :mod:`~dapt_core.weights.resolve`: an explicit path, then ``checkpoints/``, then the Hugging Face cache,
  and only then the network;
- :mod:`~dapt_core.weights.safe_load`: ``weights_only`` loading of ``.pth`` checkpoints.
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
from dapt_core.weights.safe_load import UnsafeCheckpointError, safe_torch_load

__all__ = [
    "UnknownWeightsError",
    "UnsafeCheckpointError",
    "WeightSpec",
    "WeightsIntegrityError",
    "WeightsNotFoundError",
    "fetch_weights",
    "get_weight_spec",
    "is_online",
    "list_weights",
    "register_weights",
    "resolve_weights",
    "safe_torch_load",
    "weights_status",
]
