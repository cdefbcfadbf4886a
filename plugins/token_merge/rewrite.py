"""Swap ToMe's classes into a model's encoder, blocks and attention cores, and back."""

from __future__ import annotations

from torch import nn

from surgery.core.anatomy import Anatomy
from surgery.core.method import Rewrite
from surgery.plugins.token_merge.config import ToMeConfig
from surgery.plugins.token_merge.layers import ToMeEncoder, ToMeLayer, ToMeSelfAttention
from surgery.toolkit.modules import Changes
from surgery.toolkit.tokens import token_sizes


def apply(model: nn.Module, config: ToMeConfig, anatomy: Anatomy) -> Rewrite:
    blocks = anatomy.blocks(model)
    encoder_name, _ = anatomy.one(model, "encoder")
    sizes = token_sizes(model)
    changes = Changes(model)
    changes.swap_class(encoder_name, ToMeEncoder, "ToMe", tome_sizes=sizes)
    for parts, r in zip(blocks, config.schedule(len(blocks))):
        changes.swap_class(parts.name, ToMeLayer, "ToMe", tome_r=r, tome_prop_attn=config.prop_attn, tome_parts=parts,
                           tome_sizes=sizes, tome_class_token=anatomy.prefix_tokens >= 1,
                           tome_distill_token=anatomy.prefix_tokens >= 2)
        changes.swap_class(parts.attention_name, ToMeSelfAttention, "ToMe", tome_parts=parts.attention)
    changes.call_on_undo(_clear, sizes)
    targets = [encoder_name] + [p.name for p in blocks] + [p.attention_name for p in blocks]
    return changes.rewrite(targets)


def _clear(sizes) -> None:
    sizes.sizes = None
