"""Replace the chosen blocks' self-attention cores with EcoFormer attention, learn the hashes on
calibration data when given, and put the cores back on revert."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from surgery.core.anatomy import Anatomy
from surgery.core.method import Rewrite
from surgery.core.parts import BlockParts
from surgery.errors import UnsupportedModelError
from surgery.plugins.ecoformer.config import EcoFormerConfig
from surgery.plugins.ecoformer.layers import EcoFormerAttention
from surgery.toolkit.attention import all_but_last_stage, attend_globally, install_core, is_hierarchical, select_layers
from surgery.toolkit.modules import Changes, eval_mode


def apply(model: nn.Module, config: EcoFormerConfig, anatomy: Anatomy) -> Rewrite:
    blocks = anatomy.blocks(model)
    changes = Changes(model)
    for index in select_layers(config.layers, len(blocks), default_layers(blocks), config):
        parts = blocks[index]
        if "qkv" in parts.attention.projections:
            raise UnsupportedModelError(
                f"ecoformer: block {index} has a fused qkv projection; EcoFormer builds its shared "
                "to_qk from the query projection and needs the query and value ones separate."
            )
        tokens = parts.grid[0] * parts.grid[1] + (0 if parts.windowed else anatomy.prefix_tokens_of(model.config))
        for field, value in (("anchors", config.anchors), ("topk", config.topk)):
            if value > tokens:
                raise config.invalid(field, value, f"at most the {tokens} tokens block {index} attends over")
        attend_globally(changes, parts)  # like the official global attention (PVT): the stage map, not windows
        new = EcoFormerAttention(
            parts.attention,
            config.bits,
            config.anchors,
            config.topk,
            config.lr,
            config.momentum,
            config.iterations,
            seed=config.seed + index,
        )
        install_core(changes, parts, new)
    return changes.rewrite()


def default_layers(blocks: list[BlockParts]) -> list[int]:
    """The official choice keeps the last stage in softmax: Swin every stage but the last; a plain ViT
    every block but the last quarter (PVTv2's last stage is a quarter of its depth), at least one."""
    if is_hierarchical(blocks):
        return all_but_last_stage(blocks)
    kept = max(1, len(blocks) // 4) if len(blocks) > 1 else 0
    return list(range(len(blocks) - kept))


def calibrate(model: nn.Module, config: EcoFormerConfig, rewrite: Rewrite, batches: Iterable[Any]) -> None:
    """Learn every replaced block's hash on the first calibration batch (the official code learns it on
    the first batch it sees)."""
    for batch in batches:
        pixel_values = batch["pixel_values"] if isinstance(batch, Mapping) else batch
        for name in rewrite.targets:
            model.get_submodule(name).learn_next = True
        with torch.no_grad(), eval_mode(model):
            model(pixel_values=pixel_values)
        return
    raise config.invalid("calibration", "an empty iterable", "at least one batch of pixel_values")
