"""A family's block as its anatomy describes it: where each part lives, relative to the block module, and how the
block and its attention are called (:class:`BlockLayout`). :mod:`surgery.core.parts` turns a block and its layout
into the parts plugins build from."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import nn


def resolve(root: nn.Module, path: str | None) -> Any:
    """``root.a.b`` for ``"a.b"`` (modules, tensors or plain attributes); None for a None path."""
    if path is None:
        return None
    value: Any = root
    for part in path.split("."):
        value = getattr(value, part)
    return value


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """Where the parts of one family's block live, relative to the block module, and how it is called.

    Attributes:
        norm1, norm2: the pre-attention and pre-MLP norms (post-attention for post-norm families).
        attention: the attention core, the module an attention swap replaces.
        projections: role ("query", "key", "value", "qkv" when fused, and "output" when the core owns
            its output projection) to a path relative to ``attention``.
        output, output_dropout: the output projection and its dropout when they live outside the core.
        heads, head_dim, dropout: attribute paths (relative to ``attention``) of the head count, the head
            width and the attention-probability dropout (a float or an ``nn.Dropout``).
        mlp_in, activation, mlp_out, mlp_dropout: the MLP; ``activation`` is a callable attribute.
        layer_scale1, layer_scale2: per-channel residual scales (DINOv2, BEiT) or None.
        drop_path: the stochastic-depth module on both residual branches, or None.
        residual: "pre_norm" (x + f(norm(x))) or "post_norm" (norm(x + f(x)), Swinv2).
        mask_argument: what the host passes the core after the hidden states: "head_mask" (ignored:
            surgery refuses head masks), "window_mask" (Swin's additive shifted-window mask),
            "attention_bias" (an additive (1, heads, N, N) logit bias as ``attention_mask``: BEiT >= 5's
            position bias) or "none".
        core_returns: "pair" (``(context, weights)``) or "single" (``(context,)``); block_returns, the block's:
            "tensor" or "tuple" (``(hidden,)``, BEiT 4.57 and data2vec-vision), for a block forward swapped in.
        window_size, shift_size, resolution: attribute paths on the block of windowed attention (Swin)
            and of the feature map it sees; None for global attention.
        window_clamps: whether the block clamps its window to the feature map at every call (Swin), so
            a huge window means global attention at any image size; False where the window is fixed
            when the block is built (Swinv2), so global attention is a window of the map's side.
        position_bias: ``position_bias(core, call) -> (1, heads, N, N)``, the core's relative position
            bias, or None; ``call``: the host's ``args``/``kwargs`` to the core and ``tokens`` (BEiT's bias
            depends on the input's ``resolution``).
        host_bias: the block-level module (path relative to the block) whose output the block passes
            the core as ``attention_mask`` (BEiT >= 5's relative position bias), or None; an attention
            swap that drops the bias removes it (:func:`surgery.toolkit.attention.install_core`).
        block_bias: ``block_bias(block, call) -> (1, heads, N, N)``: that bias from the block's own call.
        tensors: names for tensors (paths relative to the block) that another layout of the family keeps
            in a different submodule, so a checkpoint can cross layouts (:mod:`surgery.core.names`).
        saved_buffers: buffers (paths relative to the block) that this layout's checkpoints hold and
            another layout recomputes, with their formula from the block's other tensors (or None
            where the block has no such buffer).
    """

    norm1: str
    attention: str
    projections: Mapping[str, str]
    heads: str
    head_dim: str
    dropout: str
    norm2: str
    mlp_in: str
    activation: str
    mlp_out: str
    output: str | None = None
    output_dropout: str | None = None
    mlp_dropout: str | None = None
    layer_scale1: str | None = None
    layer_scale2: str | None = None
    drop_path: str | None = None
    residual: Literal["pre_norm", "post_norm"] = "pre_norm"
    mask_argument: Literal["head_mask", "window_mask", "attention_bias", "none"] = "head_mask"
    core_returns: Literal["pair", "single"] = "pair"
    block_returns: Literal["tensor", "tuple"] = "tensor"
    window_size: str | None = None
    shift_size: str | None = None
    resolution: str | None = None
    window_clamps: bool = True
    position_bias: Callable[[nn.Module, Mapping[str, Any]], torch.Tensor] | None = None
    host_bias: str | None = None
    block_bias: Callable[[nn.Module, Mapping[str, Any]], torch.Tensor | None] | None = None
    tensors: Mapping[str, str] = dataclasses.field(default_factory=dict)
    saved_buffers: Mapping[str, Callable[[Mapping[str, torch.Tensor]], torch.Tensor | None]] = dataclasses.field(
        default_factory=dict
    )

    def roles(self, block: str) -> dict[str, tuple[str, ...]]:
        """The anatomy roles inside a block, as name patterns under ``block`` (a block's pattern):
        derived from the same paths the parts use, so the two cannot disagree."""
        core = f"{block}.{self.attention}"
        output = f"{core}.{self.projections['output']}" if "output" in self.projections else f"{block}.{self.output}"
        roles: dict[str, tuple[str, ...]] = {"block": (block,), "attention": (core,)}
        roles.update(
            {
                role: (f"{core}.{self.projections[role]}",)
                for role in ("query", "key", "value", "qkv")
                if role in self.projections
            }
        )
        roles.update(
            {"attn_output": (output,), "mlp_in": (f"{block}.{self.mlp_in}",), "mlp_out": (f"{block}.{self.mlp_out}",)}
        )
        return roles
