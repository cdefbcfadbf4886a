"""The steps applied to a model: kept on the model in memory and mirrored into its config's recipe."""

from __future__ import annotations

import dataclasses
import types
from typing import Any

from torch import nn

from surgery.config import SurgeryConfig

HISTORY_ATTR = "_surgery_history"


@dataclasses.dataclass
class AppliedStep:
    """One applied step. Everything but ``config`` and ``undo`` is written to the recipe."""

    plugin: str
    options: dict[str, Any]
    plugin_version: str
    package: str
    targets: list[str]
    versions: dict[str, str]
    base_model: str | None = None
    config: SurgeryConfig | None = dataclasses.field(default=None, repr=False, compare=False)
    undo: Any = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        source = {"base_model": self.base_model} if self.base_model else {}
        return {**source,
            "plugin": self.plugin,
            "plugin_version": self.plugin_version,
            "package": self.package,
            "options": dict(self.options),
            "targets": list(self.targets),
            "versions": dict(self.versions),
        }


def get_history(model: nn.Module) -> list[AppliedStep]:
    """The steps applied to ``model``, oldest first (a copy of the list)."""
    return list(getattr(model, HISTORY_ATTR, []))


def set_history(model: nn.Module, steps: list[AppliedStep]) -> None:
    """Record ``steps`` on the model and write the matching recipe into ``model.config``."""
    from surgery.recipe import write_recipe

    object.__setattr__(model, HISTORY_ATTR, list(steps))
    write_recipe(model.config, [s.to_dict() for s in steps])
    attach_quantizer(model)


def attach_quantizer(model: nn.Module) -> None:
    """Give a rewritten model the quantizer ``from_pretrained`` would give it, so that
    ``save_pretrained`` stores packed weights, and an atomic ``save_pretrained``
    (:mod:`surgery.saving`); remove both when no step is left."""
    from surgery.integration import SurgeryQuantizer
    from surgery.saving import atomic_save_pretrained

    if getattr(model.config, "quantization_config", None) is not None:
        model.__dict__["hf_quantizer"] = SurgeryQuantizer(model.config.quantization_config, pre_quantized=True)
        model.__dict__["save_pretrained"] = types.MethodType(atomic_save_pretrained, model)
    else:
        model.__dict__.pop("hf_quantizer", None)
        model.__dict__.pop("save_pretrained", None)
