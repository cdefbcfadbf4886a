"""GGeM layers: the pooling itself and the three ways it is wired into a classifier."""

from __future__ import annotations

import torch
from torch import nn

from surgery.toolkit.tokens import TokenSizes


class GroupGeM(nn.Module):
    """Group Generalized Mean pooling over tokens (Ko et al., 2022, arXiv 2212.04114).

    The C channels are split into G contiguous groups with one learnable exponent p_g each::

        f_c = ( mean_i max(x_ic, eps) ** p_g(c) ) ** (1 / p_g(c))

    With G = 1 this is GeM; with p = 1 and positive inputs it is the mean. ``weights`` (B, N, 1)
    turns the mean into a weighted one (sum_i w_i x_i^p / sum_i w_i), for merged tokens of
    different sizes. Deviation: the paper's pseudocode could not be read; eps = 1e-6 and p = 3 follow
    the GeM convention, and negative features are clamped to eps, not rectified otherwise.
    """

    def __init__(self, channels: int, groups: int, p_init: float = 3.0, eps: float = 1e-6, learn_p: bool = True):
        super().__init__()
        if channels % groups:
            raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
        self.channels, self.groups, self.eps = channels, groups, eps
        self.p = nn.Parameter(torch.full((groups,), float(p_init)), requires_grad=learn_p)
        self.learn_p = learn_p

    def forward(self, tokens: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens`` (B, N, C) to (B, C)."""
        p = self.p.to(tokens.dtype).repeat_interleave(self.channels // self.groups)
        powered = tokens.clamp(min=self.eps).pow(p)
        if weights is None:
            mean = powered.mean(dim=1)
        else:
            mean = (powered * weights).sum(dim=1) / weights.sum(dim=1)
        return mean.pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}, eps={self.eps}, learn_p={self.learn_p}"


class GGeMReadout(nn.Module):
    """For cls read-out models (ViT, DeiT): the final LayerNorm, then GGeM over the patch tokens.

    The pooled feature is written into the prefix token slot(s) the classifier reads (cls, and
    DeiT's distillation token), so the model's own ``forward`` feeds it to the head unchanged.
    ``last_hidden_state[:, :prefix_tokens]`` therefore holds the pooled feature. When token merging
    ran, each token is weighted by the number of patches it stands for (``token_sizes``).
    """

    def __init__(self, norm: nn.Module, pool: GroupGeM, prefix_tokens: int, token_sizes: TokenSizes | None = None):
        super().__init__()
        self.norm, self.pool, self.prefix_tokens = norm, pool, prefix_tokens
        self.token_sizes = token_sizes

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(hidden)
        patches = hidden[:, self.prefix_tokens :]
        sizes = self.token_sizes.for_tokens(hidden) if self.token_sizes is not None else None
        weights = None if sizes is None else sizes[:, self.prefix_tokens :]
        pooled = self.pool(patches, weights).unsqueeze(1).expand(-1, self.prefix_tokens, -1)
        return torch.cat([pooled, patches], dim=1)

    def extra_repr(self) -> str:
        return f"prefix_tokens={self.prefix_tokens}"


class GGeMPooler(nn.Module):
    """For pooled models (Swin): replaces ``AdaptiveAvgPool1d(1)``, taking and returning its layout."""

    def __init__(self, pool: GroupGeM):
        super().__init__()
        self.pool = pool

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` (B, C, L) to (B, C, 1), as ``SwinModel`` calls its pooler."""
        return self.pool(features.transpose(1, 2)).unsqueeze(-1)


class GGeMNormedPooler(nn.Module):
    """For mean-pooled models with a normalising pooler (BEiT, data2vec-vision): replaces the pooler,
    taking the sequence (B, N, C) and returning (B, C) as it does: the pooler's own LayerNorm applied
    to GGeM over the patch tokens (the prefix tokens left out, as the model's mean leaves out cls)."""

    def __init__(self, norm: nn.Module, pool: GroupGeM, prefix_tokens: int):
        super().__init__()
        self.norm, self.pool, self.prefix_tokens = norm, pool, prefix_tokens

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(self.pool(hidden[:, self.prefix_tokens :]))

    def extra_repr(self) -> str:
        return f"prefix_tokens={self.prefix_tokens}"
