"""The built-in anatomies: the one package that knows transformers' module paths and attribute names.

One module per family (or group of families sharing modules): ViT, ViT-MSN, DeiT and Swin
(:mod:`.vit_swin`), Swinv2 (:mod:`.swinv2`), DINOv2 with and without registers (:mod:`.dinov2`), BEiT and
data2vec-vision (:mod:`.beit`). A new layout of a known family
(transformers >= 5.9's ``layers.N.attention.{q,k,v,o}_proj``) is one more
:class:`~surgery.core.anatomy.Layout`; a new family is one more :class:`~surgery.core.anatomy.Anatomy`
here, or from a third-party plugin's ``surgery_register_anatomies``; plugins do not change
(docs/architecture.md, "Checklist: adding an architecture").
"""

from __future__ import annotations

from surgery.core.anatomy import Anatomy
from surgery.core.families.beit import beit_anatomies
from surgery.core.families.dinov2 import dinov2_anatomies
from surgery.core.families.swinv2 import swinv2_anatomies
from surgery.core.families.vit_swin import swin_position_bias, swin_position_index, vit_swin_anatomies

__all__ = ["builtin_anatomies", "swin_position_bias", "swin_position_index"]


def builtin_anatomies() -> list[Anatomy]:
    """Every built-in family, in the order tables list them."""
    return [*vit_swin_anatomies(), *swinv2_anatomies(), *dinov2_anatomies(), *beit_anatomies()]
