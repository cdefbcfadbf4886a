"""Swap ToMe's classes into a ViT/DeiT model, and back."""

from __future__ import annotations

from torch import nn

from surgery.anatomy import Anatomy
from surgery.method import Rewrite
from surgery.plugins.token_merge.config import ToMeConfig
from surgery.plugins.token_merge.layers import ToMeEncoder, ToMeLayer, ToMeSelfAttention
from surgery.swap import swap_class, unswap_class
from surgery.tokens import token_sizes

_SETTINGS = ("tome_r", "tome_prop_attn", "tome_class_token", "tome_distill_token", "tome_sizes")


def apply(model: nn.Module, config: ToMeConfig, anatomy: Anatomy) -> Rewrite:
    blocks = anatomy.find(model, "block")
    attentions = anatomy.find(model, "attention")
    encoder_name, encoder = anatomy.one(model, "encoder")
    schedule = config.schedule(len(blocks))
    for (_, block), (_, attention), r in zip(blocks, attentions, schedule):
        swap_class(block, ToMeLayer, "ToMe", tome_r=r, tome_prop_attn=config.prop_attn,
                   tome_class_token=anatomy.prefix_tokens >= 1, tome_distill_token=anatomy.prefix_tokens >= 2)
        swap_class(attention, ToMeSelfAttention, "ToMe")
    swap_class(encoder, ToMeEncoder, "ToMe", tome_sizes=token_sizes(model))
    targets = [encoder_name] + [name for name, _ in blocks] + [name for name, _ in attentions]
    return Rewrite(targets=targets)


def revert(model: nn.Module, rewrite: Rewrite) -> None:
    for name in rewrite.targets:
        unswap_class(model.get_submodule(name), *_SETTINGS)
    token_sizes(model).sizes = None
