"""The mark on a saved ``config.json`` that keeps transformers alone from loading another model.

Without ``import surgery``, transformers would skip the recipe's unknown quantization method with a log line and
return a different model. So a saved ``config.json`` names the model type :data:`MARKER` (the real one is kept
under :data:`BASE_TYPE_KEY`): transformers alone refuses it with "model type `surgery (pip install
vision-surgery)` ... not recognize", in ``AutoConfig``, the Auto model classes and ``pipeline()``; with surgery
imported (this module registers the marker with ``AutoConfig``), the marker resolves to the real config after the
recipe is checked. A concrete model class only warns about the marker: :mod:`surgery.checkpoint.guard` covers it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from surgery._version import DISTRIBUTION, LEGACY_DISTRIBUTIONS
from surgery.checkpoint.recipe import QUANT_METHOD, validate_recipe
from surgery.errors import RecipeError

MARKER = f"surgery (pip install {DISTRIBUTION})"
# the markers written before the distribution was renamed: still read
MARKERS = (MARKER, *(f"surgery (pip install {name})" for name in LEGACY_DISTRIBUTIONS))
BASE_TYPE_KEY = "surgery_base_model_type"


class SurgeryCheckpointConfig(PretrainedConfig):
    """What ``AutoConfig`` finds for :data:`MARKER`: it checks the recipe and returns the real config."""

    model_type = MARKER

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        data = dict(config_dict)
        base = data.pop(BASE_TYPE_KEY, None)
        if not isinstance(base, str) or base not in CONFIG_MAPPING:
            raise RecipeError(
                f"config.json is marked as a surgery checkpoint, but its {BASE_TYPE_KEY} is "
                f"{str(base)[:60]!r}, not a model type transformers knows."
            )
        recipe = data.get("quantization_config")
        if not isinstance(recipe, dict) or recipe.get("quant_method") != QUANT_METHOD:
            raise RecipeError(
                "config.json is marked as a surgery checkpoint, but its quantization_config is not a "
                "surgery recipe (was it edited?)."
            )
        validate_recipe(recipe)
        data["model_type"] = base
        return CONFIG_MAPPING[base].from_dict(data, **kwargs)


def mark_config_file(folder: str | Path) -> None:
    """Mark a saved ``config.json`` whose recipe has steps (see the module docstring)."""
    path = Path(folder) / "config.json"
    data = json.loads(path.read_text())
    recipe = data.get("quantization_config")
    if (
        isinstance(recipe, dict)
        and recipe.get("quant_method") == QUANT_METHOD
        and data.get("model_type") not in MARKERS
    ):
        data[BASE_TYPE_KEY], data["model_type"] = data["model_type"], MARKER
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def unmark(config: Any) -> None:
    """Undo what a model class's own ``config_class.from_pretrained`` reads from a marked file (it keeps
    the marker and the base type as attributes of the instance)."""
    attributes = vars(config)
    if attributes.get("model_type") in MARKERS:
        base = attributes.pop(BASE_TYPE_KEY, None)
        del attributes["model_type"]
        if base != type(config).model_type:
            raise RecipeError(
                f"this surgery checkpoint is a {str(base)[:60]!r} model; it cannot load into "
                f"{type(config).__name__} ({type(config).model_type})."
            )


for _marker in MARKERS:
    if _marker not in CONFIG_MAPPING:
        AutoConfig.register(
            _marker,
            SurgeryCheckpointConfig
            if _marker == MARKER
            else type("LegacySurgeryCheckpointConfig", (SurgeryCheckpointConfig,), {"model_type": _marker}),
        )
