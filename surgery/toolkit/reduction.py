"""Token reduction as a matrix (Zeng et al., "Token Transforming", arXiv 2506.05709).

Every reduction of N tokens X (N, C) with sizes s (patches per token, N) to M < N tokens is one
non-negative M x N matrix T, read column by column: column n says where token n's mass goes.

    s' = T s                          (the sizes carry through)
    Y  = diag(1 / s') T diag(s) X     (each output token is the size-weighted mean of what it receives)

- pruning (one-to-one): T's rows are one-hot, the pruned tokens' columns are zero (their mass is
  dropped), so Y is the kept rows of X and s' their sizes (:class:`Selection`);
- merging, e.g. ToMe (many-to-one): T's columns are one-hot, each token lands in one group, so Y is
  the size-weighted average of every group and s' the group's total size (ToMe's ``Matching``);
- transforming (many-to-many): a column may spread its mass over several outputs (the
  ``token_transform`` plugin's construction); :func:`transport` applies any dense T.

A reduction object has ``apply(x, size) -> (y, size')`` (sizes (B, N, 1), None meaning all ones) and
``matrix(n) -> T`` (B, M, N), the dense form, for analysis and tests, and ``unmerge(y, n) -> T^T y``
(B, N, C), each original token taking the outputs it went into (merge, compute, unmerge); each
construction applies itself in the cheapest exact way (a gather, a scatter, a batched matmul).

Also here: the reduction schedule (tokens removed per block) shared by the reducing plugins, and the
schedule that meets a FLOPs target.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch


class Reduction(Protocol):
    def apply(self, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def matrix(self, n: int) -> torch.Tensor: ...


def transport(weights: torch.Tensor, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the dense matrix ``weights`` (B, M, N): ``(diag(1/s') T diag(s) X, s' = T s)``."""
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    new_size = weights @ size
    return (weights @ (x * size)) / new_size, new_size


