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

GROUPS = {"attention": "attention_linears", "mlp": "mlp_linears", "all": "linears"}  # parts -> anatomy role group


def apply(model: nn.Module, config: BiViTConfig, anatomy: Anatomy) -> Rewrite:
    binary_inputs = config.activations == "binary"
    changes = Changes(model)
    for name, old in anatomy.find_group(model, GROUPS[config.parts]):
        changes.replace(name, BinaryLinear.from_linear(old, binary_inputs, config.learnable_alpha, config.pack))
    if config.parts in ("all", "attention") and binary_inputs:
        for parts in anatomy.blocks(model):
            changes.swap_class(
                parts.attention_name,
                BinaryAttention,
                "Binary",
                bivit_ratio=config.softmax_ratio,
                bivit_parts=parts.attention,
            )
    return changes.rewrite()
