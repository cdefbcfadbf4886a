"""Swap ToMe's classes into a ViT/DeiT model, and back."""

from __future__ import annotations

from torch import nn

from surgery.anatomy import Anatomy
from surgery.method import Rewrite
from surgery.plugins.token_merge.config import ToMeConfig
from surgery.plugins.token_merge.layers import ToMeEncoder, ToMeLayer, ToMeSelfAttention, swapped_class
from surgery.tokens import token_sizes

_SETTINGS = ("tome_r", "tome_prop_attn", "tome_class_token", "tome_distill_token", "tome_sizes")


def apply(model: nn.Module, config: ToMeConfig, anatomy: Anatomy) -> Rewrite:
    blocks = anatomy.find(model, "block")
    attentions = anatomy.find(model, "attention")
    encoder_name, encoder = anatomy.one(model, "encoder")
    schedule = config.schedule(len(blocks))
    for (_, block), (_, attention), r in zip(blocks, attentions, schedule):
        block.__class__ = swapped_class(ToMeLayer, type(block))
        block.tome_r, block.tome_prop_attn = r, config.prop_attn
        block.tome_class_token = anatomy.prefix_tokens >= 1
        block.tome_distill_token = anatomy.prefix_tokens >= 2
        attention.__class__ = swapped_class(ToMeSelfAttention, type(attention))
    encoder.__class__ = swapped_class(ToMeEncoder, type(encoder))
    encoder.tome_sizes = token_sizes(model)
    targets = [encoder_name] + [name for name, _ in blocks] + [name for name, _ in attentions]
    return Rewrite(targets=targets)


def revert(model: nn.Module, rewrite: Rewrite) -> None:
    for name in rewrite.targets:
        module = model.get_submodule(name)
        module.__class__ = module.tome_original_class
        for setting in _SETTINGS:
            module.__dict__.pop(setting, None)
    token_sizes(model).sizes = None
