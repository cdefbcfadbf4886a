"""The class swaps token reduction is built from: block and self-attention, over the anatomy's parts,
and a hook on the encoder.

Only ``forward`` changes, so the classes are swapped in place (ToMe's own habit): no new parameters, the
same state_dict, and ``revert`` swaps the original classes back (and removes the hook). A block runs
attention, then reduces its tokens with a :mod:`~surgery.toolkit.reduction` built by the plugin's *builder*
(from the attention's metric, the keys averaged over heads, and, where the builder asks, each token's
importance: the attention the prefix tokens pay it), then the MLP on the fewer tokens. Token sizes travel
between blocks in the model's :class:`~surgery.toolkit.tokens.TokenSizes` side channel, which a hook on the
encoder resets at the start of every forward (:class:`SizeReset`); proportional attention adds log(size) to
the attention logits. Prefix tokens (cls, distillation) are never reduced: builders keep them in front.

A builder is a small frozen object: ``builder(metric, importance, r) -> reduction or None``, with
``importance`` (whether it needs the scores), ``region`` (the profiler label of its work) and
``describe()`` (for ``print(model)``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from surgery.core.anatomy import Anatomy
from surgery.core.parts import AttentionParts, BlockParts
from surgery.toolkit.attention import softmax_attention
from surgery.toolkit.modules import Changes
from surgery.toolkit.tokens import TokenSizes, token_sizes


class ReducingAttention:
    """Self-attention that also returns the reduction's inputs, with proportional attention."""

    reduction_parts: AttentionParts

    def reducing_attention(
        self,
        hidden: torch.Tensor,
        size: torch.Tensor | None,
        importance_rows: int = 0,
        position_bias: torch.Tensor | None = None,
        explicit: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(context (B, N, C), keys averaged over heads (B, N, d), importance (B, N) or None)``.

        log(size) biases the keys, and ``position_bias`` (B or 1, heads, N, N), where given, the logits. The
        importance is the attention the first ``importance_rows`` tokens (the prefix) pay each token,
        averaged over heads and those rows (0: not computed). ``explicit``: the attention as explicit
        matmuls instead of SDPA (:func:`~surgery.toolkit.attention.softmax_attention`).
        """
        parts = self.reduction_parts
        query, key, value = parts.qkv(hidden)
        bias = None if size is None else size.log().to(query.dtype)[:, None, None, :, 0]
        bias = plus(bias, position_bias)
        dropout = parts.dropout if self.training else 0.0
        quant = getattr(self, "surgery_attention_quant", None)
        context = softmax_attention(query, key, value, parts.scale, bias, dropout, quant, explicit)
        importance = None
        if importance_rows:
            with torch.no_grad():
                logits = (query[:, :, :importance_rows] @ key.transpose(-1, -2)) * parts.scale
                if bias is not None:
                    logits = logits + (bias if bias.shape[-2] == 1 else bias[..., :importance_rows, :])
                importance = logits.softmax(dim=-1).mean(dim=(1, 2))
        return context.transpose(1, 2).reshape(hidden.shape[0], -1, parts.width), key.mean(dim=1), importance

    def reduction_scores(
        self, hidden: torch.Tensor, rows: int, position_bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Before attention (an unmerging block): ``(keys averaged over heads (B, N, d), the attention the
        first ``rows`` tokens pay each token (B, N))``, as :meth:`reducing_attention` computes them, from
        the query projection of those rows and the key projection of every token."""
        parts = self.reduction_parts
        with torch.no_grad():
            if "qkv" in parts.projections:  # a fused projection: all three, the queries cut to the rows
                query, key, _ = parts.qkv(hidden)
                query = query[:, :, :rows]
            else:
                query = parts.split_heads(parts.projection("query")(hidden[:, :rows]))
                key = parts.split_heads(parts.projection("key")(hidden))
            logits = (query @ key.transpose(-1, -2)) * parts.scale
            if position_bias is not None:
                logits = logits + position_bias[..., :rows, :]
            importance = logits.softmax(dim=-1).mean(dim=(1, 2))
        return key.mean(dim=1), importance


class ReducingLayer:
    """A block that removes ``reduction_r`` tokens between attention and MLP."""

    reduction_r: int = 0
    reduction_prop_attn: bool = True
    reduction_prefix: int = 1
    reduction_builder: Any
    reduction_parts: BlockParts
    reduction_sizes: TokenSizes

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        parts, size, builder = self.reduction_parts, self.reduction_sizes.sizes, self.reduction_builder
        normed = parts.attention_input(hidden_states)
        rows = self.reduction_prefix if builder.importance and self.reduction_r > 0 else 0
        context, metric, importance = parts.attention.core.reducing_attention(
            normed, size if self.reduction_prop_attn else None, rows
        )
        hidden_states = parts.attention_residual(hidden_states, context)
        if self.reduction_r > 0:
            with record_function(builder.region):
                reduction = builder(metric, importance, self.reduction_r)
                if reduction is not None:
                    hidden_states, size = reduction.apply(hidden_states, size)
        self.reduction_sizes.sizes = size
        return returned(parts, parts.mlp_residual(hidden_states))

    def extra_repr(self) -> str:
        extra = self.reduction_builder.describe()
        return f"r={self.reduction_r}, prop_attn={self.reduction_prop_attn}" + (f", {extra}" if extra else "")


class UnmergingLayer(ReducingLayer):
    """Merge, compute, unmerge (Bolya and Hoffman, "Token Merging for Fast Stable Diffusion", 2023): the
    block reduces its tokens before attention and again before the MLP (one reduction per block, built
    from the block's input), computes both branches on the reduced set, and unmerges each branch back
    to every original position (each token takes the outputs it was reduced into, by the reduction's
    weights: T^T) before its residual. The block's output keeps the token count and order, so hidden
    states and feature maps stay whole; sizes start at one in every block (the tokens are whole
    again), and proportional attention adds log(size) of the reduced set. The reduction needs
    ``unmerge(y, n)`` besides ``apply``. A builder without importance scores matches the block's input
    (ToMe for Stable Diffusion's metric); one with them gets the keys and the prefix tokens' attention,
    computed before attention from the normed input (:meth:`ReducingAttention.reduction_scores`: the
    key projection of every token once more, the price of choosing before attending); a family with no prefix
    token scores each token by the attention every token pays it. A token that
    no output holds (pruned) gets no branch: it passes the block unchanged. ``reduction_branches`` "mlp" or
    "attention" reduces one branch only (ToMe for SD's ``merge_mlp`` / ``merge_attn``), the other runs on
    every token as in the host."""

    reduction_branches: str = "both"

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        parts, builder = self.reduction_parts, self.reduction_builder
        core, normed, reduction = parts.attention.core, parts.attention_input(hidden_states), None
        tokens = hidden_states.shape[1]
        position = block_position_bias(parts, args, kwargs, tokens)
        if self.reduction_r > 0:
            with record_function(builder.region):
                metric, importance = (
                    core.reduction_scores(normed, self.reduction_prefix or tokens, position)  # no prefix: all
                    if builder.importance
                    else (hidden_states, None)
                )
                reduction = builder(metric, importance, self.reduction_r)
        attention, mlp = reduced_branches(self.reduction_branches if reduction is not None else "none")
        if attention:
            reduced, size = reduction.apply(normed, None)
            position = None if position is None else reduced_bias(reduction, position, hidden_states.shape[0])
            size = size if self.reduction_prop_attn else None
            context, _, _ = core.reducing_attention(reduced, size, position_bias=position)
            hidden_states = parts.add_branch(
                hidden_states, reduction.unmerge(parts.attention_output(context), tokens), "attention"
            )
        else:  # every token attends, as in the host
            context, _, _ = core.reducing_attention(normed, None, position_bias=position)
            hidden_states = parts.attention_residual(hidden_states, context)
        if not mlp:
            return returned(parts, parts.mlp_residual(hidden_states))
        reduced, _ = reduction.apply(parts.mlp_input(hidden_states), None)
        branch = reduction.unmerge(parts.mlp_on(reduced), tokens)
        return returned(parts, parts.add_branch(hidden_states, branch, "mlp"))

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + ", unmerge=True"
            + ("" if self.reduction_branches == "both" else f", branches={self.reduction_branches}")
        )


