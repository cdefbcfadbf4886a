"""Options of EcoFormer attention, with the official configs' defaults (all PVTv2 EcoFormer configs)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from surgery.core.options import SurgeryConfig


# (field, lowest, highest): the learning is sequential in bits x iterations (16 x 100 in the paper), so the
# bounds keep an apply within minutes (64 x 10,000 of 16 x 100 is 400x the official work)
LIMITS = (("bits", 1, 64), ("anchors", 1, 1024), ("topk", 1, 1024), ("iterations", 0, 10_000))


@dataclasses.dataclass(frozen=True)
class EcoFormerConfig(SurgeryConfig):
    """EcoFormer (Liu et al., NeurIPS 2022).

    Attributes:
        layers: which blocks: "default" (the official choice keeps the last stage in softmax: Swin every
            stage but the last; ViT/DeiT every block but the last quarter, PVTv2's last-stage share of
            its depth, at least one), "all", k (the first k) or block indices.
        bits: hash bits b per head (16); the attention's bias term is c = b + 1.
        anchors: kernel anchors m per head (25), drawn from the tokens of the first sample.
        topk: the most and the least similar tokens per row that the hash learns to keep apart (10).
        lr, momentum, iterations: the per-bit SGD of the hash learning (5e-4, 0.9 Nesterov, 100).
        relearn_on_recover: learn the hash again on the first batch of :func:`surgery.recover` (the
            official recipe learns it on the first fine-tuning batch and, with k = 300 > 30 epochs, never
            again); False keeps the hash learned at apply time (calibration data) or on first use.
        seed: seeds the random initial hash weights A and the anchor draw (the official code uses the
            global random state).
    """

    plugin: ClassVar[str] = "ecoformer"

    layers: Literal["default", "all"] | int | tuple[int, ...] = "default"
    bits: int = 16
    anchors: int = 25
    topk: int = 10
    lr: float = 5e-4
    momentum: float = 0.9
    iterations: int = 100
    relearn_on_recover: bool = True
    seed: int = 0

    def validate(self) -> None:
        for field, low, high in LIMITS:  # types: SurgeryConfig
            if not low <= getattr(self, field) <= high:
                raise self.invalid(field, getattr(self, field), f"an integer in [{low}, {high}]")
        if not self.lr > 0:
            raise self.invalid("lr", self.lr, "a number > 0")
        if not 0.0 <= self.momentum < 1.0:
            raise self.invalid("momentum", self.momentum, "a number in [0, 1)")
