"""Options of Castling-ViT's linear-angular attention, with the reference code's defaults."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from surgery.config import SurgeryConfig


@dataclasses.dataclass(frozen=True)
class CastlingConfig(SurgeryConfig):
    """Linear-angular attention (You et al., CVPR 2023).

    Attributes:
        layers: which blocks: "default"/"all" (every block), k (the first k) or block indices.
        kernel_size: taps of the depthwise conv along the token sequence on V (9, odd).
        sparse_reg: train with the auxiliary masked softmax branch (dropped at inference).
        sparse_threshold: softmax probabilities below it are masked in the auxiliary branch (0.02).
        aux_weight: weight of the auxiliary branch in training; a recovery schedule drives it to 0.
        init: "zero" (default) starts the conv at zero; "paper" uses PyTorch's default conv init.
    """

    plugin: ClassVar[str] = "castling"

    layers: Literal["default", "all"] | int | tuple[int, ...] = "default"
    kernel_size: int = 9
    sparse_reg: bool = True
    sparse_threshold: float = 0.02
    aux_weight: float = 1.0
    init: Literal["zero", "paper"] = "zero"

    def validate(self) -> None:
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise self.invalid("kernel_size", self.kernel_size, "an odd integer >= 1")
        if not 0.0 <= self.sparse_threshold < 1.0:
            raise self.invalid("sparse_threshold", self.sparse_threshold, "a number in [0, 1)")
        if self.aux_weight < 0:
            raise self.invalid("aux_weight", self.aux_weight, "a number >= 0")
