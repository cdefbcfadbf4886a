"""Swap ToMe's classes into a model's encoder, blocks and attention cores, and back."""

from __future__ import annotations

from torch import nn

from surgery.core.anatomy import Anatomy
from surgery.core.method import Rewrite
from surgery.plugins.token_merge.config import ToMeConfig
from surgery.plugins.token_merge.layers import (
    BipartiteMerge,
    ToMeLayer,
    ToMeSelfAttention,
    ToMeUnmergingLayer,
    ToMeWindowLayer,
)
from surgery.toolkit.reducing import swap_reducing
from surgery.toolkit.reduction_config import unmerging


def apply(model: nn.Module, config: ToMeConfig, anatomy: Anatomy) -> Rewrite:
    builder = BipartiteMerge(prefix=anatomy.prefix_tokens_of(model.config))
    blocks = anatomy.blocks(model)
    unmerging_layer = ToMeWindowLayer if blocks[0].windowed else ToMeUnmergingLayer  # Swin: within each window
    return swap_reducing(
        model,
        anatomy,
        blocks,
        "token_merge",
        "ToMe",
        config.schedule(len(blocks)),
        builder,
        config.prop_attn,
        classes=(unmerging_layer if unmerging(config) else ToMeLayer, ToMeSelfAttention),
        branches=config.branches,
    )
