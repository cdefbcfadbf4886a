"""ToMe's class swaps for transformers' ViT and DeiT: encoder, block and self-attention.

Only ``forward`` changes, so the classes are swapped in place (ToMe's own habit): no new
parameters, the same state_dict, and ``revert`` swaps the original classes back. Each swapped class
is a subclass of the original, named ``ToMe<Original>``, so ``print(model)`` shows it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.profiler import record_function
from transformers.modeling_outputs import BaseModelOutput

from surgery.plugins.token_merge.merge import bipartite_soft_matching, merge_weighted

MERGE_REGION = "token_merge::merge"  # profiler label of the matching + merging work


class ToMeSelfAttention:
    """Self-attention that also returns the merge metric, with proportional attention."""

    def tome_attention(self, hidden: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context (B, N, C), keys averaged over heads (B, N, d))``; log(size) biases the keys."""
        batch = hidden.shape[0]
        shape = (batch, -1, self.num_attention_heads, self.attention_head_size)
        query = self.query(hidden).view(shape).transpose(1, 2)
        key = self.key(hidden).view(shape).transpose(1, 2)
        value = self.value(hidden).view(shape).transpose(1, 2)
        bias = None if size is None else size.log().to(query.dtype)[:, None, None, :, 0]
        dropout = self.dropout_prob if self.training else 0.0
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout, scale=self.scaling)
        return context.transpose(1, 2).reshape(batch, -1, self.all_head_size), key.mean(dim=1)


class ToMeLayer:
    """A ViT/DeiT block that merges ``tome_r`` tokens between attention and MLP (ToMe's ToMeBlock)."""

    tome_r: int = 0
    tome_prop_attn: bool = True
    tome_class_token: bool = True
    tome_distill_token: bool = False

    def forward(self, hidden_states: torch.Tensor, head_mask=None, size: torch.Tensor | None = None):
        normed = self.layernorm_before(hidden_states)
        context, metric = self.attention.attention.tome_attention(normed, size if self.tome_prop_attn else None)
        hidden_states = self.attention.output(context, normed) + hidden_states
        if self.tome_r > 0:
            with record_function(MERGE_REGION):
                matching = bipartite_soft_matching(metric, self.tome_r, self.tome_class_token, self.tome_distill_token)
                if matching is not None:
                    hidden_states, size = merge_weighted(matching, hidden_states, size)
        output = self.intermediate(self.layernorm_after(hidden_states))
        return self.output(output, hidden_states), size

    def extra_repr(self) -> str:
        return f"r={self.tome_r}, prop_attn={self.tome_prop_attn}"


class ToMeEncoder:
    """Runs the blocks with token sizes threaded through, and publishes the final sizes."""

    def forward(self, hidden_states: torch.Tensor, head_mask=None, **kwargs) -> BaseModelOutput:
        if head_mask is not None and any(mask is not None for mask in head_mask):
            raise ValueError("token_merge: head_mask is not supported on a model with token merging.")
        size = None
        for layer in self.layer:
            hidden_states, size = layer(hidden_states, None, size=size)
        self.tome_sizes.sizes = size
        return BaseModelOutput(last_hidden_state=hidden_states)