def reduced_branches(branches: str) -> tuple[bool, bool]:
    """Whether the attention and the MLP run on the reduced tokens, for an unmerging block's ``branches``
    ("both", "attention", "mlp"; "none": nothing to reduce in this block)."""
    return branches in ("both", "attention"), branches in ("both", "mlp")


def returned(parts: BlockParts, hidden: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor]:
    """A swapped-in block forward's result as the host's encoder expects it (``BlockLayout.block_returns``)."""
    return (hidden,) if parts.layout.block_returns == "tuple" else hidden


def block_position_bias(parts: BlockParts, args: tuple, kwargs: dict, tokens: int) -> torch.Tensor | None:
    """(1, heads, N, N): the relative position bias the block's attention adds for this call of the block
    (the core's own, BEiT 4.57 and data2vec-vision, or the one the block computes, BEiT >= 5), or None."""
    bias = parts.attention.position_bias(tokens, args, kwargs)
    if parts.layout.block_bias is not None:
        block = parts.layout.block_bias(parts.module, {"args": tuple(args), "kwargs": dict(kwargs), "tokens": tokens})
        bias = plus(bias, block)
    return bias


def plus(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """``a + b`` of two optional logit biases (None: no bias)."""
    return b if a is None else a if b is None else a + b


def reduced_bias(reduction: Any, bias: torch.Tensor, batch: int) -> torch.Tensor:
    """(B, heads, M, M): a (1 or B, heads, N, N) logit bias reduced on both token axes as the tokens are
    (``reduction.apply``: diag(1/s) T B T^T diag(1/s)): a kept token keeps its own pairs, a merged or
    transformed one takes its members' mean, so reduced queries and keys attend with the bias of where
    they came from (a pruned token's rows and columns drop out)."""
    heads, tokens = bias.shape[1], bias.shape[-1]
    rows, _ = reduction.apply(
        bias.expand(batch, -1, -1, -1).transpose(1, 2).reshape(batch, tokens, heads * tokens), None
    )
    kept = rows.shape[1]  # rows: (B, M, heads * N), the query axis reduced
    columns = rows.reshape(batch, kept, heads, tokens).permute(0, 3, 2, 1).reshape(batch, tokens, heads * kept)
    both, _ = reduction.apply(columns, None)  # (B, M keys, heads * M queries)
    return both.reshape(batch, kept, heads, kept).permute(0, 2, 3, 1)


@dataclasses.dataclass
class SizeReset:
    """The forward pre-hook on the module that runs the blocks (an encoder, or the backbone where there is
    none): the token sizes reset at the start of every forward (the blocks update them); ``head_mask``
    refused. A hook, not a class swap: the backbone is a transformers model in version 5, which finds
    what it records (``output_hidden_states``) by the model's class."""

    sizes: TokenSizes
    plugin: str

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        head_mask = kwargs.get("head_mask")
        if head_mask is not None and any(mask is not None for mask in head_mask):
            raise ValueError(f"{self.plugin}: head_mask is not supported on a model whose tokens are reduced.")
        self.sizes.sizes = None


def swap_reducing(
    model: nn.Module,
    anatomy: Anatomy,
    blocks: list[BlockParts],
    plugin: str,
    prefix: str,
    removals: list[int],
    builder: Any,
    prop_attn: bool,
    classes: tuple[type, type] = (ReducingLayer, ReducingAttention),
    branches: str = "both",
):
    """Hook the encoder (:class:`SizeReset`) and swap every block (``blocks``: the anatomy's, one
    ``removals`` entry each) and its attention core to the reducing classes (``classes``: subclasses of
    the two above), named ``<prefix><Original>``; ``branches``: what an unmerging block reduces. Returns
    the rewrite."""
    layer_cls, attention_cls = classes
    encoder_name, _ = anatomy.one(model, "encoder")
    sizes = token_sizes(model)
    changes = Changes(model)
    changes.pre_hook(encoder_name, SizeReset(sizes, plugin))
    for parts, r in zip(blocks, removals):
        changes.swap_class(
            parts.name,
            layer_cls,
            prefix,
            reduction_r=r,
            reduction_prop_attn=prop_attn,
            reduction_parts=parts,
            reduction_sizes=sizes,
            reduction_branches=branches,
            reduction_prefix=anatomy.prefix_tokens_of(model.config),
            reduction_builder=builder,
        )
        changes.swap_class(parts.attention_name, attention_cls, prefix, reduction_parts=parts.attention)
    changes.call_on_undo(_clear, sizes)
    return changes.rewrite([encoder_name] + [p.name for p in blocks] + [p.attention_name for p in blocks])


def _clear(sizes: TokenSizes) -> None:
    sizes.sizes = None
