"""A side channel for token sizes, shared by plugins that shrink the sequence and those after them.

Token merging leaves tokens that stand for several patches; modules after the encoder (a pooling
head) should weight them by size. The sizes cannot travel in the hidden-state tensor, so the
encoder writes them here during ``forward`` and readers take them from here. The holder lives on the
top-level model (not as a module: it has no weights and is not saved) and is found by any plugin.
"""

from __future__ import annotations

import torch
from torch import nn

_ATTR = "_surgery_token_sizes"


class TokenSizes:
    """``sizes``: (B, N, 1) patches per token after the last merge, or None when nothing merged."""

    def __init__(self) -> None:
        self.sizes: torch.Tensor | None = None

    def for_tokens(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """The sizes when they describe ``tokens`` (B, N, C) exactly, else None."""
        sizes = self.sizes
        if sizes is None or sizes.shape[:2] != tokens.shape[:2]:
            return None
        return sizes.to(tokens.dtype)


def token_sizes(model: nn.Module) -> TokenSizes:
    """The model's holder, created on first use."""
    holder = model.__dict__.get(_ATTR)
    if holder is None:
        holder = TokenSizes()
        object.__setattr__(model, _ATTR, holder)
    return holder
