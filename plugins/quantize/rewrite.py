"""Replace the blocks' linear layers with int8 ones, calibrate their inputs, and undo it.

The patch embedding and the classifier stay in float unless ``patch_embed`` / ``classifier`` say
"int8" (NNCF quantizes both; ViT post-training quantization papers usually keep them float).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from surgery.core.anatomy import Anatomy
from surgery.core.method import Rewrite
from surgery.plugins.quantize.config import QuantizeConfig
from surgery.plugins.quantize.attention import AttentionQuant, QuantAttention
from surgery.plugins.quantize.conv import QuantConv2d
from surgery.plugins.quantize.layers import QuantLinear
from surgery.toolkit.attention import AttentionCore
from surgery.toolkit.modules import Changes, eval_mode


def apply(model: nn.Module, config: QuantizeConfig, anatomy: Anatomy) -> Rewrite:
    linears = anatomy.find_group(model, "linears")
    kept = kept_float(model, config, anatomy, [name for name, _ in linears])
    if len(kept) == len(linears):
        raise config.invalid(
            "float_blocks/float_roles",
            (config.float_blocks, config.float_roles),
            f"choices that leave at least one of the {len(linears)} linears to quantize",
        )
    blocks = anatomy.blocks(model) if config.attention == "int8" else []
    for parts in blocks:
        if isinstance(parts.attention.core, AttentionCore):
            raise config.invalid(
                "attention",
                config.attention,
                '"float" after a step that replaced the softmax attention '
                f"(block {parts.index} runs {type(parts.attention.core).__name__}: no q k^T to quantize)",
            )
    if "cosine_attention" in anatomy.traits and blocks:
        raise config.invalid(
            "attention",
            config.attention,
            '"float" on models with cosine attention (Swinv2: '
            "q and k are normalised and scaled by a learned temperature, not quantized here)",
        )
    ends = outer_layers(model, config, anatomy)
    changes = Changes(model)
    for name, old in linears + ends:
        if name not in kept:
            new = QuantConv2d.from_conv if isinstance(old, nn.Conv2d) else QuantLinear.from_linear
            changes.replace(name, new(old, config.activations, config.observer, config.activation_bits))
    for parts in blocks:
        core = parts.attention.core
        quant = AttentionQuant(config.observer, config.activation_bits, config.attention_bits).to(
            next(core.parameters()).device
        )
        # not claimed: token reduction's swap of this core composes with it (its attention reads the quantizers)
        changes.swap_class(
            parts.attention_name,
            QuantAttention,
            "Int8",
            claim=False,
            surgery_attention_quant=quant,
            quant_parts=parts.attention,
        )
    return changes.rewrite()


def outer_layers(model: nn.Module, config: QuantizeConfig, anatomy: Anatomy) -> list[tuple[str, nn.Module]]:
    """The patch embedding convolution and the classifier linears, where the options quantize them."""
    layers: list[tuple[str, nn.Module]] = []
    roles = anatomy.layout_of(model).roles
    for option, role, kind in (("patch_embed", "patch_embed", nn.Conv2d), ("classifier", "classifier", nn.Linear)):
        if getattr(config, option) != "int8":
            continue
        found = (
            [(name, module) for name, module in anatomy.find(model, role) if type(module) is kind]
            if role in roles
            else []
        )
        if not found:
            raise config.invalid(
                option,
                "int8",
                f'"float" on this {anatomy.model_type} model: it has no plain '
                f"{kind.__name__} as its {role.replace('_', ' ')}",
            )
        layers += found
    return layers


def kept_float(model: nn.Module, config: QuantizeConfig, anatomy: Anatomy, linears: list[str]) -> set[str]:
    """The names among ``linears`` that ``float_blocks`` and ``float_roles`` keep float."""
    kept: set[str] = set()
    if config.float_blocks:
        blocks = [name for name, _ in anatomy.find(model, "block")]
        count = len(blocks)
        for index in config.float_blocks:
            if not -count <= index < count:
                raise config.invalid(
                    "float_blocks",
                    config.float_blocks,
                    f"block indices from {-count} to {count - 1} (this model has {count} blocks)",
                )
            kept |= {name for name in linears if name.startswith(blocks[index] + ".")}
    roles = anatomy.group(model, "linears")
    for role in config.float_roles:
        if role not in roles:
            raise config.invalid(
                "float_roles", config.float_roles, f"roles of this model's linears: {', '.join(roles)}"
            )
        kept |= {name for name, _ in anatomy.find(model, role)}
    return kept


def needs_data(config: QuantizeConfig) -> bool:
    return config.activations == "int8"


def calibrate(model: nn.Module, config: QuantizeConfig, rewrite: Rewrite, batches: Iterable[Any]) -> None:
    """Observe the inputs of every int8 linear on up to ``calibration_batches`` batches."""
    layers = [model.get_submodule(name) for name in rewrite.targets]
    # the attention cores are swapped unclaimed (see apply): found in the model (quantize applies once)
    attention = [core.surgery_attention_quant for core in model.modules() if isinstance(core, QuantAttention)]
    for layer in layers:
        layer.start_calibration()
    for quant in attention:
        quant.observe(True)
    seen = 0
    with torch.no_grad(), eval_mode(model):
        for batch in batches:
            if seen >= config.calibration_batches:
                break
            pixel_values = batch["pixel_values"] if isinstance(batch, Mapping) else batch
            model(pixel_values=pixel_values)
            seen += 1
    if not seen:
        raise config.invalid("calibration", "an empty iterable", "at least one batch of pixel_values")
    for layer in layers:
        layer.finish_calibration()
    for quant in attention:
        quant.observe(False)
