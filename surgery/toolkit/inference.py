"""Caches that serve inference only: what a layer may compute once from its weights (binarized
weights, prepacked int8 kernels) when nothing needs their gradient, and when such a cache is stale.

A layer mixes in :class:`InferenceCache` (before its ``nn.Module`` base), asks :func:`inference_only`
whether this call may use the cache, and gets the cached value with ``self.cached(key, build)`` where
``key`` is :func:`state_key` of the tensors it is built from. The cache is dropped by ``train()`` /
``eval()`` and from copies and pickles, and rebuilt whenever a tensor it was built from is another
tensor or changed in place in a way autograd tracks (optimizer steps, ``load_state_dict``, ``copy_``
under ``no_grad``); an edit through ``.data`` is not tracked, so call ``eval()`` after one.

:func:`remembered` serves ``torch.compile`` and ``torch.export``: a buffer's value (a calibration
state, a fitted flag) cannot steer a traced graph without a graph break (``torch.compile``) or a
data-dependent-guard error (``torch.export``), so a layer reads such state eagerly at the moments it
changes (apply, calibration, loading, every eager call) and the trace takes the value last read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def inference_only(module: nn.Module, *tensors: torch.Tensor | None) -> bool:
    """Whether this call is inference: eval mode, no gradient recorded for any of ``tensors``, not
    tracing (exports keep the layer's own graph) and not compiling."""
    recording = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return not (module.training or recording or torch.jit.is_tracing() or torch.compiler.is_compiling())


def state_key(*tensors: torch.Tensor) -> tuple:
    """What a value computed from ``tensors`` depends on: each one's identity, storage, in-place
    version, dtype and device, and whether inference mode is on (a value built in inference mode
    serves inference mode only)."""
    return tuple((id(t), t._version, t.data_ptr(), t.dtype, t.device) for t in tensors) + (
        torch.is_inference_mode_enabled(),
    )


def remembered(module: nn.Module, key: str, read: Callable[[], Any]) -> Any:
    """``read()``, a value held in ``module``'s buffers, as a Python value. Outside compiling it is read
    and remembered; while ``torch.compile`` or ``torch.export`` traces, the value last read is taken
    (None when it was never read, so the caller keeps its buffer-reading path)."""
    if torch.compiler.is_compiling():
        return module.__dict__.get("_surgery_remembered", {}).get(key)
    value = read()
    module.__dict__.setdefault("_surgery_remembered", {})[key] = value
    return value


class InferenceCache:
    """One cached inference value per module, keyed by what it was built from (not saved)."""

    _inference_cache: tuple[tuple, Any] | None = None

    def cached(self, key: tuple, build: Callable[[], Any]) -> Any:
        if self._inference_cache is None or self._inference_cache[0] != key:
            with torch.no_grad():
                self._inference_cache = (key, build())
        return self._inference_cache[1]

    def clear_inference_cache(self) -> None:
        self._inference_cache = None

    def train(self, mode: bool = True):
        self.clear_inference_cache()
        return super().train(mode)

    def __getstate__(self) -> dict:
        # copies and pickles rebuild it (oneDNN's prepacked weights are opaque tensors that cannot be copied)
        return {**super().__getstate__(), "_inference_cache": None}
