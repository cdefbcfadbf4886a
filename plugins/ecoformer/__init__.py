"""``ecoformer``: EcoFormer's binary-hash linear attention in place of softmax attention.

Liu, Pan, He, Cai, Zhuang. "EcoFormer: Energy-Saving Attention with Linear Complexity". NeurIPS 2022,
arXiv 2209.09004; official code ziplab/EcoFormer. Q and K share one projection (from W_q; W_k is
dropped), hashed per head to b-bit codes by a kernelised hash learned from the data; the attention is
linear in tokens and its inner products are accumulations of +-1 codes. New state: the hash buffers
(A, mu, anchors); no new trained parameters. Changes the function: needs fine-tuning (recovery).
"""

from __future__ import annotations

from surgery.core.searchable import SearchSpace
from surgery.plugins.ecoformer import rewrite, training
from surgery.plugins.ecoformer.config import EcoFormerConfig
from surgery.toolkit.register import define_method, registration

METHOD = define_method(
    __name__,
    provides=("linear_attention",),  # replaces the softmax attention core (what other methods conflict with)
    summary="EcoFormer: shared q/k hashed to binary codes, linear attention by accumulation",
    config_class=EcoFormerConfig,
    trait_notes={
        "windowed": "attends over the whole stage map, not windows (as the official global attention)",
        "relative_position_bias": "dropped with the replaced core (linear attention has no logits to bias)",
        "cosine_attention": "replaced with the core: the codes come from the normalised shared projection",
        "registers": "register tokens are hashed and attended like every other token",
    },
    apply=rewrite.apply,
    calibrate=rewrite.calibrate,
    training=training.training,
    roles=("block", "attention", "parts"),
    paper="https://arxiv.org/abs/2209.09004",
    reference="https://github.com/ziplab/EcoFormer (pvt/performer.py, pvt/hashing/ksh.py)",
    search=SearchSpace(options={"layers": ("default", "all")}, fastest={"layers": "all"}, needs_recovery=True),
)


surgery_register_methods = registration(METHOD)
