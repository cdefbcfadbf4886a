"""``ggem``: Group Generalized Mean pooling in place of the cls read-out or the average pool.

Ko, Kim, Heo, Yun, Chun, Gu, Kim. "Group Generalized Mean Pooling for Vision Transformer".
arXiv 2212.04114, 2022. No official code was found; see ``layers.GroupGeM`` for what is assumed.
New parameters: one p per group. Not training-free: the head was trained on other features.
"""

from __future__ import annotations

from pathlib import Path

from surgery.hookspecs import hookimpl
from surgery.method import SurgeryMethod
from surgery.plugins.ggem import rewrite
from surgery.plugins.ggem.config import GGeMConfig

METHOD = SurgeryMethod(
    name="ggem",
    summary="Group Generalized Mean pooling of the patch tokens (one learnable p per head group)",
    config_class=GGeMConfig,
    model_types=("vit", "deit", "swin"),
    apply=rewrite.apply,
    revert=rewrite.revert,
    roles=("final_norm", "classifier"),
    version="0.1.0",
    card_template=str(Path(__file__).with_name("card.md.j2")),
    paper="https://arxiv.org/abs/2212.04114",
    reference="no official code; formula from the paper's abstract and the GeM convention",
)


@hookimpl
def surgery_register_methods() -> list[SurgeryMethod]:
    return [METHOD]
