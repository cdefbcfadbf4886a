"""Swap the token-reduction classes in, with the many-to-many builder."""

from __future__ import annotations

import functools

from torch import nn

from surgery.core.anatomy import Anatomy
from surgery.core.method import Rewrite
from surgery.plugins.token_transform.config import TokenTransformConfig
from surgery.plugins.token_transform.transform import ManyToManyBuilder, overhead
from surgery.toolkit.reducing import ReducingAttention, swap_reducing
from surgery.toolkit.reduction import removable
from surgery.toolkit.reduction_config import unmerging
from surgery.toolkit.windows import reduction_layer


def apply(model: nn.Module, config: TokenTransformConfig, anatomy: Anatomy) -> Rewrite:
    prefix = anatomy.prefix_tokens_of(model.config)
    blocks = anatomy.blocks(model)
    cost = functools.partial(overhead, prefix=prefix, width=blocks[0].width, metric_dim=blocks[0].attention.head_dim)
    removals = config.removals(blocks, prefix, functools.partial(removable, prefix=prefix), model.config, cost)
    builder = ManyToManyBuilder(prefix=prefix, temperature=config.temperature, topk=config.topk)
    return swap_reducing(
        model,
        anatomy,
        blocks,
        "token_transform",
        "TokenTransform",
        removals,
        builder,
        config.prop_attn,
        classes=(reduction_layer(unmerging(config), blocks), ReducingAttention),
        branches=config.branches,
    )
