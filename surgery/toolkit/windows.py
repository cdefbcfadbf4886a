"""Merge, compute, unmerge inside the windows of windowed attention (Swin): the block of
:class:`~surgery.toolkit.reducing.UnmergingLayer` for a family whose tokens attend within fixed windows.

The block runs as the host's does (norm, pad to whole windows, the cyclic shift, the window partition,
attention, the reverse of each, residual, MLP), with one reduction per block built from the block's
input window by window (every window is a sample of the reduction: (B * windows, window^2, C)), used
before attention and again before the MLP, each branch unmerged back to every position of its window.
So the feature map, the windows, the shift and the patch merging between stages are untouched, and the
reduced tokens attend with the relative position bias and the shifted-window mask reduced as the tokens
are (diag(1/s) T B T^T diag(1/s)). The reduction runs as dense matrix products
(:class:`~surgery.toolkit.reduction.Dense`: a window's 49 tokens make small matrices, cheaper than the
gathers and scatters of the merge's own form, and MatMul in ONNX Runtime and OpenVINO). The residual
stream stays cut into windows between the two branches (norms, MLP and residuals act token by token,
so only the order of the tokens differs; per image, so drop path draws per image as the host's): one
partition and one reverse per block. Attention runs as explicit matmuls, as the host's does (on a
window's few tokens they beat PyTorch's CPU SDPA kernel). ``branches`` "mlp" or "attention" reduces one
branch only; the other runs on every token of the window.

A builder that asks for importance scores (pruning, Token Transforming) gets, with no prefix token in a window,
the attention every token of the window pays each token (averaged over heads and queries, with the position bias
and the shift mask, from the block's normed input before attention: the query and key projections of every token
once more) and the keys as the metric; padding positions score lowest.

The shifted-window mask keeps the regions a shift brings into one window apart. A builder takes ``groups`` and
never reduces tokens of two regions into one (ToMe's matching; Token Transforming spreads a removed token over kept
tokens of its own group only), so the reduced mask is the host's exactly: a reduced token lies in one region.
Positions added by the padding to whole windows form groups of their own (they are zeros in the host's attention
too, and no output keeps them).
A block with nothing to reduce (r = 0) runs the host's own forward.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.nn import functional as F
from torch.profiler import record_function

from surgery.core.parts import BlockParts
from surgery.toolkit.reducing import (
    ReducingLayer,
    UnmergingLayer,
    block_position_bias,
    plus,
    reduced_branches,
)
from surgery.toolkit.reduction import dense

MASKED = -100.0  # the host's additive mask between regions (transformers' SwinLayer.get_attn_mask)


@dataclasses.dataclass(frozen=True)
class WindowGrid:
    """One call's feature map (``height`` x ``width``) cut into ``window`` x ``window`` windows after a
    cyclic shift of ``shift``, padded at the bottom and right to whole windows, as the host cuts it."""

    height: int
    width: int
    window: int
    shift: int

    @property
    def padded(self) -> tuple[int, int]:
        return -(-self.height // self.window) * self.window, -(-self.width // self.window) * self.window

    @property
    def padded_any(self) -> bool:
        """Whether the padding to whole windows adds positions."""
        return self.padded != (self.height, self.width)

    @property
    def tokens(self) -> int:
        """Tokens in one window."""
        return self.window * self.window

    def windows(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, H * W, C) to (B * windows, window^2, C): pad, shift, partition (the host's order)."""
        batch, _, channels = hidden.shape
        height_pad, width_pad = self.padded
        grid = F.pad(
            hidden.view(batch, self.height, self.width, channels),
            (0, 0, 0, width_pad - self.width, 0, height_pad - self.height),
        )
        if self.shift:
            grid = torch.roll(grid, shifts=(-self.shift, -self.shift), dims=(1, 2))
        return _partition(grid, self.window)

    def merge(self, windows: torch.Tensor) -> torch.Tensor:
        """(B * windows, window^2, C) back to (B, H * W, C): reverse the partition, the shift and the padding."""
        channels, (height_pad, width_pad) = windows.shape[-1], self.padded
        rows, columns = height_pad // self.window, width_pad // self.window
        grid = windows.view(-1, rows, columns, self.window, self.window, channels).transpose(2, 3)
        grid = grid.reshape(-1, height_pad, width_pad, channels)
        if self.shift:
            grid = torch.roll(grid, shifts=(self.shift, self.shift), dims=(1, 2))
        return grid[:, : self.height, : self.width].reshape(-1, self.height * self.width, channels)

    def regions(self, device: torch.device | None = None) -> Regions:
        """The shifted-window region of every position (the host's labels: 3 x 3 strips of the shifted map,
        0 everywhere without a shift) and whether the padding added it, each (windows, window^2)."""
        height_pad, width_pad = self.padded
        label = torch.zeros(height_pad, width_pad, dtype=torch.long, device=device)
        if self.shift:
            strips = (slice(0, -self.window), slice(-self.window, -self.shift), slice(-self.shift, None))
            for i, rows in enumerate(strips):
                for j, columns in enumerate(strips):
                    label[rows, columns] = 3 * i + j
        padding = torch.ones(height_pad, width_pad, dtype=torch.bool, device=device)
        padding[: self.height, : self.width] = False
        padding = torch.roll(padding, shifts=(-self.shift, -self.shift), dims=(0, 1)) if self.shift else padding
        labels = _partition(torch.stack([label, padding.long()], dim=-1)[None], self.window)
        return Regions(labels[..., 0], labels[..., 1].bool(), bool(self.shift))


