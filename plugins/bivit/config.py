"""Options of BiViT binarization, with the reference code's defaults."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from surgery.core.options import SurgeryConfig


@dataclasses.dataclass(frozen=True)
class BiViTConfig(SurgeryConfig):
    """BiViT (He et al., ICCV 2023).

    Attributes:
        parts: which parts of every block to binarize: "all", "attention" (query/key/value/output
            projections and, with binary activations, q, k, v and the attention probabilities) or
            "mlp". Cross-layer binarization applies "attention", recovers, then "mlp".
        activations: "binary" (W1A1: linear inputs and q/k/v signs, softmax-aware binarization of
            the attention probabilities) or "full" (W1A32: weights only).
        softmax_ratio: SAB keeps the probabilities at or above this fraction of their row's
            maximum (0.25 in the reference code).
        learnable_alpha: learnable per-output-channel weight scales initialised from mean|W| (the
            paper's parameterized weight scales); False recomputes mean|W| (XNOR-Net style).
        staged: with ``parts="all"``, :func:`surgery.recover` runs the MLP linears in full precision
            for the first ``stage_split`` of the run, then binary: cross-layer binarization within
            one recovery (attention first, then MLP). False trains everything binary from the start.
        stage_split: the fraction of the recovery run spent in the first stage (0.5).
        pack: store the binarized weights bit-packed in the checkpoint (1 bit each plus the scales);
            False keeps the float latent weights, to go on training from the checkpoint.
    """

    plugin: ClassVar[str] = "bivit"

    parts: Literal["all", "attention", "mlp"] = "all"
    activations: Literal["binary", "full"] = "binary"
    softmax_ratio: float = 0.25
    learnable_alpha: bool = True
    staged: bool = True
    stage_split: float = 0.5
    pack: bool = True

    def validate(self) -> None:
        if not 0.0 < self.softmax_ratio <= 1.0:
            raise self.invalid("softmax_ratio", self.softmax_ratio, "a number in (0, 1]")
        if not 0.0 <= self.stage_split < 1.0:
            raise self.invalid("stage_split", self.stage_split, "a fraction of the run in [0, 1)")
