"""What attention swaps build from: a base class for new attention cores, block selection, installing a
core in a block, and a per-head normalisation with a finite gradient at zero.

:class:`AttentionCore` takes the host core's :class:`~surgery.core.parts.AttentionParts`, reuses its
projection modules (same objects, same weights, registered under the host's names so the state_dict
keys stay those of the host) and returns what the host block expects (``(context, None)``,
``(context,)``, with the output projection applied when the host's core owns it). A subclass only
writes ``attend(hidden) -> context`` (B, N, C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surgery.core.parts import AttentionParts, BlockParts


# Castling's and EcoFormer's references divide by the plain L2 norm (NaN for an all-zero vector).
# F.normalize keeps the forward finite, but its backward at a zero vector is 0 * (x / 0) = NaN (the
# norm's gradient), as in
# a freshly initialised DeiT whose cls/distillation tokens are zero. ``unit`` computes the same
# x / max(|x|, eps) through the squared norm, whose gradient (2x) is finite everywhere; eps 1e-6
# bounds the gradient at 1e6. Vectors with a norm above 1e-6 are unchanged.
NORM_EPS = 1e-6


def unit(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """``x / max(||x||, eps)`` along the last axis, with a finite gradient at x = 0."""
    return x * torch.rsqrt(torch.clamp_min(x.pow(2).sum(dim=-1, keepdim=True), eps * eps))


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    bias: torch.Tensor | None = None,
    dropout: float = 0.0,
    quant=None,
    explicit: bool = False,
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v over (B, heads, N, head_dim) inputs.

    ``quant`` (a core's ``surgery_attention_quant``, or None): a callable ``quant(role, x)`` that puts
    the matmuls' inputs on their integer grids (roles "query", "key", "value", "probs"); the bias is
    added after the quantized q k^T. Without it, ``scaled_dot_product_attention``, unless ``explicit``:
    the two matmuls and the softmax as written (as Swin's own attention runs; on many short sequences, a
    window's 49 tokens, they ran faster than PyTorch's CPU SDPA kernel here).
    """
    if quant is None and not explicit:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=scale)
    quant = quant if quant is not None else _unquantized
    scores = torch.matmul(quant("query", q), quant("key", k).transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    probs = quant("probs", scores.softmax(dim=-1))
    if dropout:
        probs = F.dropout(probs, dropout)
    return torch.matmul(probs, quant("value", v))


def _unquantized(role: str, x: torch.Tensor) -> torch.Tensor:
    return x


class AttentionCore(nn.Module):
    """Base of attention modules built from parts (see the module docstring)."""

    def __init__(self, parts: AttentionParts) -> None:
        super().__init__()
        # role -> the submodule name here: the host's name (a dotted host path becomes one name)
        self.surgery_projections = {role: path.replace(".", "_") for role, path in parts.projections.items()}
        for role, name in self.surgery_projections.items():
            self.add_module(name, parts.projection(role))
        self.num_heads, self.head_dim = parts.heads, parts.head_dim
        self.surgery_returns, self.surgery_mask = parts.core_returns, parts.mask_argument

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, heads * head_dim) to (B, heads, N, head_dim)."""
        return x.reshape(x.shape[0], -1, self.num_heads, self.head_dim).transpose(1, 2)

    def projection(self, role: str) -> nn.Module:
        """The projection module playing ``role`` ("query", "key", "value", "qkv", "output")."""
        return self.get_submodule(self.surgery_projections[role])

    def project(self, role: str, x):
        """``x`` through the projection playing ``role``."""
        return self.projection(role)(x)

    def qkv(self, x):
        """The q, k, v projections of ``x`` (B, N, C each)."""
        if "qkv" in self.surgery_projections:
            return self.project("qkv", x).chunk(3, dim=-1)
        return self.project("query", x), self.project("key", x), self.project("value", x)

    def surgery_attention_parts(self) -> AttentionParts:
        """The parts this core offers a later step (its projections, heads and calling convention)."""
        return AttentionParts(
            core=self,
            projections=dict(self.surgery_projections),
            heads=self.num_heads,
            head_dim=self.head_dim,
            dropout=float(getattr(self, "dropout", 0.0) or 0.0),
            core_returns=self.surgery_returns,
            mask_argument=self.surgery_mask,
        )

    def forward(self, hidden_states, *args, **kwargs):
        context = self.attend(hidden_states)
        if "output" in self.surgery_projections:
            context = self.project("output", context)
        return (context, None) if self.surgery_returns == "pair" else (context,)

    def attend(self, hidden_states):
        raise NotImplementedError


def install_core(changes, parts: BlockParts, new: nn.Module) -> None:
    """Put ``new`` in place of the block's attention core (a :class:`~surgery.toolkit.modules.Changes`
    record). The core's own position bias goes with it; a bias the block computes for the core
    (``BlockLayout.host_bias``: BEiT >= 5) is removed too, so no orphaned table is trained, saved or
    computed, and the checkpoint holds what the other layouts' checkpoints hold."""
    changes.replace(parts.attention_name, new)
    if parts.layout.host_bias is not None and parts.part("host_bias") is not None:
        changes.remove(f"{parts.name}.{parts.layout.host_bias}")


def attend_globally(changes, parts: BlockParts) -> None:
    """Make a windowed block attend over its whole stage map (Agent-Swin, EcoFormer's global attention),
    its window and shift put back on undo; nothing for a block with global attention."""
    if parts.windowed:
        changes.call_on_undo(parts.set_window, *parts.window())
        parts.set_global_window()


def all_but_last_stage(blocks: list[BlockParts]) -> list[int]:
    """The blocks of every stage but the last of a hierarchical model (every block if it has one stage)."""
    last = max(stage_of(b, blocks) for b in blocks)
    return [b.index for b in blocks if stage_of(b, blocks) < last] or [b.index for b in blocks]


def select_layers(option, count: int, default: list[int], config, field: str = "layers") -> list[int]:
    """Block indices chosen by ``option``: "default", "all", an int k (the first k) or explicit indices."""
    if option == "default":
        return default
    if option == "all":
        return list(range(count))
    if isinstance(option, int):
        if not 1 <= option <= count:
            raise config.invalid(field, option, f"a number of leading blocks from 1 to {count}")
        return list(range(option))
    bad = [i for i in option if not 0 <= i < count]
    if bad or not option or len(set(option)) != len(option):
        raise config.invalid(field, list(option), f"distinct block indices from 0 to {count - 1}, each once")
    return sorted(option)


def stage_of(block: BlockParts, blocks: list[BlockParts]) -> int:
    """The stage of a block in a hierarchical model: the rank of its grid size among all blocks (largest first)."""
    grids = sorted({b.grid for b in blocks}, reverse=True)
    return grids.index(block.grid)


def is_hierarchical(blocks: list[BlockParts]) -> bool:
    """Whether the blocks attend within windows of a shrinking map (Swin), not over one global sequence."""
    return any(b.windowed for b in blocks)
