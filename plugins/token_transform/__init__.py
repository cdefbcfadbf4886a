"""``token_transform``: Token Transforming, many-to-many token reduction for ViT and DeiT, training-free.

Zeng, Yu, Kong, Tang. "Token Transforming: A Unified and Training-Free Token Compression Framework
for Vision Transformer Acceleration". arXiv 2506.05709, 2025. No official code is public (the
authors' repository, AuroraZengfh/TokenTransforming, holds a README only) and the paper's method
section could not be read here, so this is our construction of its idea, every choice ours:
reduction as one matrix Y = W X (``surgery.toolkit.reduction``); kept tokens chosen by the attention
the prefix tokens pay them (EViT-style importance); each removed token spread over its ``topk`` most
similar kept tokens by softmax(cosine of the keys / temperature), size-weighted, with token sizes
and proportional attention as in ToMe. The defaults (temperature 0.02, topk 4) are the best cell of the
temperature x topk ablation on the digits validation splits (``benchmarks/token_reduction.py``),
which is flat there: every cell is within one validation digit of it. No new parameters; exactly
reversible.
"""

from __future__ import annotations

from surgery.core.searchable import SearchSpace
from surgery.plugins.token_transform import rewrite
from surgery.plugins.token_transform.config import TokenTransformConfig
from surgery.toolkit.reduction_config import reduction_fields, unmerge_search
from surgery.toolkit.register import define_method, registration

_NOT_WITH_LINEAR_ATTENTION = (
    "token reduction needs softmax attention over an unstructured token set (its importance is the "
    "prefix tokens' attention and proportional attention biases the softmax logits); the linear attentions have neither"
)

_SWIN = "Swin attends within fixed windows and merges patches on a fixed grid; reduced tokens have no grid position"

METHOD = define_method(
    __name__,
    summary="Token Transforming: many-to-many reduction of r tokens per block (soft, size-weighted), training-free",
    config_class=TokenTransformConfig,
    **reduction_fields(_NOT_WITH_LINEAR_ATTENTION, _SWIN, needs_prefix=True, windows=True),
    apply=rewrite.apply,
    paper="https://arxiv.org/abs/2506.05709",
    reference="no official code (AuroraZengfh/TokenTransforming holds a README only); our construction, see the docstring",
    search=SearchSpace(
        options={"flops": (0.8, 0.65, 0.5, 0.35)},
        fastest={"flops": 0.35, "r": 24},
        quiet={"branches": "both"},
        trait_options=unmerge_search(r_for_flops=True),
    ),
)


surgery_register_methods = registration(METHOD)
