"""``castling``: Castling-ViT's linear-angular attention in place of softmax attention.

You, Xiong, Dai, Wu, Zhang, Fan, Vajda, Lin. "Castling-ViT: Compressing Self-Attention via
Switching Towards Linear-Angular Attention at Vision Transformer Inference". CVPR 2023,
arXiv 2211.10526; reference core GATECH-EIC/Castling-ViT (c7b75c1). Reuses query/key/value/output
weights; new: a depthwise sequence conv per block (heads x kernel weights). Needs fine-tuning.
"""

from __future__ import annotations

from pathlib import Path

from surgery.hookspecs import hookimpl
from surgery.method import SurgeryMethod
from surgery.plugins.castling import rewrite, training
from surgery.plugins.castling.config import CastlingConfig

METHOD = SurgeryMethod(
    name="castling",
    summary="Castling-ViT linear-angular attention (linear in tokens at inference)",
    config_class=CastlingConfig,
    model_types=("vit", "deit", "swin"),
    apply=rewrite.apply,
    revert=rewrite.revert,
    training=training.training,
    roles=("block", "attention"),
    version="0.1.0",
    card_template=str(Path(__file__).with_name("card.md.j2")),
    paper="https://arxiv.org/abs/2211.10526",
    reference="https://github.com/GATECH-EIC/Castling-ViT (c7b75c1, unofficial miniature core)",
)


@hookimpl
def surgery_register_methods() -> list[SurgeryMethod]:
    return [METHOD]
