"""``token_merge``: ToMe, bipartite soft token merging for ViT and DeiT, training-free.

Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman. "Token Merging: Your ViT But Faster". ICLR 2023,
arXiv 2210.09461; official code facebookresearch/ToMe (``tome/merge.py``, ``tome/patch/timm.py``).
No new parameters; exactly reversible. Deviations are listed in ``merge.py``.
"""

from __future__ import annotations

from surgery.core.searchable import SearchSpace
from surgery.plugins.token_merge import rewrite
from surgery.plugins.token_merge.config import ToMeConfig
from surgery.toolkit.reduction_config import SEARCHED_R, reduction_fields, unmerge_search
from surgery.toolkit.register import define_method, registration

_NOT_WITH_LINEAR_ATTENTION = (
    "token merging needs softmax attention over an unstructured token set (its metric is the keys and "
    "proportional attention biases the softmax logits); the linear attentions have neither"
)

_SWIN = (
    "Swin attends within fixed windows and merges patches on a fixed grid, and a token merged between "
    "attention and MLP has no grid position"
)

METHOD = define_method(
    __name__,
    summary="ToMe: merge r similar tokens per block (bipartite soft matching), training-free",
    config_class=ToMeConfig,
    **reduction_fields(_NOT_WITH_LINEAR_ATTENTION, _SWIN, windows=True),
    apply=rewrite.apply,
    version="0.1.1",
    changes={
        "0.1.1": (
            "merging within Swin's windows (unmerge=True on a windowed family) applies the merge, the "
            "unmerge and the reduced bias and shift mask as matrix products, and attention as explicit matmuls "
            "(float rounding only: logits "
            "within ~1e-6 of 0.1.0's on the same merges; a near-tie between two merge scores may now "
            "break the other way). The reducing blocks and unmerge on other families are unchanged."
        )
    },
    paper="https://arxiv.org/abs/2210.09461",
    reference="https://github.com/facebookresearch/ToMe (af95e4b)",
    search=SearchSpace(
        options={"r": SEARCHED_R},
        fastest={"r": 24},
        quiet={"branches": "both"},
        trait_options=unmerge_search(windows=True),
    ),
)


surgery_register_methods = registration(METHOD)
