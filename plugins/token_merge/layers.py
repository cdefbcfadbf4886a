"""ToMe's class swaps: encoder, block and self-attention, built on the anatomy's parts.

Only ``forward`` changes, so the classes are swapped in place (ToMe's own habit): no new
parameters, the same state_dict, and ``revert`` swaps the original classes back. Each swapped class
is a subclass of the original, named ``ToMe<Original>``, so ``print(model)`` shows it. The block's
forward is written once over :class:`~surgery.core.parts.BlockParts` (norms, attention projections,
residual branches), so it holds for every layout an anatomy describes. Token sizes travel between
blocks in the model's :class:`~surgery.toolkit.tokens.TokenSizes` side channel, which the encoder
resets at the start of every forward; the block returns hidden states alone, as the host blocks do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from surgery.core.parts import AttentionParts, BlockParts
from surgery.plugins.token_merge.merge import bipartite_soft_matching, merge_weighted
from surgery.toolkit.tokens import TokenSizes

MERGE_REGION = "token_merge::merge"  # profiler label of the matching + merging work


class ToMeSelfAttention:
    """Self-attention that also returns the merge metric, with proportional attention."""

    tome_parts: AttentionParts

    def tome_attention(self, hidden: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context (B, N, C), keys averaged over heads (B, N, d))``; log(size) biases the keys."""
        parts = self.tome_parts
        query, key, value = parts.qkv(hidden)
        bias = None if size is None else size.log().to(query.dtype)[:, None, None, :, 0]
        dropout = parts.dropout if self.training else 0.0
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout, scale=parts.scale)
        return context.transpose(1, 2).reshape(hidden.shape[0], -1, parts.width), key.mean(dim=1)


class ToMeLayer:
    """A block that merges ``tome_r`` tokens between attention and MLP (ToMe's ToMeBlock)."""

    tome_r: int = 0
    tome_prop_attn: bool = True
    tome_class_token: bool = True
    tome_distill_token: bool = False
    tome_parts: BlockParts
    tome_sizes: TokenSizes

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        parts, size = self.tome_parts, self.tome_sizes.sizes
        normed = parts.attention_input(hidden_states)
        context, metric = parts.attention.core.tome_attention(normed, size if self.tome_prop_attn else None)
        hidden_states = parts.attention_residual(hidden_states, context)
        if self.tome_r > 0:
            with record_function(MERGE_REGION):
                matching = bipartite_soft_matching(metric, self.tome_r, self.tome_class_token, self.tome_distill_token)
                if matching is not None:
                    hidden_states, size = merge_weighted(matching, hidden_states, size)
        self.tome_sizes.sizes = size
        return parts.mlp_residual(hidden_states)

    def extra_repr(self) -> str:
        return f"r={self.tome_r}, prop_attn={self.tome_prop_attn}"


class ToMeEncoder:
    """The module that runs the blocks (an encoder, or the backbone where there is none), as the host
    does, with the token sizes reset first (the blocks update them)."""

    tome_sizes: TokenSizes

    def forward(self, *args, **kwargs):
        head_mask = kwargs.pop("head_mask", None)
        if head_mask is not None and any(mask is not None for mask in head_mask):
            raise ValueError("token_merge: head_mask is not supported on a model with token merging.")
        self.tome_sizes.sizes = None
        return super().forward(*args, **kwargs)
