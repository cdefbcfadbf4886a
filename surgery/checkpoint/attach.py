"""Keep a rewritten model ready to save: its recipe in ``model.config``, the quantizer ``from_pretrained``
would give it (packed weights on ``save_pretrained``) and an atomic ``save_pretrained``.

Registered with :func:`surgery.core.history.on_history_change`, so it runs after every apply, replay
and revert. The recipe's targets are written in the anatomy's reference names (:mod:`surgery.core.names`).
"""

from __future__ import annotations

import types

from torch import nn

from surgery.checkpoint.integration import SurgeryQuantizer
from surgery.checkpoint.recipe import write_recipe
from surgery.checkpoint.saving import atomic_save_pretrained
from surgery.core.history import AppliedStep, on_history_change
from surgery.core.host import get_host
from surgery.core.names import renamer


@on_history_change
def sync_recipe(model: nn.Module, steps: list[AppliedStep]) -> None:
    """Write the recipe of ``steps`` into ``model.config`` and attach (or, with no step left, remove)
    the quantizer and the atomic ``save_pretrained``."""
    write_recipe(model.config, [_reference_targets(model, step.to_dict()) for step in steps])
    if getattr(model.config, "quantization_config", None) is not None:
        model.__dict__["hf_quantizer"] = SurgeryQuantizer(model.config.quantization_config, pre_quantized=True)
        model.__dict__["save_pretrained"] = types.MethodType(atomic_save_pretrained, model)
    else:
        model.__dict__.pop("hf_quantizer", None)
        model.__dict__.pop("save_pretrained", None)


def _reference_targets(model: nn.Module, step: dict) -> dict:
    """A recipe names its targets in the anatomy's reference layout, whichever layout ``model`` has
    (so one recipe, and its digest, reads the same on every transformers version)."""
    forward = renamer(get_host().anatomy_of(model, required=False), model, to_reference=True)
    if forward is not None:
        step["targets"] = [forward.name(target) for target in step["targets"]]
    return step
