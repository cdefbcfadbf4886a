"""Batched inference and accuracy: on tensors, and over a DataLoader through the ``evaluate`` metric."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from surgery.toolkit.modules import eval_mode


# no_grad, not inference_mode: transformers caches tensors made in a forward (BEiT's position index,
# lru-cached per module), and one made in inference mode breaks every later training step
@torch.no_grad()
def predict_logits(model: nn.Module, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) for every image, computed in batches."""
    with eval_mode(model):
        return torch.cat([model(pixel_values=chunk).logits for chunk in pixel_values.split(batch_size)])


def accuracy(model: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1]."""
    return top1(predict_logits(model, pixel_values, batch_size), labels)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1] of logits already computed."""
    return float((logits.argmax(-1) == labels).float().mean())


@torch.no_grad()
def loader_accuracy(
    model: nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    gather: Callable = lambda pair: pair,
) -> float:
    """Top-1 accuracy over batches of ``{"pixel_values", "labels"}`` with surgery's offline ``evaluate``
    accuracy metric. ``autocast`` and ``gather`` come from accelerate when several processes share the data."""
    from surgery.evaluation.metrics import load_metric

    metric = load_metric("accuracy")
    with eval_mode(model):
        for batch in loader:
            with autocast():
                logits = model(pixel_values=batch["pixel_values"]).logits
            predictions, references = gather((logits.argmax(-1), batch["labels"]))
            metric.add_batch(predictions=predictions.cpu(), references=references.cpu())
    return float(metric.compute()["accuracy"])
