"""Parts: a normalised view of one transformer block, so plugins build from behaviour, not from names.

An anatomy (:mod:`surgery.core.anatomy`) describes each family's block with a
:class:`~surgery.core.layout.BlockLayout` (paths relative to the block, and the calling conventions); :func:`block_parts` turns a block module
into :class:`BlockParts`. Plugins read the parts (norms, attention projections, heads, scale, MLP,
layer scale, residual, the window of windowed attention, the patch grid) and never a transformers
attribute. The parts resolve their modules when used, not when made, so a part that a later step
replaces (a binary or int8 linear) is the one a class-swapped forward calls.

The real layouts behind the fields: docs/architecture.md (ViT/DeiT/Swin 4.57 and >= 5.9, DINOv2, Swinv2, BEiT).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from surgery.core.layout import BlockLayout, resolve

GLOBAL_WINDOW = 2**30  # a clamping block's window larger than any map: it attends over the whole map


@dataclasses.dataclass(frozen=True)
class AttentionParts:
    """The attention core of one block. ``core`` is the host module; projections resolve on use."""

    core: nn.Module
    projections: Mapping[str, str]
    heads: int
    head_dim: int
    dropout: float
    core_returns: Literal["pair", "single"]
    mask_argument: Literal["head_mask", "window_mask", "attention_bias", "none"]
    position_bias_fn: Callable[[nn.Module, Mapping[str, Any]], torch.Tensor] | None = None

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    @property
    def scale(self) -> float:
        return self.head_dim**-0.5

    @property
    def owns_output(self) -> bool:
        return "output" in self.projections

    def projection(self, role: str) -> nn.Module:
        """The current module playing ``role`` ("query", "key", "value", "qkv", "output")."""
        return resolve(self.core, self.projections[role])

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, heads * head_dim) to (B, heads, N, head_dim)."""
        return x.view(x.shape[0], -1, self.heads, self.head_dim).transpose(1, 2)

    def qkv(self, hidden: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """q, k, v as (B, heads, N, head_dim), each projection's output passed through ``transform`` first."""
        if "qkv" in self.projections:
            outputs = self.projection("qkv")(hidden).chunk(3, dim=-1)
        else:
            outputs = [self.projection(role)(hidden) for role in ("query", "key", "value")]
        if transform is not None:
            outputs = [transform(t) for t in outputs]
        return tuple(self.split_heads(t) for t in outputs)

    def position_bias(self, tokens: int | None = None, args: tuple = (), kwargs: Mapping[str, Any] | None = None):
        """(1, heads, N, N) additive logit bias for the host's call (``args`` after the hidden states,
        ``kwargs``) on ``tokens`` tokens, or None; without a call, at the config's image size."""
        call = {"args": tuple(args), "kwargs": dict(kwargs or {}), "tokens": tokens}
        return self.position_bias_fn(self.core, call) if self.position_bias_fn is not None else None

    def _passed(self, kind: str, args: tuple, kwargs: Mapping[str, Any]) -> torch.Tensor | None:
        """The mask the host passed the core (first positional or ``attention_mask``) if it is a ``kind``."""
        if self.mask_argument != kind:
            return None
        return args[0] if args else kwargs.get("attention_mask")

    def window_mask(self, args: tuple, kwargs: Mapping[str, Any]) -> torch.Tensor | None:
        """The additive shifted-window mask the host passed the core, when its layout has one."""
        return self._passed("window_mask", args, kwargs)

    def host_bias(self, args: tuple, kwargs: Mapping[str, Any]) -> torch.Tensor | None:
        """The additive logit bias the host block passed the core (BEiT >= 5's position bias), or None."""
        return self._passed("attention_bias", args, kwargs)

    def host_output(self, context: torch.Tensor, output: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """What the host block expects back from the core, given the merged-heads context (B, N, C).
        When the core owns its output projection, it is applied here (``output`` overrides it)."""
        if self.owns_output:
            context = (output or self.projection("output"))(context)
        return (context, None) if self.core_returns == "pair" else (context,)


@dataclasses.dataclass(frozen=True)
class BlockParts:
    """One block: its index, name, module, attention core and the rest of its parts (resolved on use)."""

    index: int
    name: str
    module: nn.Module
    layout: BlockLayout
    attention: AttentionParts
    attention_name: str
    grid: tuple[int, int]

    def part(self, field: str) -> Any:
        """The module (or callable) the layout names in ``field``; None where the family has none."""
        return resolve(self.module, getattr(self.layout, field))

    @property
    def width(self) -> int:
        return self.attention.width

    # -- windows (Swin) ----------------------------------------------------------------------
    @property
    def windowed(self) -> bool:
        return self.layout.window_size is not None

    def window(self) -> tuple[int, int] | None:
        """``(window side, shift)`` of windowed attention, or None for global attention."""
        if not self.windowed:
            return None
        return int(resolve(self.module, self.layout.window_size)), int(resolve(self.module, self.layout.shift_size))

    def set_window(self, size: int, shift: int) -> None:
        for path, value in ((self.layout.window_size, size), (self.layout.shift_size, shift)):
            owner, _, attribute = path.rpartition(".")
            setattr(resolve(self.module, owner) if owner else self.module, attribute, value)

    def set_global_window(self) -> None:
        """Attend over the whole feature map: a window no map exceeds where the block clamps its window
        to the map at every call (Swin), else one of the map's side (Swinv2, at the config's image size)."""
        self.set_window(GLOBAL_WINDOW if self.layout.window_clamps else max(self.grid), 0)

    def attended_tokens(self) -> int:
        """Tokens one attention call sees: a window's (Swin) or the whole patch grid's (ViT/DeiT)."""
        return self.window()[0] ** 2 if self.windowed else self.grid[0] * self.grid[1]

    # -- the residual branches ------------------------------------------------------------------
    def attention_output(self, context: torch.Tensor) -> torch.Tensor:
        """The output projection (and its dropout) applied to the merged-heads context."""
        projection = self.attention.projection("output") if self.attention.owns_output else self.part("output")
        out = projection(context)
        dropout = self.part("output_dropout")
        return dropout(out) if dropout is not None else out

    def add_branch(self, hidden: torch.Tensor, branch: torch.Tensor, kind: str) -> torch.Tensor:
        """``hidden`` plus the computed ``kind`` branch ("attention": after the output projection; "mlp"):
        hidden + drop_path(scale * branch), with post-norm hidden + drop_path(norm(branch)) (Swinv2).
        A layer scale is a module (DINOv2's ``layer_scale1``), a parameter (BEiT's ``lambda_1``) or a float."""
        scale_field, norm_field = {"attention": ("layer_scale1", "norm1"), "mlp": ("layer_scale2", "norm2")}[kind]
        scale, drop_path = self.part(scale_field), self.part("drop_path")
        if self.layout.residual == "post_norm":
            branch = self.part(norm_field)(branch)
        if scale is not None:
            branch = scale(branch) if isinstance(scale, nn.Module) else branch * scale  # a module, a tensor or 1.0
        if drop_path is not None:
            branch = drop_path(branch)
        return branch + hidden if self.layout.residual == "pre_norm" else hidden + branch

    def attention_residual(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``hidden`` plus the attention branch, given the core's merged-heads context."""
        return self.add_branch(hidden, self.attention_output(context), "attention")

    def attention_input(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if self.layout.residual == "post_norm" else self.part("norm1")(hidden)

    def mlp_input(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if self.layout.residual == "post_norm" else self.part("norm2")(hidden)

    def mlp_on(self, inputs: torch.Tensor) -> torch.Tensor:
        """The MLP on its (normed) inputs, out(act(in(inputs))), and its dropout; ``mlp(hidden)`` normalises first."""
        out = self.part("mlp_out")(self.part("activation")(self.part("mlp_in")(inputs)))
        dropout = self.part("mlp_dropout")
        return dropout(out) if dropout is not None else out

    def mlp(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlp_on(self.mlp_input(hidden))

    def mlp_residual(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.add_branch(hidden, self.mlp(hidden), "mlp")


def attention_parts(core: nn.Module, layout: BlockLayout) -> AttentionParts:
    """The parts of a core: a surgery module describes itself, a host module through its layout."""
    describe = getattr(core, "surgery_attention_parts", None)
    if describe is not None:
        return describe()
    dropout = resolve(core, layout.dropout)
    return AttentionParts(
        core=core,
        projections=dict(layout.projections),
        heads=int(resolve(core, layout.heads)),
        head_dim=int(resolve(core, layout.head_dim)),
        dropout=float(getattr(dropout, "p", dropout)),
        core_returns=layout.core_returns,
        mask_argument=layout.mask_argument,
        position_bias_fn=layout.position_bias,
    )


def block_parts(index: int, name: str, block: nn.Module, layout: BlockLayout, grid: tuple[int, int]) -> BlockParts:
    core = resolve(block, layout.attention)
    if layout.resolution is not None:
        grid = tuple(int(v) for v in resolve(block, layout.resolution))
    return BlockParts(index, name, block, layout, attention_parts(core, layout), f"{name}.{layout.attention}", grid)
