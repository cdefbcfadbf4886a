"""What an adapter library (PEFT) wrapped around or inside a model: surgery steps are applied to and
undone on the model itself, never under live adapters (they would be dropped with the modules that
hold them, and the wrapper's view of the history would drift from the model's)."""

from __future__ import annotations

from torch import nn

from surgery.errors import SurgeryError


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a PEFT wrapper (``PeftModel``) around a transformers model."""
    return hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))


def holds_adapter_layers(model: nn.Module) -> bool:
    """Whether PEFT's LoRA layers sit inside ``model`` (its PeftModel is what saves them)."""
    return any(hasattr(m, "lora_A") and callable(getattr(m, "get_base_layer", None)) for m in model.modules())


def refuse_adapters(model: nn.Module, action: str) -> None:
    """Raise when ``model`` is a PeftModel or holds adapter layers: ``action`` would work under them."""
    if is_peft_model(model) or holds_adapter_layers(model):
        raise SurgeryError(
            f"cannot {action} a model with LoRA adapters (PEFT) in it: the steps rewrite modules the "
            "adapters sit on, and the adapters would be lost. Merge them first (model = "
            "model.merge_and_unload(), or recover with lora merge=True), or "
            f"{action} before adding adapters."
        )
