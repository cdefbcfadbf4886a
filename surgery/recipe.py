"""The versioned recipe, stored in ``config.json`` under ``quantization_config``.

transformers lets a third party register a quantization method; surgery registers ``"surgery"`` so
that ``from_pretrained`` hands the recipe to :mod:`surgery.integration`, which replays it before
the weights load. The recipe looks like::

    "quantization_config": {
      "quant_method": "surgery",
      "format_version": 1,
      "steps": [{"plugin": "ggem", "plugin_version": "0.1.0", "package": "surgery",
                 "options": {...}, "targets": ["vit.layernorm"],
                 "versions": {"surgery": "0.1.0", "torch": "2.13.0", "transformers": "4.57.6"}}]
    }
"""

from __future__ import annotations

from typing import Any

from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, register_quantization_config
from transformers.utils.quantization_config import QuantizationConfigMixin

from surgery.errors import RecipeError

QUANT_METHOD = "surgery"
FORMAT_VERSION = 1
_STEP_KEYS = ("plugin", "options")


class SurgeryRecipe(QuantizationConfigMixin):
    """The recipe as transformers sees it: a quantization config whose method is ``"surgery"``."""

    def __init__(self, steps: list[dict[str, Any]] | None = None, format_version: int = FORMAT_VERSION, **_: Any):
        self.quant_method = QUANT_METHOD
        self.format_version = format_version
        self.steps = [dict(step) for step in steps or []]

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": QUANT_METHOD, "format_version": self.format_version, "steps": [dict(s) for s in self.steps]}

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()


if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:  # importable twice (reloads) without error
    register_quantization_config(QUANT_METHOD)(SurgeryRecipe)


def write_recipe(config: Any, steps: list[dict[str, Any]]) -> None:
    """Store ``steps`` in ``config``; with no steps left, remove the recipe entirely."""
    if steps:
        config.quantization_config = SurgeryRecipe(steps)
    elif isinstance(read_recipe_dict(config), dict):
        del config.quantization_config


def read_recipe_dict(config: Any) -> dict[str, Any] | None:
    """The recipe dict in ``config`` (object or dict form), or None when it has none."""
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        return None
    data = qc.to_dict() if hasattr(qc, "to_dict") else dict(qc)
    return data if data.get("quant_method") == QUANT_METHOD else None


def read_steps(config: Any) -> list[dict[str, Any]]:
    """The validated list of step dicts of ``config``'s recipe ([] when it has none)."""
    data = read_recipe_dict(config)
    if data is None:
        return []
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise RecipeError(
            f"the recipe has format_version {version!r}; this surgery reads up to {FORMAT_VERSION}. "
            "Upgrade surgery (pip install -U surgery)."
        )
    steps = data.get("steps")
    if not isinstance(steps, list):
        raise RecipeError(f"the recipe's 'steps' must be a list, got {type(steps).__name__}.")
    for index, step in enumerate(steps, 1):
        missing = [k for k in _STEP_KEYS if not isinstance(step, dict) or k not in step]
        if missing:
            raise RecipeError(f"recipe step {index} lacks {', '.join(missing)}: {step!r}")
    return steps
