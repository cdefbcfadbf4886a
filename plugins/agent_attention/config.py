"""Options of Agent Attention, with the paper's defaults."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal

from surgery.core.options import SurgeryConfig


@dataclasses.dataclass(frozen=True)
class AgentAttentionConfig(SurgeryConfig):
    """Agent Attention (Han et al., ECCV 2024).

    Attributes:
        agents: agent tokens per block, a perfect square. None (default) uses the paper's choice:
            ViT/DeiT 49, or 81 from width 768 (DeiT-B); Swin 9, 16, 49, 49 by stage; capped at the
            largest square that fits the block's patch grid. An explicit count above the grid's
            patch count is refused.
        layers: which blocks get agent attention: "default" (the paper's: every block, DeiT-B only
            the first 4, Swin every stage but the last), "all", k (the first k), or block indices.
        init: "zero" (default) starts every new bias and the depthwise conv at zero, so each block
            is exactly two-stage softmax attention through pooled agents (a deterministic warm
            start); "paper" uses trunc_normal(std=0.02) biases and PyTorch's default conv init.
        bias_size: side of the agent-bias tables, interpolated bilinearly to the patch grid as in
            the official code (7); None makes them the size of the grid at apply time.
        prefix_bias: give the cls (and DeiT distillation) tokens their own agent biases (the
            official ``ac_bias``/``ca_bias``); False leaves them without position bias.
    """

    plugin: ClassVar[str] = "agent_attention"

    agents: int | None = None
    layers: Literal["default", "all"] | int | tuple[int, ...] = "default"
    init: Literal["zero", "paper"] = "zero"
    bias_size: int | None = 7
    prefix_bias: bool = True

    def validate(self) -> None:
        if self.agents is not None and (self.agents < 1 or math.isqrt(self.agents) ** 2 != self.agents):
            raise self.invalid("agents", self.agents, "a perfect square >= 1 (9, 16, 49, 81 ...) or None")
        if self.bias_size is not None and self.bias_size < 1:
            raise self.invalid("bias_size", self.bias_size, "an integer >= 1 or None")
