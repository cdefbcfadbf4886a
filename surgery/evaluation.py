"""Batched inference and accuracy on tensors."""

from __future__ import annotations

import torch
from torch import nn


@torch.inference_mode()
def predict_logits(model: nn.Module, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) for every image, computed in batches."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(pixel_values=chunk).logits for chunk in pixel_values.split(batch_size)])
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1]."""
    return top1(predict_logits(model, pixel_values, batch_size), labels)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1] of logits already computed."""
    return float((logits.argmax(-1) == labels).float().mean())
