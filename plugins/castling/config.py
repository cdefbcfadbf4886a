"""Options of Castling-ViT's linear-angular attention, with the reference code's defaults."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from surgery.core.options import SurgeryConfig


@dataclasses.dataclass(frozen=True)
class CastlingConfig(SurgeryConfig):
    """Linear-angular attention (You et al., CVPR 2023).

    Attributes:
        layers: which blocks: "default"/"all" (every block), k (the first k) or block indices.
        kernel_size: taps of the depthwise conv along the token sequence on V (9, odd).
        sparse_reg: train with the auxiliary masked softmax branch (dropped at inference).
        sparse_threshold: softmax probabilities below it are masked in the auxiliary branch (0.02).
        aux_weight: weight of the auxiliary branch at the start of training.
        aux_decay: during :func:`surgery.recover`, the weight falls linearly to 0 at this fraction of
            the run (0.75), so the last quarter trains the inference-time form alone.
        aux_penalty: weight of a sparsity penalty on the auxiliary branch's kept probability mass,
            added to the recovery loss (0 = off), to drive the masks towards zero as the paper does
            (its schedule is not in the released code).
        init: "zero" (default) starts the conv at zero; "paper" uses PyTorch's default conv init.
    """

    plugin: ClassVar[str] = "castling"

    layers: Literal["default", "all"] | int | tuple[int, ...] = "default"
    kernel_size: int = 9
    sparse_reg: bool = True
    sparse_threshold: float = 0.02
    aux_weight: float = 1.0
    aux_decay: float = 0.75
    aux_penalty: float = 0.0
    init: Literal["zero", "paper"] = "zero"

    def validate(self) -> None:
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise self.invalid("kernel_size", self.kernel_size, "an odd integer >= 1")
        if not 0.0 <= self.sparse_threshold < 1.0:
            raise self.invalid("sparse_threshold", self.sparse_threshold, "a number in [0, 1)")
        if self.aux_weight < 0:
            raise self.invalid("aux_weight", self.aux_weight, "a number >= 0")
        if not 0.0 < self.aux_decay <= 1.0:
            raise self.invalid("aux_decay", self.aux_decay, "a fraction of the run in (0, 1]")
        if self.aux_penalty < 0:
            raise self.invalid("aux_penalty", self.aux_penalty, "a number >= 0")
