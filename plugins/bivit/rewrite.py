"""Binarize the chosen parts of every block, and undo it.

Patch embedding, classifier, norms and biases stay full precision (the reference keeps the first
and last layers in float).
"""

from __future__ import annotations

from torch import nn

from surgery.anatomy import Anatomy
from surgery.attention import style_of
from surgery.method import Rewrite
from surgery.plugins.bivit.config import BiViTConfig
from surgery.plugins.bivit.layers import BinaryAttention, BinaryLinear
from surgery.swap import swap_class, unswap_class

ATTENTION_LINEARS = ("query", "key", "value", "attn_output")
MLP_LINEARS = ("mlp_in", "mlp_out")


def linear_roles(parts: str) -> tuple[str, ...]:
    return {"attention": ATTENTION_LINEARS, "mlp": MLP_LINEARS, "all": ATTENTION_LINEARS + MLP_LINEARS}[parts]


def apply(model: nn.Module, config: BiViTConfig, anatomy: Anatomy) -> Rewrite:
    binary_inputs = config.activations == "binary"
    linears, cores = [], []
    for role in linear_roles(config.parts):
        for name, old in anatomy.find(model, role):
            model.set_submodule(name, BinaryLinear.from_linear(old, binary_inputs, config.learnable_alpha, config.pack))
            linears.append((name, old))
    if config.parts in ("all", "attention") and binary_inputs:
        for name, core in anatomy.find(model, "attention"):
            swap_class(core, BinaryAttention, "Binary", bivit_ratio=config.softmax_ratio, bivit_style=style_of(anatomy))
            cores.append(name)
    targets = [name for name, _ in linears] + cores
    return Rewrite(targets=targets, undo=(linears, cores))


def revert(model: nn.Module, rewrite: Rewrite) -> None:
    linears, cores = rewrite.undo
    for name, old in linears:
        model.set_submodule(name, old)
    for name in cores:
        unswap_class(model.get_submodule(name), "bivit_ratio", "bivit_style")
