"""Undo for a failed ``apply``: remember the module tree and tensor values, put them back on failure.

Each module's class, attribute dict (with its ``_modules``/``_parameters``/``_buffers`` dicts copied)
and the values of its tensors are recorded. Restoring keeps the identity of every original module
and parameter, so optimizers and hooks that hold references stay valid. The value copies cost one
model's worth of memory while ``apply`` runs.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelSnapshot:
    """The state of ``model`` (modules, tensors, config) at construction time."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = [(m, m.__class__, _copy_dict(m.__dict__)) for m in model.modules()]
        self.tensors = [(t, t.detach().clone()) for t in _tensors(model)]
        config = getattr(model, "config", None)
        self.config = (config, copy.deepcopy(config.__dict__)) if config is not None else None

    def restore(self) -> None:
        for module, cls, state in self.modules:
            module.__class__ = cls
            module.__dict__.clear()
            module.__dict__.update(_copy_dict(state))
        with torch.no_grad():
            for tensor, value in self.tensors:
                if tensor.shape != value.shape or tensor.dtype != value.dtype:
                    tensor.data = value
                else:
                    tensor.copy_(value)
        if self.config is not None:
            config, state = self.config
            config.__dict__.clear()
            config.__dict__.update(copy.deepcopy(state))


def _copy_dict(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a module's ``__dict__`` that also copies its dict-valued entries (one level)."""
    return {k: (v.copy() if isinstance(v, dict) else v) for k, v in state.items()}


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for t in list(module._parameters.values()) + list(module._buffers.values()):
            if t is not None and not t.is_meta:
                seen.setdefault(id(t), t)
    return list(seen.values())
