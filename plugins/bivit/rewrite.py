"""Binarize the chosen parts of every block, and undo it.

Patch embedding, classifier, norms and biases stay full precision (the reference keeps the first
and last layers in float).
"""

from __future__ import annotations

from torch import nn

from surgery.core.anatomy import Anatomy
from surgery.core.method import Rewrite
from surgery.plugins.bivit.config import BiViTConfig
from surgery.plugins.bivit.layers import BinaryAttention, BinaryLinear
from surgery.toolkit.modules import Changes

ATTENTION_LINEARS = ("query", "key", "value", "attn_output")
MLP_LINEARS = ("mlp_in", "mlp_out")


def linear_roles(parts: str) -> tuple[str, ...]:
    return {"attention": ATTENTION_LINEARS, "mlp": MLP_LINEARS, "all": ATTENTION_LINEARS + MLP_LINEARS}[parts]


def apply(model: nn.Module, config: BiViTConfig, anatomy: Anatomy) -> Rewrite:
    binary_inputs = config.activations == "binary"
    changes = Changes(model)
    for role in linear_roles(config.parts):
        for name, old in anatomy.find(model, role):
            changes.replace(name, BinaryLinear.from_linear(old, binary_inputs, config.learnable_alpha, config.pack))
    if config.parts in ("all", "attention") and binary_inputs:
        for parts in anatomy.blocks(model):
            changes.swap_class(parts.attention_name, BinaryAttention, "Binary", bivit_ratio=config.softmax_ratio,
                               bivit_parts=parts.attention)
    return changes.rewrite()
