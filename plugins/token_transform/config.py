"""Options of Token Transforming (many-to-many token reduction)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from surgery.toolkit.reduction_config import ReductionConfig


# the logits are cosines in [-1, 1] / temperature: 1e-3 keeps them within +-1000 (a one-hot spread, finite in
# every float type); above 1e3 every weight is uniform to float32 rounding anyway
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3


@dataclasses.dataclass(frozen=True)
class TokenTransformConfig(ReductionConfig):
    """Token Transforming.

    Attributes (besides the shared schedule: r, inflect, r_per_layer, flops, prop_attn):
        temperature: softmax temperature over the cosine similarities of a removed token to the kept
            ones; lower is closer to merging into the most similar one.
        topk: how many kept tokens each removed token spreads over (the rest get weight 0).
    """

    plugin: ClassVar[str] = "token_transform"

    temperature: float = 0.02
    topk: int = 4

    def validate(self) -> None:
        super().validate()
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:  # cosines / temperature stay finite in fp16
            raise self.invalid(
                "temperature", self.temperature, f"a number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]"
            )
        if self.topk < 1:
            raise self.invalid("topk", self.topk, "an integer >= 1")
