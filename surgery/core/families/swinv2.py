"""Swin Transformer V2: the same stages, windows and shifts as Swin, and three differences in the block.

- Cosine attention: the logits are cos(q, k) times a learned per-head scale (``logit_scale``, clamped at
  log 100), not q·k / sqrt(d) (trait ``cosine_attention``).
- A continuous position bias: a small MLP over log-spaced relative coordinates gives each head's bias
  table, squashed to 16·sigmoid (``continuous_position_bias_mlp``; trait ``relative_position_bias``).
- Post-norm residuals: x + drop_path(norm(f(x))) after the attention and after the MLP, the norms keeping
  Swin's names ``layernorm_before`` / ``layernorm_after`` (trait ``post_norm``).

Also: the window is fixed when the block is built (Swin clamps it to the feature map at every call),
so a method that attends over the whole map sets the window to the map's side. transformers 4.57 and
5.x lay Swinv2 out the same way: one layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from surgery.core.anatomy import Anatomy
from surgery.core.layout import BlockLayout


def swinv2_position_bias(core: nn.Module, call: Mapping[str, Any]) -> torch.Tensor:
    """(1, heads, N, N) continuous position bias of a ``Swinv2SelfAttention`` for its window."""
    size = core.window_size[0] * core.window_size[1]
    table = core.continuous_position_bias_mlp(core.relative_coords_table).view(-1, core.num_attention_heads)
    bias = table[core.relative_position_index.view(-1)].view(size, size, -1).permute(2, 0, 1)
    return (16 * torch.sigmoid(bias)).unsqueeze(0)


SWINV2_BLOCK = BlockLayout(
    norm1="layernorm_before",
    attention="attention.self",
    projections={"query": "query", "key": "key", "value": "value"},
    heads="num_attention_heads",
    head_dim="attention_head_size",
    dropout="dropout",
    output="attention.output.dense",
    output_dropout="attention.output.dropout",
    norm2="layernorm_after",
    mlp_in="intermediate.dense",
    activation="intermediate.intermediate_act_fn",
    mlp_out="output.dense",
    mlp_dropout="output.dropout",
    drop_path="drop_path",
    residual="post_norm",
    mask_argument="window_mask",
    core_returns="single",
    window_size="window_size",
    shift_size="shift_size",
    resolution="input_resolution",
    window_clamps=False,
    position_bias=swinv2_position_bias,
)


def swinv2_anatomies() -> list[Anatomy]:
    roles = {
        "encoder": ("swinv2.encoder",),
        **SWINV2_BLOCK.roles("swinv2.encoder.layers.*.blocks.*"),
        "patch_embed": ("swinv2.embeddings.patch_embeddings.projection",),
        "final_norm": ("swinv2.layernorm",),
        "pooler": ("swinv2.pooler",),
        "classifier": ("classifier",),
    }
    return [
        Anatomy(
            model_type="swinv2",
            family="Swinv2",
            roles=roles,
            prefix_tokens=0,
            readout="pool",
            readout_heads=lambda config: config.num_heads[-1],
            readout_width=lambda config: int(config.embed_dim * 2 ** (len(config.depths) - 1)),
            block=SWINV2_BLOCK,
            name="transformers 4.57 and 5.x",
            traits=frozenset({"windowed", "relative_position_bias", "cosine_attention", "post_norm", "no_prefix"}),
        )
    ]
