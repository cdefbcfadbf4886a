"""Keep a rewritten model ready to save: its recipe in ``model.config``, the quantizer ``from_pretrained``
would give it (packed weights on ``save_pretrained``) and an atomic ``save_pretrained``.

Registered with :func:`surgery.core.history.on_history_change`, so it runs after every apply, replay
and revert.
"""

from __future__ import annotations

import types

from torch import nn

from surgery.checkpoint.integration import SurgeryQuantizer
from surgery.checkpoint.recipe import write_recipe
from surgery.checkpoint.saving import atomic_save_pretrained
from surgery.core.history import AppliedStep, on_history_change


@on_history_change
def sync_recipe(model: nn.Module, steps: list[AppliedStep]) -> None:
    """Write the recipe of ``steps`` into ``model.config`` and attach (or, with no step left, remove)
    the quantizer and the atomic ``save_pretrained``."""
    write_recipe(model.config, [step.to_dict() for step in steps])
    if getattr(model.config, "quantization_config", None) is not None:
        model.__dict__["hf_quantizer"] = SurgeryQuantizer(model.config.quantization_config, pre_quantized=True)
        model.__dict__["save_pretrained"] = types.MethodType(atomic_save_pretrained, model)
    else:
        model.__dict__.pop("hf_quantizer", None)
        model.__dict__.pop("save_pretrained", None)
