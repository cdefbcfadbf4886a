"""Pruning as a reduction matrix with one-hot rows: keep the most important patch tokens.

Importance is the attention the prefix tokens pay each token in this block (the score Token
Transforming's kept tokens are chosen by, EViT's without its fused token); the kept tokens stay in
sequence order after the prefix, with their sizes; the removed ones are dropped.
"""

from __future__ import annotations

import dataclasses

import torch

from surgery.toolkit.reduction import Selection, importance_flops, split_for_removal, with_prefix

REGION = "token_prune::prune"


def top_tokens(importance: torch.Tensor, r: int, prefix: int) -> Selection | None:
    """Keep all but the ``r`` least important patch tokens (at least one stays); None when r caps to 0."""
    split = split_for_removal(importance, r, prefix)
    return None if split is None else Selection(with_prefix(split[0], prefix))


@dataclasses.dataclass(frozen=True)
class PruneBuilder:
    """The builder the reducing block calls (see :mod:`surgery.toolkit.reducing`)."""

    prefix: int
    importance: bool = True
    region: str = REGION

    def __call__(
        self, metric: torch.Tensor, importance: torch.Tensor | None, r: int, groups: torch.Tensor | None = None
    ) -> Selection | None:
        """``groups`` (Swin's shifted-window regions) need nothing here: a kept token is one token of one group."""
        return top_tokens(importance, r, self.prefix)

    def describe(self) -> str:
        return "top-k pruning"


def overhead(tokens_in: int, tokens_out: int, prefix: int, width: int) -> float:
    """FLOPs of one pruning: the importance scores."""
    return importance_flops(tokens_in, prefix, width)
