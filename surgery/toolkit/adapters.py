"""How a plugin's layer tells adapters (PEFT's LoRA) where a low-rank update must go.

A LoRA adapter adds ``scale * B @ A`` to a Linear: for ``x W^T + b`` adding it beside the layer or
into ``W`` is the same (which is why PEFT can merge). A layer that computes from its weight
something other than ``x W^T`` (binarized ``alpha * sign(W)``, int8 codes of ``W``) breaks that
identity: an update kept beside it runs in float, and merged into ``W`` it is binarized or quantized
with the rest, so the merged model is another model. Such a layer mixes in :class:`LatentWeight`
(before its ``nn.Module`` base): its ``weight`` is a latent float weight its forward derives the
effective one from. :mod:`surgery.recovery.lora` then trains the update inside the layer
(``forward(x)`` computed with the weight ``W + scale * B @ A``), so merging it into ``W`` gives the
model that was trained, exactly.

:func:`unwrapped` gives the layer under an adapter wrapper (PEFT replaces ``name`` by a module
whose ``base_layer`` is the original); training hooks that look layers up by name use it.
:func:`is_peft_model` and :func:`holds_adapter_layers` tell saving and recovery what PEFT wrapped.
"""

from __future__ import annotations

from torch import nn

from surgery.core.wrappers import holds_adapter_layers, is_peft_model

__all__ = ["LatentWeight", "holds_adapter_layers", "is_latent", "is_peft_model", "module_at", "unwrapped"]


class LatentWeight:
    """Marker: this Linear's ``weight`` is latent; its forward is a function of it other than ``x W^T``."""

    surgery_latent_weight = True


def is_latent(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and bool(getattr(module, "surgery_latent_weight", False))


def unwrapped(module: nn.Module) -> nn.Module:
    """``module`` itself, or the layer an adapter wrapper holds (followed through nested wrappers)."""
    seen = 0
    while callable(getattr(module, "get_base_layer", None)) and seen < 8:
        base = module.get_base_layer()
        if base is module:
            break
        module, seen = base, seen + 1
    return module


def module_at(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)``, seen through an adapter wrapper."""
    return unwrapped(model.get_submodule(name))
