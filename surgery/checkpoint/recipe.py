"""The versioned recipe, stored in ``config.json`` under ``quantization_config``.

transformers lets a third party register a quantization method; surgery registers ``"surgery"`` so
that ``from_pretrained`` hands the recipe to :mod:`surgery.checkpoint.integration`, which replays it before
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

import hashlib
import json
from typing import Any

from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, register_quantization_config
from transformers.utils.quantization_config import QuantizationConfigMixin

from surgery._version import DISTRIBUTION
from surgery.errors import RecipeError, clean_text

QUANT_METHOD = "surgery"
FORMAT_VERSION = 1
_STEP_KEYS = ("plugin", "options")
# the types of the fields of a saved step (``base_model`` and ``plugin_version`` may be absent)
_STEP_TYPES = {
    "plugin": str,
    "options": dict,
    "plugin_version": str,
    "package": str,
    "targets": list,
    "versions": dict,
    "base_model": str,
}
_MISSING = object()


class SurgeryRecipe(QuantizationConfigMixin):
    """The recipe as transformers sees it: a quantization config whose method is ``"surgery"``.

    transformers builds it from ``config.json`` with ``SurgeryRecipe(**quantization_config)``, so the
    checks of :func:`validate_recipe` run on every load path, ``from_pretrained`` included."""

    def __init__(self, steps: Any = _MISSING, format_version: Any = _MISSING, **extra: Any):
        data = {k: v for k, v in (("steps", steps), ("format_version", format_version)) if v is not _MISSING}
        validate_recipe({"quant_method": QUANT_METHOD, **data, **extra})
        self.quant_method = QUANT_METHOD
        self.format_version = format_version
        self.steps = [dict(step) for step in steps]

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant_method": QUANT_METHOD,
            "format_version": self.format_version,
            "steps": [dict(s) for s in self.steps],
        }

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()


if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:  # importable twice (reloads) without error
    register_quantization_config(QUANT_METHOD)(SurgeryRecipe)


def write_recipe(config: Any, steps: list[dict[str, Any]]) -> None:
    """Store ``steps`` in ``config``; with no steps left, remove the recipe entirely."""
    if steps:
        config.quantization_config = SurgeryRecipe(steps, FORMAT_VERSION)
    elif isinstance(read_recipe_dict(config), dict):
        del config.quantization_config
        # set by transformers when it loaded a quantized model; it serializes only beside a recipe
        vars(config).pop("_pre_quantization_dtype", None)


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
    return validate_recipe(data)


def validate_recipe(data: Any) -> list[dict[str, Any]]:
    """Check a recipe's shape and return its steps; raise :class:`RecipeError` naming what is wrong.

    A recipe is never empty (removing the last step removes it), its ``format_version`` is an
    integer this surgery reads, and each step is an object whose fields have their saved types.
    """
    if not isinstance(data, dict):
        raise RecipeError(f"the surgery recipe must be a JSON object, got {type(data).__name__}.")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RecipeError(f"the recipe's format_version must be an integer >= 1, got {_shown(version)}.")
    if version > FORMAT_VERSION:
        raise RecipeError(
            f"the recipe has format_version {version}; this surgery reads up to {FORMAT_VERSION}. "
            f"Upgrade surgery (pip install -U {DISTRIBUTION})."
        )
    unknown = sorted(set(data) - {"quant_method", "format_version", "steps"})
    if unknown:
        raise RecipeError(
            f"the recipe has unknown field(s) {', '.join(_shown(k) for k in unknown[:5])}; "
            "fields are quant_method, format_version, steps."
        )
    steps = data.get("steps")
    if not isinstance(steps, list):
        raise RecipeError(
            f"the recipe's 'steps' must be a list, got {_shown(steps) if steps is None else type(steps).__name__}."
        )
    if not steps:
        raise RecipeError("the recipe has no steps; a surgery checkpoint always has at least one (was it edited?).")
    for index, step in enumerate(steps, 1):
        missing = [k for k in _STEP_KEYS if not isinstance(step, dict) or k not in step]
        if missing:
            raise RecipeError(f"recipe step {index} lacks {', '.join(missing)}: {_shown(step)}")
        for key, value in step.items():
            kind = _STEP_TYPES.get(key)
            if kind is None:
                raise RecipeError(
                    f"recipe step {index} has an unknown field {_shown(key)}; fields are {', '.join(_STEP_TYPES)}."
                )
            if not isinstance(value, kind) or (key == "targets" and not all(isinstance(t, str) for t in value)):
                raise RecipeError(f"recipe step {index}: '{key}' must be a {_JSON_NAMES[kind]}, got {_shown(value)}.")
    return steps


_JSON_NAMES = {str: "string", dict: "JSON object", list: "list of strings"}


def recipe_digest(steps: list[dict[str, Any]]) -> str:
    """SHA-256 of what the steps build (plugin, options, targets, in order) as canonical JSON: saved in
    the weights' metadata, compared on load. Versions and provenance are not part of it."""
    built = [{k: step.get(k) for k in ("plugin", "options", "targets")} for step in steps]
    return hashlib.sha256(json.dumps(built, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _shown(value: Any) -> str:
    """``repr`` of a value read from a checkpoint, on one line and cut (:func:`clean_text`)."""
    return clean_text(repr(value), limit=120)
