"""Replace the blocks' linear layers with int8 ones, calibrate their inputs, and undo it.

The patch embedding and the classifier stay in float, as is usual for ViT post-training
quantization.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from surgery.core.anatomy import Anatomy
from surgery.core.method import Rewrite
from surgery.plugins.quantize.config import QuantizeConfig
from surgery.plugins.quantize.layers import QuantLinear
from surgery.toolkit.modules import Changes, eval_mode


def apply(model: nn.Module, config: QuantizeConfig, anatomy: Anatomy) -> Rewrite:
    changes = Changes(model)
    for name, old in anatomy.find_group(model, "linears"):
        changes.replace(name, QuantLinear.from_linear(old, config.activations, config.observer, config.activation_bits))
    return changes.rewrite()


def needs_data(config: QuantizeConfig) -> bool:
    return config.activations == "int8"


def calibrate(model: nn.Module, config: QuantizeConfig, rewrite: Rewrite, batches: Iterable[Any]) -> None:
    """Observe the inputs of every int8 linear on up to ``calibration_batches`` batches."""
    layers = [model.get_submodule(name) for name in rewrite.targets]
    for layer in layers:
        layer.start_calibration()
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
