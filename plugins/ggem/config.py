"""Options of GGeM pooling, with the paper's defaults."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from surgery.core.options import SurgeryConfig


@dataclasses.dataclass(frozen=True)
class GGeMConfig(SurgeryConfig):
    """Group Generalized Mean pooling.

    Attributes:
        groups: channel groups, each with its own p. None (default) means one group per attention
            head of the last stage, as in the paper (ViT-B: 12 groups of 64 channels).
        p_init: initial p of every group (3.0, the GeM default).
        eps: features are clamped to at least ``eps`` before the power (1e-6).
        learn_p: whether p is a trainable parameter (it is saved either way).
    """

    plugin: ClassVar[str] = "ggem"

    groups: int | None = None
    p_init: float = 3.0
    eps: float = 1e-6
    learn_p: bool = True

    def validate(self) -> None:
        if self.groups is not None and self.groups < 1:
            raise self.invalid("groups", self.groups, "a positive integer that divides the feature width, or None")
        if not self.p_init > 0:
            raise self.invalid("p_init", self.p_init, "a number > 0")
        if not self.eps > 0:
            raise self.invalid("eps", self.eps, "a number > 0")
