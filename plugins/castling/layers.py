"""Linear-angular attention (You, Xiong, Dai, Wu, Zhang, Fan, Vajda, Lin; CVPR 2023, arXiv 2211.10526).

Follows ``LinAngularAttention`` in GATECH-EIC/Castling-ViT (c7b75c1, the authors' miniature core):
with q and k L2-normalised per head, ``x = 0.5 v + (1/pi) q (k^T v)`` (the linear term of the
angular kernel 1 - arccos(q.k)/pi, computed right to left, so linear in tokens), then ``x`` is
L2-normalised per head and a depthwise conv along the token sequence on V (one k-tap kernel per
head, shared over the head's channels) is added. In training, an auxiliary masked softmax branch
``(P * (P > threshold)) v`` with ``P = softmax(q k^T / sqrt(d))`` on the unnormalised q, k is added
with weight ``aux_weight``; its mean row mass is kept in ``aux_penalty`` for the sparsity
regulariser. At inference the branch is dropped, so the cost stays linear.

Deviations: prefix tokens (cls, distillation) are left out of the sequence conv, as the reference
notes DeiT-style use needs; the regularisation schedule is not in the released code, so the
branch weight and the L1 penalty are exposed for the recovery loop to drive to zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from surgery.core.parts import AttentionParts
from surgery.toolkit.attention import NORM_EPS, AttentionCore, unit  # noqa: F401 (NORM_EPS: re-exported)


class LinearAngularAttention(AttentionCore):
    """Drop-in replacement for a ViT/DeiT/Swin self-attention core, built from its parts (q/k/v reused)."""

    def __init__(
        self,
        parts: AttentionParts,
        prefix_tokens: int,
        kernel_size: int = 9,
        sparse_reg: bool = True,
        sparse_threshold: float = 0.02,
        aux_weight: float = 1.0,
        init: str = "zero",
    ):
        super().__init__(parts)
        reference = parts.projection("qkv" if "qkv" in parts.projections else "query").weight
        num_heads = parts.heads
        self.prefix_tokens = prefix_tokens
        self.sparse_reg, self.sparse_threshold, self.aux_weight = sparse_reg, sparse_threshold, aux_weight
        self.dconv = nn.Conv2d(
            num_heads,
            num_heads,
            (kernel_size, 1),
            padding=(kernel_size // 2, 0),
            groups=num_heads,
            bias=False,
            device=reference.device,
            dtype=reference.dtype,
        )
        if init == "zero":
            with torch.no_grad():
                self.dconv.weight.zero_()
        self.aux_penalty: torch.Tensor | None = None

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        q, k, v = (self.split_heads(t) for t in self.qkv(x))
        q_unit, k_unit = unit(q), unit(k)
        out = 0.5 * v + (1.0 / math.pi) * torch.matmul(q_unit, torch.matmul(k_unit.transpose(-1, -2), v))
        self.aux_penalty = None
        if self.training and self.sparse_reg and self.aux_weight > 0:
            probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.head_dim**-0.5, dim=-1)
            sparse = probs * (probs > self.sparse_threshold)
            out = out + self.aux_weight * torch.matmul(sparse, v)
            self.aux_penalty = sparse.sum(dim=-1).mean()
        out = unit(out)
        prefix = self.prefix_tokens
        out[:, :, prefix:] += self.dconv(v[:, :, prefix:])
        return out.transpose(1, 2).reshape(batch, tokens, channels)

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, kernel={self.dconv.kernel_size[0]}, prefix_tokens={self.prefix_tokens}, "
            f"sparse_reg={self.sparse_reg} (threshold={self.sparse_threshold}, weight={self.aux_weight}, training only)"
        )