@dataclasses.dataclass(frozen=True)
class Regions:
    """One grid's labels (:meth:`WindowGrid.regions`), computed once per block call: ``region`` and
    ``padding``, each (windows, window^2), and whether the windows were shifted."""

    region: torch.Tensor
    padding: torch.Tensor
    shifted: bool

    def mask(self, batch: int, dtype: torch.dtype) -> torch.Tensor | None:
        """(B * windows, 1, window^2, window^2): the host's additive shifted-window mask for each window of
        the batch (``MASKED`` between positions of two regions), or None without a shift."""
        if not self.shifted:
            return None
        mask = (self.region[:, :, None] != self.region[:, None, :]).to(dtype) * MASKED
        return mask.repeat(batch, 1, 1)[:, None]

    def reduced_mask(self, mean: torch.Tensor) -> torch.Tensor | None:
        """(B * windows, 1, M, M): :meth:`mask` reduced as the tokens are (``mean``: diag(1/s') T, (B * windows,
        M, window^2)), or None without a shift. With the one-hot regions R, mean M mean^T is
        ``MASKED * (1 - (mean R)(mean R)^T)``: two small products instead of one per pair; the host's mask
        exactly (0 or ``MASKED``, up to the rounding of the means) where every reduced token lies in one region."""
        if not self.shifted:
            return None
        windows, tokens = self.region.shape
        regions = F.one_hot(self.region, 9).to(mean.dtype)  # (windows, N, 9)
        share = (mean.view(-1, windows, mean.shape[1], tokens) @ regions).flatten(0, 1)  # (B * windows, M, 9)
        return ((1.0 - share @ share.transpose(1, 2)) * MASKED)[:, None]

    def groups(self, batch: int) -> torch.Tensor:
        """(B * windows, window^2): tokens of one group may be reduced together: one region, real or padding."""
        return (self.region + 9 * self.padding).repeat(batch, 1)


