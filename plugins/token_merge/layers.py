"""ToMe's class swaps: the shared token-reduction classes (:mod:`surgery.toolkit.reducing`) with
ToMe's bipartite matching as the reduction.

Each swapped class is a subclass of the original, named ``ToMe<Original>``, so ``print(model)``
shows it; no new parameters, the same state_dict, and ``revert`` swaps the original classes back.
"""

from __future__ import annotations

import dataclasses

import torch

from surgery.core.parts import AttentionParts
from surgery.plugins.token_merge.merge import Matching, bipartite_soft_matching
from surgery.toolkit.reducing import ReducingAttention, ReducingLayer, UnmergingLayer
from surgery.toolkit.windows import WindowUnmergingLayer

MERGE_REGION = "token_merge::merge"  # profiler label of the matching + merging work


@dataclasses.dataclass(frozen=True)
class BipartiteMerge:
    """The builder: ToMe's bipartite soft matching of the metric (no importance scores needed)."""

    prefix: int
    importance: bool = False
    region: str = MERGE_REGION

    def __call__(
        self, metric: torch.Tensor, importance: torch.Tensor | None, r: int, groups: torch.Tensor | None = None
    ) -> Matching | None:
        return bipartite_soft_matching(metric, r, self.prefix, groups)

    def describe(self) -> str:
        return ""


class ToMeSelfAttention(ReducingAttention):
    """Self-attention that also returns the merge metric, with proportional attention."""

    @property
    def tome_parts(self) -> AttentionParts:
        return self.reduction_parts

    def tome_attention(self, hidden: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context (B, N, C), keys averaged over heads (B, N, d))``; log(size) biases the keys."""
        context, metric, _ = self.reducing_attention(hidden, size)
        return context, metric


class ToMeLayer(ReducingLayer):
    """A block that merges ``reduction_r`` tokens between attention and MLP (ToMe's ToMeBlock)."""


class ToMeUnmergingLayer(UnmergingLayer):
    """A block that merges ``reduction_r`` tokens of its input, computes on them and unmerges (ToMe for SD)."""


class ToMeWindowLayer(WindowUnmergingLayer):
    """A windowed block (Swin) that merges ``reduction_r`` tokens of every window, computes on them and unmerges."""
