"""Replace the chosen blocks' self-attention cores with linear-angular attention, and back.

Windowed blocks (Swin) keep their windows: the attention runs within each window, and the relative
position bias of the replaced module is dropped.
"""

from __future__ import annotations

from torch import nn

from surgery.core.anatomy import Anatomy
from surgery.core.method import Rewrite
from surgery.plugins.castling.config import CastlingConfig
from surgery.plugins.castling.layers import LinearAngularAttention
from surgery.toolkit.attention import install_core, select_layers
from surgery.toolkit.modules import Changes


def apply(model: nn.Module, config: CastlingConfig, anatomy: Anatomy) -> Rewrite:
    blocks = anatomy.blocks(model)
    changes = Changes(model)
    for index in select_layers(config.layers, len(blocks), list(range(len(blocks))), config):
        parts = blocks[index]
        tokens = parts.attended_tokens()  # the sequence the depthwise conv runs over
        if config.kernel_size > 2 * tokens - 1:
            raise config.invalid(
                "kernel_size",
                config.kernel_size,
                f"an odd integer up to {2 * tokens - 1} (block "
                f"{index} convolves a sequence of {tokens} tokens; longer kernels never touch one)",
            )
        new = LinearAngularAttention(
            parts.attention,
            anatomy.prefix_tokens_of(model.config),
            kernel_size=config.kernel_size,
            sparse_reg=config.sparse_reg,
            sparse_threshold=config.sparse_threshold,
            aux_weight=config.aux_weight,
            init=config.init,
        )
        install_core(changes, parts, new)
    return changes.rewrite()
