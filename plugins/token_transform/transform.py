"""The many-to-many reduction of Token Transforming, built from importance and similarity.

For r tokens to remove in a block of N tokens with P prefix tokens (cls, distillation):
1. importance: the attention the prefix tokens pay each token (softmax over keys, averaged over
   heads and prefix rows), from this block's attention;
2. the N - P - r most important patch tokens are kept (in sequence order), the other r are removed;
3. each removed token j spreads its mass over the ``topk`` kept tokens most similar to it (cosine of
   the keys averaged over heads, ToMe's metric) with weights softmax(similarity / temperature);
4. T = [I for the prefix and kept tokens | those weights in the removed tokens' columns], applied
   as every reduction is (:mod:`surgery.toolkit.reduction`): s' = T s, Y = diag(1/s') T diag(s) X.

Each kept token keeps all of its own mass; the matching runs without gradient (as ToMe's).
"""

from __future__ import annotations

import dataclasses

import torch

from surgery.toolkit.reduction import importance_flops, split_for_removal

REGION = "token_transform::transform"


@dataclasses.dataclass
class ManyToMany:
    """Kept tokens ``targets`` (B, M), removed ``sources`` (B, r), ``weights`` (B, r, M) rows summing to 1."""

    prefix: int
    targets: torch.Tensor
    sources: torch.Tensor
    weights: torch.Tensor

    def apply(self, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if size is None:
            size = x.new_ones(x.shape[0], x.shape[1], 1)
        weighted, channels = x * size, x.shape[-1]
        kept = weighted.gather(1, self.targets.unsqueeze(-1).expand(-1, -1, channels))
        moved = weighted.gather(1, self.sources.unsqueeze(-1).expand(-1, -1, channels))
        spread = self.weights.to(x.dtype).transpose(1, 2)  # (B, M, r)
        new_size = size.gather(1, self.targets.unsqueeze(-1)) + spread @ size.gather(1, self.sources.unsqueeze(-1))
        merged = (kept + spread @ moved) / new_size
        return torch.cat([x[:, : self.prefix], merged], dim=1), torch.cat([size[:, : self.prefix], new_size], dim=1)

    def unmerge(self, y: torch.Tensor, tokens: int) -> torch.Tensor:
        """T^T y over ``tokens`` positions: prefix and kept tokens take their own rows, each removed token
        the mix of the kept rows it spread over, by its weights."""
        channels = y.shape[-1]
        kept = y[:, self.prefix :]
        out = torch.cat([y[:, : self.prefix], y.new_zeros(y.shape[0], tokens - self.prefix, channels)], dim=1)
        out = out.scatter(1, self.targets.unsqueeze(-1).expand(-1, -1, channels), kept)
        moved = self.weights.to(y.dtype) @ kept  # (B, r, C)
        return out.scatter(1, self.sources.unsqueeze(-1).expand(-1, -1, channels), moved)

    def matrix(self, n: int) -> torch.Tensor:
        return self.dense_matrix(n, torch.float64)

    def dense_matrix(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """T (B, M, N) in ``dtype``, built out of place (an exported graph keeps no write into a view)."""
        batch, kept = self.targets.shape
        body = torch.zeros(batch, kept, n, dtype=dtype, device=self.targets.device)
        body = body.scatter(2, self.targets.unsqueeze(-1), 1.0)
        body = body.scatter_add(
            2, self.sources.unsqueeze(1).expand(-1, kept, -1), self.weights.transpose(1, 2).to(dtype)
        )
        if not self.prefix:
            return body
        head = torch.eye(self.prefix, n, dtype=dtype, device=body.device).expand(batch, -1, -1)
        return torch.cat([head, body], dim=1)


def many_to_many(
    metric: torch.Tensor,
    importance: torch.Tensor,
    r: int,
    prefix: int,
    temperature: float,
    topk: int,
    groups: torch.Tensor | None = None,
) -> ManyToMany | None:
    """The reduction of ``r`` tokens (capped so one patch token stays), or None when nothing is removed. With
    ``groups`` (B, N), a removed token spreads over kept tokens of its own group only, and one whose group keeps
    none is dropped (its column zero, as a pruned token's)."""
    split = split_for_removal(importance, r, prefix)
    if split is None:
        return None
    targets, sources = split
    with torch.no_grad():
        unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # a zero key: cosines 0, not NaN
        pick = lambda index: unit.gather(1, index.unsqueeze(-1).expand(-1, -1, unit.shape[-1]))  # noqa: E731
        logits = (pick(sources) @ pick(targets).transpose(1, 2)) / temperature
        allowed = None
        if groups is not None:
            allowed = groups.gather(1, sources)[:, :, None] == groups.gather(1, targets)[:, None, :]  # (B, r, M)
            logits = logits.masked_fill(~allowed, -torch.inf)
        k = min(topk, targets.shape[1])
        if k < targets.shape[1]:
            best = logits.topk(k, dim=-1).indices
            logits = torch.full_like(logits, -torch.inf).scatter(-1, best, logits.gather(-1, best))
        weights = logits.softmax(dim=-1)
        if allowed is not None:  # a row with no kept token of its group: all -inf, NaN after the softmax
            weights = torch.where(allowed.any(dim=-1, keepdim=True), weights, torch.zeros_like(weights))
    return ManyToMany(prefix, targets, sources, weights)


@dataclasses.dataclass(frozen=True)
class ManyToManyBuilder:
    """The builder the reducing block calls (see :mod:`surgery.toolkit.reducing`)."""

    prefix: int
    temperature: float
    topk: int
    importance: bool = True
    region: str = REGION

    def __call__(
        self, metric: torch.Tensor, importance: torch.Tensor | None, r: int, groups: torch.Tensor | None = None
    ) -> ManyToMany | None:
        return many_to_many(metric, importance, r, self.prefix, self.temperature, self.topk, groups)

    def describe(self) -> str:
        return f"many-to-many, temperature={self.temperature:g}, topk={self.topk}"


def overhead(tokens_in: int, tokens_out: int, prefix: int, width: int, metric_dim: int) -> float:
    """FLOPs of one reduction: the prefix rows' attention scores, the removed-to-kept similarities and
    the spread of the removed tokens (and their sizes) onto the kept ones."""
    removed, kept = tokens_in - tokens_out, tokens_out - prefix
    return (
        importance_flops(tokens_in, prefix, width)
        + 2.0 * removed * kept * metric_dim
        + 2.0 * removed * kept * (width + 1)
    )
