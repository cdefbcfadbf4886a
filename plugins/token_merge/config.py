"""Options of token merging, with ToMe's defaults."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from surgery.core.options import SurgeryConfig


@dataclasses.dataclass(frozen=True)
class ToMeConfig(SurgeryConfig):
    """Token merging (ToMe).

    Attributes:
        r: tokens merged away per block (ToMe's ``r``; 13-16 for ViT-B/16 at 224 in the paper).
        inflect: the r schedule as in ToMe's ``parse_r``: 0 (default) keeps r constant; -1 is the
            paper's decreasing schedule (2r in the first block down to 0 in the last); 1 increases
            from 0 to 2r; values between interpolate.
        r_per_layer: an explicit r for each block (zero-padded to the depth); overrides r/inflect.
        prop_attn: proportional attention, log(token size) added to the attention logits (True for
            supervised models; the paper turns it off for off-the-shelf MAE models).
    """

    plugin: ClassVar[str] = "token_merge"

    r: int = 8
    inflect: float = 0.0
    r_per_layer: tuple[int, ...] | None = None
    prop_attn: bool = True

    def validate(self) -> None:
        if self.r < 0:
            raise self.invalid("r", self.r, "an integer >= 0")
        if not -1.0 <= self.inflect <= 1.0:
            raise self.invalid("inflect", self.inflect, "a number in [-1, 1] (0 constant, -1 decreasing)")
        if self.r_per_layer is not None and any(v < 0 for v in self.r_per_layer):
            raise self.invalid("r_per_layer", list(self.r_per_layer), "integers >= 0, one per block")

    def schedule(self, num_layers: int) -> list[int]:
        """r for each of ``num_layers`` blocks (ToMe's ``parse_r``)."""
        if self.r_per_layer is not None:
            if len(self.r_per_layer) > num_layers:
                raise self.invalid("r_per_layer", list(self.r_per_layer), f"at most {num_layers} values (one per block)")
            return list(self.r_per_layer) + [0] * (num_layers - len(self.r_per_layer))
        low = int(self.r * (1.0 - self.inflect))
        high = 2 * self.r - low
        step = (high - low) / max(num_layers - 1, 1)
        return [int(low + step * layer) for layer in range(num_layers)]
