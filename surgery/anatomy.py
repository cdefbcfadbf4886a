"""Where the roles live in each architecture: the one place that knows transformers' module paths.

Plugins never hard-code a module path; they ask the anatomy for a role (``"attention"``,
``"final_norm"``, ``"classifier"`` ...). When transformers renames its modules (5.9 did for ViT and
Swin), only the anatomies below change. Third-party plugins add architectures through the
``surgery_register_anatomies`` hook.

Roles are glob patterns over ``model.named_modules()`` names, where ``*`` matches one index
(``vit.encoder.layer.*.attention.attention``). Known roles:

============== ===========================================================================
encoder        the module that runs the blocks in sequence
block          one transformer block (ViT layer, Swin block)
attention      the self-attention core (query/key/value projections and the softmax)
query, key,    the query, key and value projections of the attention core
value
attn_output    the attention output projection
mlp_in         the first MLP linear
mlp_out        the second MLP linear
patch_embed    the patch-embedding convolution
final_norm     the LayerNorm after the last block
pooler         the pooling module in front of the classifier (Swin)
classifier     the classification head(s)
============== ===========================================================================
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Literal

from torch import nn

from surgery.errors import UnsupportedModelError


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """The layout of one ``model_type``.

    Attributes:
        model_type: ``config.model_type`` this anatomy describes.
        roles: role name to one or more glob patterns over module names.
        prefix_tokens: tokens before the patch tokens in the sequence (1 for ViT's cls, 2 for DeiT's
            cls and distillation tokens, 0 for Swin).
        readout: ``"cls"`` when the classifier reads prefix token(s) after ``final_norm``,
            ``"pool"`` when it reads the output of ``pooler``.
        readout_heads: attention heads of the last stage (the default grouping for pooling).
        readout_width: channels of the features the classifier reads.
    """

    model_type: str
    roles: Mapping[str, tuple[str, ...]]
    prefix_tokens: int
    readout: Literal["cls", "pool"]
    readout_heads: Callable[[object], int]
    readout_width: Callable[[object], int]

    def find(self, model: nn.Module, role: str) -> list[tuple[str, nn.Module]]:
        """Every ``(name, module)`` that plays ``role`` in ``model``, in model order."""
        if role not in self.roles:
            raise UnsupportedModelError(
                f"the {self.model_type} anatomy has no role '{role}'; roles: {', '.join(sorted(self.roles))}."
            )
        pattern = _compile(self.roles[role])
        return [(name, module) for name, module in model.named_modules() if pattern.fullmatch(name)]

    def one(self, model: nn.Module, role: str) -> tuple[str, nn.Module]:
        """The single module playing ``role``; an error if there is not exactly one."""
        found = self.find(model, role)
        if len(found) != 1:
            raise UnsupportedModelError(
                f"{type(model).__name__} ({self.model_type}): expected one '{role}' module matching "
                f"{self.roles[role]}, found {len(found)}. Is this an image-classification model?"
            )
        return found[0]

    def check(self, model: nn.Module, roles: tuple[str, ...]) -> None:
        """Raise unless every role in ``roles`` is present in ``model``."""
        for role in roles:
            if not self.find(model, role):
                raise UnsupportedModelError(
                    f"{type(model).__name__} ({self.model_type}) has no module for role '{role}' "
                    f"(looked for {', '.join(self.roles[role])}). surgery supports the "
                    "*ForImageClassification classes of this architecture."
                )


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str]:
    parts = [re.escape(p).replace(r"\*", r"[^.]+") for p in patterns]
    return re.compile("|".join(f"(?:{p})" for p in parts))


def _vit_like(model_type: str, backbone: str, prefix_tokens: int, classifiers: tuple[str, ...]) -> Anatomy:
    block = f"{backbone}.encoder.layer.*"
    return Anatomy(
        model_type=model_type,
        roles={
            "encoder": (f"{backbone}.encoder",),
            "block": (block,),
            "attention": (f"{block}.attention.attention",),
            "query": (f"{block}.attention.attention.query",),
            "key": (f"{block}.attention.attention.key",),
            "value": (f"{block}.attention.attention.value",),
            "attn_output": (f"{block}.attention.output.dense",),
            "mlp_in": (f"{block}.intermediate.dense",),
            "mlp_out": (f"{block}.output.dense",),
            "patch_embed": (f"{backbone}.embeddings.patch_embeddings.projection",),
            "final_norm": (f"{backbone}.layernorm",),
            "classifier": classifiers,
        },
        prefix_tokens=prefix_tokens,
        readout="cls",
        readout_heads=lambda config: config.num_attention_heads,
        readout_width=lambda config: config.hidden_size,
    )


def _swin() -> Anatomy:
    block = "swin.encoder.layers.*.blocks.*"
    return Anatomy(
        model_type="swin",
        roles={
            "encoder": ("swin.encoder",),
            "block": (block,),
            "attention": (f"{block}.attention.self",),
            "query": (f"{block}.attention.self.query",),
            "key": (f"{block}.attention.self.key",),
            "value": (f"{block}.attention.self.value",),
            "attn_output": (f"{block}.attention.output.dense",),
            "mlp_in": (f"{block}.intermediate.dense",),
            "mlp_out": (f"{block}.output.dense",),
            "patch_embed": ("swin.embeddings.patch_embeddings.projection",),
            "final_norm": ("swin.layernorm",),
            "pooler": ("swin.pooler",),
            "classifier": ("classifier",),
        },
        prefix_tokens=0,
        readout="pool",
        readout_heads=lambda config: config.num_heads[-1],
        readout_width=lambda config: int(config.embed_dim * 2 ** (len(config.depths) - 1)),
    )


def builtin_anatomies() -> list[Anatomy]:
    """ViT, DeiT (plain and distilled heads) and Swin as laid out in transformers 4.57."""
    return [
        _vit_like("vit", "vit", prefix_tokens=1, classifiers=("classifier",)),
        _vit_like("deit", "deit", prefix_tokens=2, classifiers=("classifier", "cls_classifier", "distillation_classifier")),
        _swin(),
    ]
