"""Agent Attention (Han, Ye, Wang, Xia, Han, Song, Huang; ECCV 2024, arXiv 2312.08874).

Follows ``agent_transformer/models/agent_deit.py`` and ``agent_swin.py`` (LeapLabTHU/Agent-Attention,
207ce3e): agent tokens are the patch-token queries average-pooled to a p x p grid; a first softmax
lets the agents attend to all keys (with agent-to-key position biases), a second lets every query
attend to the agents (with query-to-agent biases); a 3x3 depthwise conv on V over the patch grid
is added to the patch tokens; the output projection is the original one.

Deviations: prefix tokens may be 2 (DeiT's distillation token gets its own ``ac``/``ca`` bias
column like cls; the official code knows one cls token only); the axis biases (``ah``, ``aw``,
``ha``, ``wa``) are interpolated linearly when the grid differs from the one they were made for
(the official code has a fixed window), so the model runs at other resolutions; pooling uses a
precomputed matrix with ``adaptive_avg_pool2d``'s bins (exportable with dynamic batch).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from surgery.core.parts import AttentionParts
from surgery.toolkit.attention import AttentionCore


@functools.lru_cache(maxsize=64)
def _pool_1d(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) averaging matrix with adaptive_avg_pool1d's bins."""
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def pool_matrix(height: int, width: int, side: int) -> torch.Tensor:
    """(side*side, height*width) float64 matrix equal to adaptive_avg_pool2d((height, width) -> (side, side))."""
    pool = _pool_1d.__wrapped__ if torch.compiler.is_compiling() else _pool_1d  # a trace computes it, uncached
    rows, cols = pool(height, side), pool(width, side)
    return (rows[:, None, :, None] * cols[None, :, None, :]).reshape(side * side, height * width)


