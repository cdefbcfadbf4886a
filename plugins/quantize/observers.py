"""The fake-quant modules quantize builds its int8 layers from (torch.ao.quantization), and their observers'
calibration statistics: left out of checkpoints (which keep the scales and zero points) and reset after a load."""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver

OBSERVERS = {"histogram": HistogramObserver, "minmax": MinMaxObserver}


def weight_fake_quant(channels: int) -> FakeQuantize:
    """Per-channel symmetric int8; buffers sized for ``channels`` up front, so that a checkpoint
    loads into a freshly built module without resizing."""
    quant = FakeQuantize(
        observer=PerChannelMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )
    quant.scale = torch.ones(channels)
    quant.zero_point = torch.zeros(channels, dtype=torch.int32)
    quant.activation_post_process.min_val = torch.full((channels,), float("inf"))
    quant.activation_post_process.max_val = torch.full((channels,), float("-inf"))
    return quant


def input_fake_quant(observer: str, bits: int = 8) -> FakeQuantize:
    """uint8 codes over [0, 2**bits - 1]: 7 bits keep u8 x s8 products of x86 CPUs without VNNI
    from saturating (VPMADDUBSW adds two products into int16: 2 x 127 x 128 fits, 2 x 255 x 128 does not)."""
    return FakeQuantize(
        observer=OBSERVERS[observer],
        quant_min=0,
        quant_max=2**bits - 1,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        reduce_range=False,
    )


def reset_observer(observer: nn.Module, device: torch.device) -> None:
    """Give an observer whose statistics were not saved its initial state: min +inf, max -inf, an
    empty histogram, so that calibrating again starts afresh. Called after loading, where those
    buffers are whatever the loader left (meta tensors, or uninitialised memory on loaders that
    materialise missing buffers)."""
    initial = {"min_val": float("inf"), "max_val": float("-inf"), "histogram": 0.0}
    for name, buffer in list(observer.named_buffers(recurse=False)):
        if name in initial:
            setattr(observer, name, torch.full(buffer.shape, initial[name], dtype=buffer.dtype, device=device))


def observer_keys(module: nn.Module) -> list[str]:
    """The state_dict keys of ``module``'s observers' calibration statistics (min/max, histograms): left
    out of checkpoints, which keep the scales and zero points."""
    return [key for key in module.state_dict(keep_vars=True) if ".activation_post_process." in key]


def per_channel(scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``scale`` (one per output channel) shaped to multiply ``weight`` (a linear's or a convolution's)."""
    return scale.reshape(-1, *([1] * (weight.ndim - 1)))
