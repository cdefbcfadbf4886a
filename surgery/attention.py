"""Helpers shared by plugins that replace the self-attention core of a block.

They reuse the original ``query``/``key``/``value`` Linear modules (same objects, same weights);
the output projection stays where transformers keeps it (``attn_output``), so a replacement only
computes the attention context. Both transformers layouts call the core with the hidden states
first: ViT/DeiT expect ``(context, None)`` back, Swin expects ``(context,)``.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

Style = Literal["vit", "swin"]


def style_of(anatomy) -> Style:
    """``"swin"`` for windowed hierarchical models (no prefix tokens, pooled read-out), else ``"vit"``."""
    return "swin" if anatomy.readout == "pool" else "vit"


def heads_of(attention: nn.Module) -> int:
    return attention.num_attention_heads


def patch_grid(config) -> tuple[int, int]:
    """Rows and columns of patches at the config's image size (``image_size``/``patch_size``: int or pair)."""
    image = config.image_size if isinstance(config.image_size, (tuple, list)) else (config.image_size,) * 2
    patch = config.patch_size if isinstance(config.patch_size, (tuple, list)) else (config.patch_size,) * 2
    return image[0] // patch[0], image[1] // patch[1]


def select_layers(option, count: int, default: list[int], config, field: str = "layers") -> list[int]:
    """Block indices chosen by ``option``: "default", "all", an int k (the first k) or explicit indices."""
    if option == "default":
        return default
    if option == "all":
        return list(range(count))
    if isinstance(option, int):
        if not 1 <= option <= count:
            raise config.invalid(field, option, f"a number of leading blocks from 1 to {count}")
        return list(range(option))
    bad = [i for i in option if not 0 <= i < count]
    if bad or not option or len(set(option)) != len(option):
        raise config.invalid(field, list(option), f"distinct block indices from 0 to {count - 1}, each once")
    return sorted(option)


def stage_of(block: nn.Module, blocks: list[nn.Module]) -> int:
    """The stage of a Swin block: the rank of its map size among all blocks (largest first)."""
    resolutions = sorted({tuple(b.input_resolution) for b in blocks}, reverse=True)
    return resolutions.index(tuple(block.input_resolution))


def overlapping_attention_swaps(model: nn.Module, steps, history) -> list[str]:
    """Reasons for every block whose self-attention two attention-swap steps would both replace.

    A swap plugin's rewrite module provides ``chosen_blocks(model, config, anatomy)``; applied steps
    are matched by the attention module names they recorded.
    """
    from importlib import import_module

    from surgery.manager import get_host

    swaps = {"agent_attention": "surgery.plugins.agent_attention.rewrite", "castling": "surgery.plugins.castling.rewrite"}
    anatomy = get_host().anatomy(model.config.model_type)
    names = [name for name, _ in anatomy.find(model, "attention")]
    owner: dict[int, str] = {}
    for step in history:
        if step.plugin in swaps:
            owner.update({names.index(t): step.plugin for t in step.targets if t in names})
    reasons = []
    for step in steps:
        plugin = step.method.name
        if plugin not in swaps:
            continue
        for index in import_module(swaps[plugin]).chosen_blocks(model, step.config, anatomy):
            if index in owner:
                reasons.append(
                    f"{plugin} and {owner[index]} would both replace the self-attention of block {index}; "
                    "give them disjoint `layers`"
                )
            owner[index] = plugin
    return reasons