def _resize_axis(bias: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Linear interpolation of ``bias`` along ``axis`` to ``size`` (align_corners=False)."""
    if bias.shape[axis] == size:
        return bias
    moved = bias.movedim(axis, -1)
    flat = moved.reshape(-1, 1, moved.shape[-1])
    resized = F.interpolate(flat, size=size, mode="linear", align_corners=False)
    return resized.reshape(*moved.shape[:-1], size).movedim(-1, axis)


class AgentAttention(AttentionCore):
    """Drop-in replacement for a ViT/DeiT/Swin self-attention core, built from its parts (q/k/v reused)."""

    def __init__(
        self,
        parts: AttentionParts,
        agents: int,
        grid: tuple[int, int],
        prefix_tokens: int,
        bias_size: int | None = 7,
        prefix_bias: bool = True,
        init: str = "zero",
        dropout: float = 0.0,
    ):
        super().__init__(parts)
        reference = parts.projection("qkv" if "qkv" in parts.projections else "query").weight
        channels = parts.width
        num_heads = parts.heads
        self.channels = channels
        self.agents, self.side = agents, math.isqrt(agents)
        self.grid, self.prefix_tokens, self.dropout = tuple(grid), prefix_tokens, dropout
        table = bias_size or None
        gh, gw = self.grid
        zeros = functools.partial(torch.zeros, device=reference.device, dtype=reference.dtype)
        self.an_bias = nn.Parameter(zeros(num_heads, agents, table or gh, table or gw))
        self.na_bias = nn.Parameter(zeros(num_heads, agents, table or gh, table or gw))
        self.ah_bias = nn.Parameter(zeros(1, num_heads, agents, gh, 1))
        self.aw_bias = nn.Parameter(zeros(1, num_heads, agents, 1, gw))
        self.ha_bias = nn.Parameter(zeros(1, num_heads, gh, 1, agents))
        self.wa_bias = nn.Parameter(zeros(1, num_heads, 1, gw, agents))
        if prefix_tokens and prefix_bias:
            self.ac_bias = nn.Parameter(zeros(1, num_heads, agents, prefix_tokens))
            self.ca_bias = nn.Parameter(zeros(1, num_heads, prefix_tokens, agents))
        else:
            self.ac_bias = self.ca_bias = None
        self.dwc = nn.Conv2d(
            channels, channels, 3, padding=1, groups=channels, device=reference.device, dtype=reference.dtype
        )
        self.reset_new_parameters(init)

    def reset_new_parameters(self, init: str) -> None:
        """ "zero": every bias and the conv start at 0 (warm start); "paper": the official init."""
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if name.endswith("_bias"):
                    parameter.zero_() if init == "zero" else nn.init.trunc_normal_(parameter, std=0.02)
            if init == "zero":
                self.dwc.weight.zero_()
                self.dwc.bias.zero_()
            else:
                self.dwc.reset_parameters()

    # -- forward (AttentionCore.forward returns the context the way the host block expects) --------
    def attend(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        prefix = self.prefix_tokens
        height, width = self._grid(tokens - prefix)
        heads, dim = self.num_heads, self.head_dim
        split = lambda t: t.reshape(batch, -1, heads, dim).transpose(1, 2)  # noqa: E731
        q, k, v = self.qkv(x)
        pool = pool_matrix(height, width, self.side).to(device=x.device, dtype=x.dtype)
        agents = split(torch.matmul(pool, q[:, prefix:]))
        q, k, v_heads = split(q), split(k), split(v)
        scale = dim**-0.5
        to_keys, to_agents = self._biases(height, width)
        agent_attn = self._softmax(torch.matmul(agents * scale, k.transpose(-1, -2)) + to_keys)
        agent_v = torch.matmul(agent_attn, v_heads)
        query_attn = self._softmax(torch.matmul(q * scale, agents.transpose(-1, -2)) + to_agents)
        out = torch.matmul(query_attn, agent_v).transpose(1, 2).reshape(batch, tokens, channels)
        patches_v = v[:, prefix:].reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        out[:, prefix:] += self.dwc(patches_v).permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        return out

    def _softmax(self, scores: torch.Tensor) -> torch.Tensor:
        return F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)

    def _grid(self, patches: int) -> tuple[int, int]:
        side = math.isqrt(patches)
        if side * side != patches:
            raise ValueError(
                f"agent_attention: {patches} patch tokens do not form a square grid; non-square inputs are not supported."
            )
        return side, side

    def _biases(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Both position biases for a ``height`` x ``width`` grid.

        Without autograd they depend only on the parameters and the grid, so they are cached and
        recomputed when a bias parameter is replaced or changed in place (its version moves).
        """
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self._agent_to_key_bias(height, width), self._query_to_agent_bias(height, width)
        stamp = tuple((id(p), p._version) for p in self._bias_parameters())
        key = (height, width, self.an_bias.device, self.an_bias.dtype)
        cached = self.__dict__.setdefault("_bias_cache", {}).get(key)
        if cached is None or cached[0] != stamp:
            cached = (stamp, self._agent_to_key_bias(height, width), self._query_to_agent_bias(height, width))
            self._bias_cache[key] = cached
        return cached[1], cached[2]

    def _bias_parameters(self) -> list[torch.Tensor]:
        names = ("an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias", "ac_bias", "ca_bias")
        return [p for p in (getattr(self, n) for n in names) if p is not None]

    def _agent_to_key_bias(self, height: int, width: int) -> torch.Tensor:
        """(1, H, a, prefix + h*w): table bias + axis biases, and the prefix-key column(s)."""
        table = F.interpolate(self.an_bias, size=(height, width), mode="bilinear", align_corners=False)
        axes = _resize_axis(self.ah_bias, 3, height) + _resize_axis(self.aw_bias, 4, width)
        bias = (table.unsqueeze(0) + axes).reshape(1, self.num_heads, self.agents, height * width)
        return self._with_prefix(bias, self.ac_bias, dim=-1)

    def _query_to_agent_bias(self, height: int, width: int) -> torch.Tensor:
        """(1, H, prefix + h*w, a): transposed table bias + axis biases, and the prefix-query row(s)."""
        table = F.interpolate(self.na_bias, size=(height, width), mode="bilinear", align_corners=False)
        table = table.reshape(1, self.num_heads, self.agents, height * width).transpose(-1, -2)
        axes = _resize_axis(self.ha_bias, 2, height) + _resize_axis(self.wa_bias, 3, width)
        bias = table + axes.reshape(1, self.num_heads, height * width, self.agents)
        return self._with_prefix(bias, self.ca_bias, dim=-2)

    def _with_prefix(self, bias: torch.Tensor, prefix_bias: torch.Tensor | None, dim: int) -> torch.Tensor:
        if not self.prefix_tokens:
            return bias
        if prefix_bias is None:
            shape = list(bias.shape)
            shape[dim] = self.prefix_tokens
            prefix_bias = bias.new_zeros(shape)
        return torch.cat([prefix_bias, bias], dim=dim)

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, agents={self.agents} ({self.side}x{self.side}), grid={self.grid}, "
            f"prefix_tokens={self.prefix_tokens}, bias_table={tuple(self.an_bias.shape[-2:])}"
        )
