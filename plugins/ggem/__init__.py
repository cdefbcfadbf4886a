"""``ggem``: Group Generalized Mean pooling in place of the cls read-out or the average pool.

Ko, Kim, Heo, Yun, Chun, Gu, Kim. "Group Generalized Mean Pooling for Vision Transformer".
arXiv 2212.04114, 2022. No official code was found; see ``layers.GroupGeM`` for what is assumed.
New parameters: one p per group. Not training-free: the head was trained on other features.
"""

from __future__ import annotations

from surgery.core.searchable import SearchSpace
from surgery.plugins.ggem import rewrite
from surgery.plugins.ggem.config import GGeMConfig
from surgery.toolkit.register import define_method, registration

METHOD = define_method(
    __name__,
    summary="Group Generalized Mean pooling of the patch tokens (one learnable p per head group)",
    config_class=GGeMConfig,
    refused_traits={
        "mean_readout": "the head averages the final norm's tokens itself: no cls token to carry the "
        "pool and no pooler module to replace"
    },
    trait_notes={
        "cls_mean_readout": "the cls half of the read-out becomes the GGeM pool; the mean half stays",
        "registers": "pools the patch tokens only, never the registers",
        "normed_mean_pool": "GGeM takes the place of the pooler's mean; the pooler's LayerNorm stays after it",
    },
    apply=rewrite.apply,
    roles=("final_norm", "classifier"),
    paper="https://arxiv.org/abs/2212.04114",
    reference="no official code; formula from the paper's abstract and the GeM convention",
    search=SearchSpace(needs_recovery=True),
)


surgery_register_methods = registration(METHOD)
