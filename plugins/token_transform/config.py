"""Options of Token Transforming (many-to-many token reduction)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from surgery.toolkit.reduction_config import ReductionConfig


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
        if not self.temperature > 0:
            raise self.invalid("temperature", self.temperature, "a number > 0")
        if self.topk < 1:
            raise self.invalid("topk", self.topk, "an integer >= 1")
