"""``token_prune``: top-k token pruning for ViT and DeiT (one-to-one reduction), training-free.

The pruning special case of Token Transforming's matrix view (Zeng et al., arXiv 2506.05709): W
with one-hot rows. In every block the r patch tokens the prefix tokens attend to least are dropped
(EViT's attentiveness score, Liang et al., ICLR 2022, arXiv 2202.07800, without EViT's fused
token); sizes and proportional attention as in the other reductions. A baseline for
``token_transform`` and ``token_merge`` at equal FLOPs. No new parameters; exactly reversible.
"""

from __future__ import annotations

from surgery.core.searchable import SearchSpace
from surgery.plugins.token_prune import rewrite
from surgery.plugins.token_prune.config import TokenPruneConfig
from surgery.toolkit.reduction_config import reduction_fields, unmerge_search
from surgery.toolkit.register import define_method, registration

_NOT_WITH_LINEAR_ATTENTION = (
    "token pruning scores tokens by the prefix tokens' softmax attention; the linear attentions have none"
)

_SWIN = "Swin attends within fixed windows over a fixed grid; pruned tokens leave holes in the windows"

METHOD = define_method(
    __name__,
    summary="Token pruning: drop the r patch tokens the cls token attends to least, per block, training-free",
    config_class=TokenPruneConfig,
    **reduction_fields(_NOT_WITH_LINEAR_ATTENTION, _SWIN, needs_prefix=True, windows=True),
    apply=rewrite.apply,
    paper="https://arxiv.org/abs/2506.05709",
    reference="the one-hot case of Token Transforming's reduction matrix; EViT's score (arXiv 2202.07800)",
    search=SearchSpace(
        options={"flops": (0.8, 0.65, 0.5, 0.35)},
        fastest={"flops": 0.35, "r": 24},
        quiet={"branches": "both"},
        trait_options=unmerge_search(r_for_flops=True),
    ),
)


surgery_register_methods = registration(METHOD)
