"""Bipartite soft matching and size-weighted merging (Bolya et al., ICLR 2023, ``tome/merge.py``).

Follows the official computation: cosine similarity of the metric (keys averaged over heads),
alternating split into A (even positions) and B (odd positions), the cls token (A[0]) never
merges and DeiT's distillation token (B[0]) never receives a merge, each A token's best B partner,
the r best edges merged from A into B. The output is [unmerged A tokens, sorted by position when a
cls token is present, then all B tokens]; with a distillation token: [cls, dist, rest of A, rest of
B]. Generalised to P prefix tokens (DINOv2's registers after cls; the official code knows only cls
and distillation): the prefix tokens in A never merge, those in B never receive a merge, and the
output starts with the P prefix tokens in their order, then the rest of A, then the rest of B; P = 1
and P = 2 are exactly the official cases. Deviation, exact in value: sums use ``scatter_add`` instead of ``scatter_reduce(sum)`` so that
every exporter handles them. As in the official code, the order of exactly equal edge scores is
left to the sort kernel (a plain argsort, which the ONNX exporter supports).

:meth:`Matching.unmerge` is ToMe for Stable Diffusion's unmerge (Bolya and Hoffman, 2023,
``tomesd/merge.py``): every token takes the output of the token it was merged into. ToMe for SD
draws one destination per 2x2 region of the image at random; here the split stays ToMe's
alternating one (the same matching serves both modes), so at most half the patch tokens merge.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Matching:
    """Which tokens of A stay (``keep``), which merge (``src``) into which B token (``dst``); the first
    ``prefix`` tokens of the sequence are protected and stay in front."""

    keep: torch.Tensor  # (B, |A| - r, 1)
    src: torch.Tensor  # (B, r, 1)
    dst: torch.Tensor  # (B, r, 1)
    prefix: int

    @property
    def r(self) -> int:
        return self.src.shape[1]

    def merge_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Merge ``x`` (B, N, C), summing what lands on each B token."""
        a, b = x[:, ::2], x[:, 1::2]
        batch, _, channels = x.shape
        kept = a.gather(1, self.keep.expand(batch, self.keep.shape[1], channels))
        moved = a.gather(1, self.src.expand(batch, self.r, channels))
        b = b.scatter_add(1, self.dst.expand(batch, self.r, channels), moved)
        in_a, in_b = (self.prefix + 1) // 2, self.prefix // 2
        if in_b == 0:
            return torch.cat([kept, b], dim=1)
        front = [kept[:, i // 2 : i // 2 + 1] if i % 2 == 0 else b[:, i // 2 : i // 2 + 1] for i in range(self.prefix)]
        return torch.cat([*front, kept[:, in_a:], b[:, in_b:]], dim=1)

    def apply(self, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The size-weighted merge (:func:`merge_weighted`): the reduction interface."""
        return merge_weighted(self, x, size)

    def unmerge(self, y: torch.Tensor, tokens: int | None = None) -> torch.Tensor:
        """T^T y: every one of the N original tokens takes the row of ``y`` (B, N - r, C, in merge_sum's
        order) it was merged into, as ToMe for Stable Diffusion's unmerge (a merged token's output is
        copied to each of its sources); the original order (``tokens``, N, follows from the matching)."""
        batch, _, channels = y.shape
        in_a, in_b = (self.prefix + 1) // 2, self.prefix // 2
        kept_count = self.keep.shape[1]
        if in_b == 0:
            kept, b = y[:, :kept_count], y[:, kept_count:]
        else:
            front = y[:, : self.prefix]
            kept = torch.cat([front[:, 0::2], y[:, self.prefix : self.prefix + kept_count - in_a]], dim=1)
            b = torch.cat([front[:, 1::2], y[:, self.prefix + kept_count - in_a :]], dim=1)
        a = y.new_zeros(batch, kept_count + self.r, channels)
        a = a.scatter(1, self.keep.expand(batch, kept_count, channels), kept)
        a = a.scatter(
            1, self.src.expand(batch, self.r, channels), b.gather(1, self.dst.expand(batch, self.r, channels))
        )
        if a.shape[1] > b.shape[1]:  # an odd count: A holds one more token
            b = torch.cat([b, b[:, -1:]], dim=1)
        return torch.stack([a, b], dim=2).reshape(batch, -1, channels)[:, : a.shape[1] + y.shape[1] - kept_count]

    def dense_matrix(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """T (B, N - r, N) in ``dtype``: each token's column one-hot at the output it lands in (its unmerge
        index), built without a float64 pass; :func:`surgery.toolkit.reduction.dense` uses it."""
        outputs = n - self.r
        slots = torch.arange(outputs, device=self.src.device)
        where = self.unmerge(slots.expand(self.src.shape[0], outputs)[..., None], n)[..., 0]  # (B, N)
        return (slots[:, None] == where[:, None, :]).to(dtype)

    def matrix(self, n: int) -> torch.Tensor:
        """The merge as the dense (B, N - r, N) 0/1 matrix T (:mod:`surgery.toolkit.reduction`):
        T[m, j] = 1 where token j lands in output m; float64."""
        return self.merge_sum(torch.eye(n, dtype=torch.float64).expand(self.keep.shape[0], n, n))


def bipartite_soft_matching(
    metric: torch.Tensor, r: int, prefix: int, groups: torch.Tensor | None = None
) -> Matching | None:
    """Match ``metric`` (B, N, C), whose first ``prefix`` tokens are protected (cls, distillation,
    registers), and return the merge of ``r`` tokens, or None when r caps to 0.

    r is capped at what the layer can merge: (N - prefix) // 2. ``groups`` (B, N), where given (Swin's
    shifted-window regions; not in the official code): a token is matched only within its group (the
    scores across groups are -inf), so while r leaves same-group edges no merge crosses groups.
    """
    r = min(r, (metric.shape[1] - prefix) // 2)
    if r <= 0:
        return None
    in_a, in_b = (prefix + 1) // 2, prefix // 2
    with torch.no_grad():
        unit = metric / metric.norm(dim=-1, keepdim=True)
        scores = unit[:, ::2] @ unit[:, 1::2].transpose(1, 2)
        if in_a:
            scores[:, :in_a, :] = -torch.inf
        if in_b:
            scores[:, :, :in_b] = -torch.inf
        if groups is not None:
            scores = scores.masked_fill(groups[:, ::2, None] != groups[:, None, 1::2], -torch.inf)
        best_score, best_partner = scores.max(dim=-1)
        order = best_score.argsort(dim=-1, descending=True).unsqueeze(-1)
        keep, src = order[:, r:], order[:, :r]
        dst = best_partner.unsqueeze(-1).gather(1, src)
        if prefix:
            keep = keep.sort(dim=1).values
    return Matching(keep, src, dst, prefix)


def merge_weighted(
    matching: Matching, x: torch.Tensor, size: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge of ``x``; returns the merged tokens and their new sizes."""
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    merged = matching.merge_sum(x * size)
    size = matching.merge_sum(size)
    return merged / size, size
