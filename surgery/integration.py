"""Plain ``from_pretrained`` replays a saved recipe once ``surgery`` is imported.

transformers builds the model skeleton on the meta device, then calls the registered quantizer's
``_process_model_before_weight_loading``; that is where the recipe replays its structural rewrites,
so the weights then load into the rewritten modules. Without ``import surgery``, transformers warns
about an unknown quantization method and returns a plain model: :func:`surgery.load` is the loud path.
"""

from __future__ import annotations

from typing import Any

from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING, register_quantizer
from transformers.quantizers.base import HfQuantizer

from surgery.packing import packed_away_keys, packed_state_dict, unpack_all
from surgery.recipe import QUANT_METHOD, read_steps


class SurgeryQuantizer(HfQuantizer):
    """Replays a surgery recipe inside ``from_pretrained``. No calibration, no data."""

    requires_calibration = False
    required_packages = None

    def preprocess_model(self, model, **kwargs: Any):
        # The base class marks the model as quantized, which forbids .float()/.half(); surgery
        # steps are ordinary modules, so only the replay runs here.
        return self._process_model_before_weight_loading(model, **kwargs)

    def _process_model_before_weight_loading(self, model, **kwargs: Any) -> None:
        from surgery.apply import replay

        replay(model, read_steps(model.config))

    def _process_model_after_weight_loading(self, model, **kwargs: Any) -> None:
        unpack_all(model)

    def get_state_dict_and_metadata(self, model, safe_serialization=False):
        """Called by ``save_pretrained``: packed weights where a module stores fewer bits."""
        return packed_state_dict(model), {}

    def update_missing_keys(self, model, missing_keys: list[str], prefix: str) -> list[str]:
        packed = packed_away_keys(model)
        return [key for key in missing_keys if key not in packed]

    def is_serializable(self, safe_serialization=None) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True


if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:  # importable twice (reloads) without error
    register_quantizer(QUANT_METHOD)(SurgeryQuantizer)
