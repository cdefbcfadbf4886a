"""An int8 patch embedding: the convolution that cuts the image into patches, with int8 weights and a
calibrated uint8 input, as NNCF quantizes it.

Everything but the operation is :class:`.layers.Int8Layer`'s (weights per output channel, calibration,
checkpoints, the traced form). Exported to ONNX it is a QuantizeLinear/DequantizeLinear pair on the
pixels and on the weights in front of the Conv, which ONNX Runtime and OpenVINO run as an int8
convolution. In PyTorch at inference, a patch convolution (kernel = stride, no padding, no dilation,
one group: every patch embedding of the supported families) is a linear over the flattened patches,
so it runs on the same int8 kernels as the linears (:mod:`.engine`); any other convolution runs the
fake-quant simulation, with the same numbers.
"""

from __future__ import annotations

import torch
from torch import nn

from surgery.plugins.quantize import engine
from surgery.plugins.quantize.layers import Int8Layer


class QuantConv2d(Int8Layer, nn.Conv2d):
    """A Conv2d whose weight (and, unless weight-only, input) is quantized to int8."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        activations: str = "int8",
        observer: str = "histogram",
        device=None,
        dtype=None,
        activation_bits: int = 8,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self.setup_quant(activations, observer, activation_bits, device)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activations: str, observer: str, activation_bits: int = 8) -> QuantConv2d:
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            activations,
            observer,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            activation_bits=activation_bits,
        )
        new.take_weights(conv)
        return new.train(conv.training)

    @property
    def patchwise(self) -> bool:
        """Whether the convolution is a linear over non-overlapping patches."""
        return (
            tuple(self.kernel_size) == tuple(self.stride)
            and self.padding in ("valid", (0, 0))
            and tuple(self.dilation) == (1, 1)
            and self.groups == 1
        )

    def float_op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, weight, self.bias)

    def int8_op(self, layer: engine.Int8Linear, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        if not self.patchwise or x.ndim != 4:
            return None
        batch, channels, height, width = x.shape
        (kh, kw), rows, columns = self.kernel_size, height // self.kernel_size[0], width // self.kernel_size[1]
        # (B, C, h, kh, w, kw) -> (B h w, C kh kw): the weight's flattening order (out, C, kh, kw)
        patches = x[:, :, : rows * kh, : columns * kw].reshape(batch, channels, rows, kh, columns, kw)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch * rows * columns, channels * kh * kw)
        out = layer(patches, bias)  # (B h w, out): returned as (B, out, h, w) without a copy
        return out.reshape(batch, rows, columns, -1).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.quant_repr()}"
