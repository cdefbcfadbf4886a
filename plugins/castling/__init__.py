"""``castling``: Castling-ViT's linear-angular attention in place of softmax attention.

You, Xiong, Dai, Wu, Zhang, Fan, Vajda, Lin. "Castling-ViT: Compressing Self-Attention via
Switching Towards Linear-Angular Attention at Vision Transformer Inference". CVPR 2023,
arXiv 2211.10526; reference core GATECH-EIC/Castling-ViT (c7b75c1). Reuses query/key/value/output
weights; new: a depthwise sequence conv per block (heads x kernel weights). Needs fine-tuning.
"""

from __future__ import annotations

from surgery.core.searchable import SearchSpace
from surgery.plugins.castling import rewrite, training
from surgery.plugins.castling.config import CastlingConfig
from surgery.toolkit.register import define_method, registration

METHOD = define_method(
    __name__,
    provides=("linear_attention",),  # replaces the softmax attention core (what other methods conflict with)
    summary="Castling-ViT linear-angular attention (linear in tokens at inference)",
    config_class=CastlingConfig,
    trait_notes={
        "windowed": "keeps the windows: the linear-angular attention runs within each window",
        "relative_position_bias": "dropped with the replaced core (linear attention has no logits to bias)",
        "cosine_attention": "replaced with the core: the angular kernel normalises q and k itself, without a logit scale",
    },
    apply=rewrite.apply,
    training=training.training,
    roles=("block", "attention", "parts"),
    version="0.1.1",
    changes={
        "0.1.1": (
            "q and k are normalised as x * rsqrt(max(|x|^2, 1e-12)) (a finite gradient at zero "
            "vectors) instead of x / |x|: the same function above |x| = 1e-6, rounded differently, so "
            "0.1.0 checkpoints reload within float rounding (6e-8 measured), not bit for bit."
        )
    },
    paper="https://arxiv.org/abs/2211.10526",
    reference="https://github.com/GATECH-EIC/Castling-ViT (c7b75c1, unofficial miniature core)",
    search=SearchSpace(options={"layers": ("default", "all")}, fastest={"layers": "all"}, needs_recovery=True),
)


surgery_register_methods = registration(METHOD)