def _partition(grid: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) with H, W whole windows to (B * windows, window^2, C)."""
    batch, height, width, channels = grid.shape
    grid = grid.view(batch, height // window, window, width // window, window, channels)
    return grid.transpose(2, 3).reshape(-1, window * window, channels)


class WindowUnmergingLayer(ReducingLayer):
    """A windowed block (Swin) that reduces ``reduction_r`` tokens of every window, computes attention and
    the MLP on the rest and unmerges each branch back to every position (see the module docstring).
    Called as the host's block: ``(hidden (B, H * W, C), input_dimensions, ...)``; returns
    ``(hidden, None)`` (no attention weights), which both transformers layouts unpack. ``reduction_branches``
    "mlp" or "attention" reduces one branch only; the other runs on every token of the window."""

    reduction_branches: str = "both"

    def forward(self, hidden_states: torch.Tensor, input_dimensions: tuple[int, int], *args, **kwargs):
        parts, builder = self.reduction_parts, self.reduction_builder
        if self.reduction_r <= 0:
            return super(ReducingLayer, self).forward(hidden_states, input_dimensions, *args, **kwargs)
        grid = self._grid(input_dimensions, args, kwargs)
        batch, _, channels = hidden_states.shape
        windows = grid.windows(hidden_states)  # the block's input, as ToMe for Stable Diffusion matches it
        regions = grid.regions(windows.device)
        padding = regions.padding.repeat(batch, 1)[..., None] if grid.padded_any else None

        def branch_input(normed: torch.Tensor) -> torch.Tensor:  # the host pads its normed map with zeros
            return normed if padding is None else normed.masked_fill(padding, 0.0)

        normed = branch_input(parts.attention_input(windows))
        bias = block_position_bias(parts, args, kwargs, grid.tokens)
        attention, mlp = reduced_branches(self.reduction_branches)
        # the host's bias and shift mask over every token of a window: for the scores, and where every token attends
        every_token = plus(bias, regions.mask(batch, windows.dtype)) if builder.importance or not attention else None
        with record_function(builder.region):
            groups = regions.groups(batch) if padding is not None or grid.shift else None
            if builder.importance:  # no prefix in a window: the attention every token of it pays a token
                metric, importance = parts.attention.core.reduction_scores(normed, grid.tokens, every_token)
                if padding is not None:  # padding positions go first (no output keeps them)
                    importance = importance.masked_fill(padding[..., 0], -1.0)
            else:  # zeros have no direction
                metric, importance = (windows if padding is None else windows.masked_fill(padding, 1.0)), None
            reduction = builder(metric, importance, self.reduction_r, groups=groups)
            if reduction is not None:
                reduction = dense(reduction, grid.tokens, windows.dtype)
        if reduction is None:  # the window is too small to reduce
            return super(ReducingLayer, self).forward(hidden_states, input_dimensions, *args, **kwargs)

        def per_image(tokens: torch.Tensor) -> torch.Tensor:  # (B * windows, N, C) as (B, windows * N, C)
            return tokens.reshape(batch, -1, channels)

        if attention:
            mask = regions.reduced_mask(reduction.mean)
            bias = plus(None if bias is None else reduction.bias(bias), mask)
            reduced, size = reduction.apply(normed, None)
            context, _, _ = parts.attention.core.reducing_attention(
                reduced, size if self.reduction_prop_attn else None, position_bias=bias, explicit=True
            )
            branch = reduction.unmerge(parts.attention_output(context), grid.tokens)
        else:  # every token of the window attends, as in the host
            context, _, _ = parts.attention.core.reducing_attention(
                normed, None, position_bias=every_token, explicit=True
            )
            branch = parts.attention_output(context)
        hidden = parts.add_branch(per_image(windows), per_image(branch), "attention")
        if mlp:
            reduced, _ = reduction.apply(branch_input(parts.mlp_input(hidden).view(-1, grid.tokens, channels)), None)
            hidden = parts.add_branch(hidden, per_image(reduction.unmerge(parts.mlp_on(reduced), grid.tokens)), "mlp")
        else:
            hidden = parts.mlp_residual(hidden)
        return grid.merge(hidden.view(-1, grid.tokens, channels)), None

    def _grid(self, input_dimensions: tuple[int, int], args: tuple, kwargs: dict) -> WindowGrid:
        """This call's windows: the host's window clamped to a map no larger than it (shift 0), as the host
        block clamps it at every call unless told ``always_partition`` (a keyword in transformers 5, the
        third argument after the dimensions in 4.57)."""
        parts = self.reduction_parts
        height, width = (int(v) for v in input_dimensions)
        always = kwargs.get("always_partition", args[2] if len(args) > 2 else False)
        window, shift = parts.window()
        if not always and min(height, width) <= window:
            window, shift = min(height, width), 0
            parts.set_window(window, shift)  # as the host does: its later calls see the clamped window
        return WindowGrid(height, width, window, shift)

    def extra_repr(self) -> str:
        branches = "" if self.reduction_branches == "both" else f", branches={self.reduction_branches}"
        return super().extra_repr() + ", unmerge=True, within windows" + branches


def reduction_layer(unmerge: bool, blocks: list[BlockParts]) -> type[ReducingLayer]:
    """The block class a reduction built from the shared classes swaps in: the reducing blocks, or (``unmerge``)
    merge-compute-unmerge, within the windows on a windowed family."""
    if not unmerge:
        return ReducingLayer
    return WindowUnmergingLayer if blocks[0].windowed else UnmergingLayer