@dataclasses.dataclass
class Selection:
    """One-to-one: keep the tokens at ``index`` (B, M), in that order (pruning)."""

    index: torch.Tensor

    def apply(self, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if size is None:
            size = x.new_ones(x.shape[0], x.shape[1], 1)
        rows = self.index.unsqueeze(-1)
        return x.gather(1, rows.expand(-1, -1, x.shape[-1])), size.gather(1, rows)

    def matrix(self, n: int) -> torch.Tensor:
        return torch.nn.functional.one_hot(self.index, n).to(torch.float64)

    def unmerge(self, y: torch.Tensor, tokens: int) -> torch.Tensor:
        """T^T y over ``tokens`` positions: each kept token takes its row, a pruned one zeros."""
        rows = self.index.unsqueeze(-1).expand(-1, -1, y.shape[-1])
        return y.new_zeros(y.shape[0], tokens, y.shape[-1]).scatter(1, rows, y)

    def dense_matrix(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.nn.functional.one_hot(self.index, n).to(dtype)


@dataclasses.dataclass
class Dense:
    """Any reduction as its dense matrix ``weights`` T (B, M, N) in the compute dtype, applied by batched
    matrix products: on small token sets (a window of 49 tokens) these cost a fraction of the gathers and
    scatters of each construction's own form, and ONNX Runtime and OpenVINO run them as MatMul. Built once
    per block by :func:`dense`; exact in value, rounded as matrix products round."""

    weights: torch.Tensor

    def __post_init__(self) -> None:
        self.size = self.weights.sum(dim=-1, keepdim=True)  # s' = T 1: the sizes of unit tokens
        self.mean = self.weights / self.size  # diag(1/s') T

    def apply(self, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if size is not None:
            return transport(self.weights, x, size)
        return self.mean @ x, self.size

    def matrix(self, n: int) -> torch.Tensor:
        return self.weights.to(torch.float64)

    def unmerge(self, y: torch.Tensor, tokens: int) -> torch.Tensor:
        """T^T y: each of the N tokens takes the outputs it went into, by its weights."""
        return self.weights.transpose(1, 2) @ y

    def bias(self, bias: torch.Tensor) -> torch.Tensor:
        """(B, heads, M, M): a logit bias (1 or B, heads, N, N) reduced on both token axes as the tokens are,
        diag(1/s') T bias T^T diag(1/s'): a reduced token attends with the mean of its members' pairs. A bias
        shared by the batch (1, heads, N, N) takes one matrix product over every sample's rows."""
        batch, outputs, tokens = self.mean.shape
        heads = bias.shape[1]
        if bias.shape[0] != 1:
            return self.mean[:, None] @ bias @ self.mean[:, None].transpose(-1, -2)
        shared = bias[0].transpose(0, 1).reshape(tokens, heads * tokens)  # (queries, heads * keys)
        rows = (self.mean.reshape(batch * outputs, tokens) @ shared).view(batch, outputs * heads, tokens)
        return (rows @ self.mean.transpose(1, 2)).view(batch, outputs, heads, outputs).transpose(1, 2)


def dense(reduction: Any, tokens: int, dtype: torch.dtype) -> Dense:
    """``reduction`` of ``tokens`` tokens as :class:`Dense`: from its ``dense_matrix(tokens, dtype)`` where it
    has one (built without float64), else from its ``matrix(tokens)``."""
    build = getattr(reduction, "dense_matrix", None)
    return Dense(build(tokens, dtype) if build is not None else reduction.matrix(tokens).to(dtype))


# -- schedules ------------------------------------------------------------------------------------------------
def schedule(r: int, inflect: float, r_per_layer: Sequence[int] | None, num_layers: int) -> list[int]:
    """Tokens removed in each of ``num_layers`` blocks, as ToMe's ``parse_r``: ``r_per_layer`` (zero-
    padded) when given, else r constant (inflect 0), decreasing from 2r to 0 (inflect -1), increasing
    from 0 to 2r (inflect 1) or in between."""
    if r_per_layer is not None:
        return list(r_per_layer) + [0] * (num_layers - len(r_per_layer))
    low = int(r * (1.0 - inflect))
    high = 2 * r - low
    step = (high - low) / max(num_layers - 1, 1)
    return [int(low + step * layer) for layer in range(num_layers)]


@dataclasses.dataclass(frozen=True)
class BlockCost:
    """What one block's matmul FLOPs depend on: width C and MLP hidden size I."""

    width: int
    hidden: int

    def flops(self, tokens_in: int, tokens_out: int) -> float:
        """q/k/v and output projections and both attention products on the tokens in; the MLP on the
        tokens left after the reduction (which sits between attention and MLP)."""
        c = self.width
        return 8.0 * tokens_in * c * c + 4.0 * tokens_in * tokens_in * c + 4.0 * tokens_out * c * self.hidden


def patch_embedding_flops(config, patches: int, width: int) -> float:
    """The patch embedding's FLOPs (a patch-size convolution) and one classifier head's, from the
    model's config (``num_channels``, ``patch_size``, ``num_labels``)."""
    patch = getattr(config, "patch_size", 16)
    patch = patch[0] * patch[1] if isinstance(patch, (tuple, list)) else patch * patch
    return 2.0 * patches * width * getattr(config, "num_channels", 3) * patch + 2.0 * width * getattr(
        config, "num_labels", 0
    )


def token_counts(tokens: int, removals: Sequence[int], cap: Callable[[int, int], int]) -> list[tuple[int, int]]:
    """(tokens in, tokens out) of each block; ``cap(tokens, r)`` is what a block can actually remove."""
    counts = []
    for r in removals:
        out = tokens - cap(tokens, r)
        counts.append((tokens, out))
        tokens = out
    return counts


def flops_ratio(
    costs: Sequence[BlockCost],
    tokens: int,
    removals: Sequence[int],
    cap: Callable[[int, int], int],
    fixed: float = 0.0,
    overhead: Callable[[int, int], float] | None = None,
) -> float:
    """The FLOPs with ``removals`` over the FLOPs without: the blocks', the reduction's own work
    (``overhead(tokens in, tokens out)`` in a block that reduces), plus ``fixed`` (what no reduction
    changes: the patch embedding, the head) on both sides."""
    full = sum(c.flops(tokens, tokens) for c in costs) + fixed
    total = fixed
    for cost, (a, b) in zip(costs, token_counts(tokens, removals, cap)):
        total += cost.flops(a, b) + (overhead(a, b) if overhead is not None and b < a else 0.0)
    return total / full


def solve_r(
    target: float,
    costs: Sequence[BlockCost],
    tokens: int,
    inflect: float,
    cap: Callable[[int, int], int],
    fixed: float = 0.0,
    overhead: Callable[[int, int], float] | None = None,
) -> tuple[int, float]:
    """The smallest r whose schedule keeps at most ``target`` of the FLOPs, with its ratio.

    Raises ValueError with the lowest reachable ratio when no r gets there.
    """
    best = None
    for r in range(tokens + 1):
        ratio = flops_ratio(costs, tokens, schedule(r, inflect, None, len(costs)), cap, fixed, overhead)
        if best is None or ratio < best[1]:
            best = (r, ratio)
        if ratio <= target:
            return r, ratio
    raise ValueError(f"at most {best[1]:.3f} of the FLOPs is reachable here (r={best[0]})")


def removable(tokens: int, r: int, prefix: int) -> int:
    """What a pruning or transforming block removes of ``r`` with ``tokens`` in: all but one patch token at most."""
    return max(0, min(r, tokens - prefix - 1))


def split_by_importance(importance: torch.Tensor, prefix: int, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, removed) absolute positions (B, keep) and (B, N - prefix - keep) of the patch tokens:
    the ``keep`` most important are kept; both are returned in sequence order. Prefix tokens are
    never candidates. Exactly equal scores are ordered by the sort kernel."""
    order = importance[:, prefix:].argsort(dim=-1, descending=True) + prefix
    return order[:, :keep].sort(dim=-1).values, order[:, keep:].sort(dim=-1).values


def split_for_removal(importance: torch.Tensor, r: int, prefix: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`split_by_importance` for removing ``r`` tokens, capped by :func:`removable` (one patch
    token stays); None when nothing is removed. Runs without gradient, as every matching does."""
    tokens = importance.shape[1]
    r = removable(tokens, r, prefix)
    if r == 0:
        return None
    with torch.no_grad():
        return split_by_importance(importance, prefix, tokens - prefix - r)


def importance_flops(tokens_in: int, prefix: int, width: int) -> float:
    """FLOPs of the importance scores: the prefix rows of the attention logits over all heads."""
    return 2.0 * prefix * tokens_in * width


def with_prefix(index: torch.Tensor, prefix: int) -> torch.Tensor:
    """``index`` (B, M) with the prefix positions 0..prefix-1 in front."""
    head = torch.arange(prefix, device=index.device, dtype=index.dtype).expand(index.shape[0], prefix)
    return torch.cat([head, index], dim=1)
