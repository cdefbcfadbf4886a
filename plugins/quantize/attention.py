"""int8 attention matmuls: the inputs of q k^T and P v on integer grids, as NNCF's transformer preset
quantizes them.

``q``, ``k`` and ``v`` get one symmetric int8 scale each per block (observed on calibration data, like
the linears' inputs; codes in [-64, 63] with ``attention_bits=7``, the default, so no pair of products
saturates the int16 sums of CPUs without VNNI; exported as a clip to that range in front of ONNX's
[-128, 127] QuantizeLinear, which only allows the full range); the softmax probabilities ``P`` take the
fixed grid ``i / (2**bits - 1)`` over [0, 1] (``bits`` is the quantizer's ``activation_bits``: 7 by
default, for the reason the linears use it), so they need no calibration. Exported to ONNX, each becomes
a QuantizeLinear/DequantizeLinear pair in front of the MatMul, which ONNX Runtime and OpenVINO run in
int8. In PyTorch the products of the integer codes are summed in float: exact (a q k^T entry sums
``head_dim`` products of at most 2**14, far below float32's 2**24), so PyTorch, ONNX Runtime and
OpenVINO compute the same attention; PyTorch gains no speed from it (no int8 batched matmul is served by
its CPU kernels).

:class:`QuantAttention` is mixed into the host's softmax attention core (a class swap; the host's
parameters stay in place) and computes from the core's parts, so Swin's windows keep their relative
position bias and shifted-window mask, and BEiT its bias; token reduction's attention
(:mod:`surgery.toolkit.reducing`) finds the quantizers on the core (``surgery_attention_quant``) and
adds proportional attention's log(size) after the int8 matmul.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.quantization import FakeQuantize

from surgery.core.parts import AttentionParts
from surgery.plugins.quantize.observers import OBSERVERS, observer_keys, reset_observer
from surgery.toolkit.attention import softmax_attention
from surgery.toolkit.inference import inference_only, remembered

INPUTS = ("query", "key", "value")


def symmetric_fake_quant(observer: str, bits: int = 8) -> FakeQuantize:
    """Per-tensor symmetric int8 over [-2**(bits-1), 2**(bits-1) - 1] (zero point 0)."""
    return FakeQuantize(
        observer=OBSERVERS[observer],
        quant_min=-(2 ** (bits - 1)),
        quant_max=2 ** (bits - 1) - 1,
        dtype=torch.qint8,
        qscheme=torch.per_tensor_symmetric,
        reduce_range=False,
    )


class AttentionQuant(nn.Module):
    """The four quantizers of one block's attention matmuls (see the module docstring)."""

    def __init__(self, observer: str = "histogram", bits: int = 7, qkv_bits: int = 8) -> None:
        super().__init__()
        self.bits, self.qkv_bits = bits, qkv_bits
        for name in INPUTS:
            self.add_module(name, symmetric_fake_quant(observer, qkv_bits))
        self.register_buffer("probs_scale", torch.tensor([1.0 / (2**bits - 1)]))
        self.observe(True)  # observe only (values pass unchanged) until calibrated, as the linears' inputs

    def observe(self, on: bool) -> None:
        """Observe the inputs (calibration: values pass through unchanged) or quantize with fixed scales."""
        for name in INPUTS:
            quant = self.get_submodule(name)
            quant.enable_observer(on)
            quant.enable_fake_quant(not on)
        self.state()

    def state(self) -> str | None:
        """ "calibrated" or "observing" from the flags (while compiling: the state last read); None on meta."""

        def read() -> str | None:
            flag = self.get_submodule(INPUTS[0]).observer_enabled
            return None if flag.is_meta else ("observing" if bool(flag[0]) else "calibrated")

        return remembered(self, "state", read)

    def __call__(self, role: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` on its integer grid (``role``: "query", "key", "value" or "probs")."""
        if role == "probs":
            scale, low, high = self.probs_scale, 0, 2**self.bits - 1
        else:
            quant = self.get_submodule(role)
            if self.state() == "observing":
                return quant(x)
            scale, low, high = quant.scale, quant.quant_min, quant.quant_max
        if inference_only(self, x):  # torch's own formula, x * (1 / scale) rounded half to even, in four
            # vectorised passes: a quarter of the fake-quant kernel's time here, the same values (tested)
            return torch.clamp(torch.round(x * (1.0 / scale)), low, high) * scale
        zero = torch.zeros(1, dtype=torch.int32, device=x.device)
        if low < 0 and (low, high) != (-128, 127):  # ONNX's signed Q/DQ takes only [-128, 127]: clip first (the same
            x = torch.clamp(x, low * scale, high * scale)  # codes: rounding is monotone), then the full range
            low, high = -128, 127
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, low, high)  # exported as Q/DQ; gradients

    def surgery_pack(self, prefix: str, state: dict[str, torch.Tensor]) -> None:
        for key in self.surgery_packed_away(prefix):  # calibration-only statistics; scales stay
            state.pop(key, None)

    def surgery_packed_away(self, prefix: str) -> list[str]:
        return [prefix + key for key in observer_keys(self)]

    def surgery_unpack(self) -> None:
        for name in INPUTS:
            reset_observer(self.get_submodule(name).activation_post_process, self.probs_scale.device)
        self.state()

    def extra_repr(self) -> str:
        return f"q, k, v: {self.qkv_bits}-bit symmetric per tensor; P: {self.bits}-bit grid over [0, 1]"


class QuantAttention:
    """The host's softmax attention with int8 matmul inputs (mixed into the host's core)."""

    surgery_attention_quant: AttentionQuant
    quant_parts: AttentionParts

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        parts = self.quant_parts
        batch, tokens, _ = hidden_states.shape
        q, k, v = parts.qkv(hidden_states)
        bias = None
        for extra in (parts.position_bias(tokens, args, kwargs), parts.host_bias(args, kwargs)):
            if extra is not None:
                bias = extra if bias is None else bias + extra
        windows = parts.window_mask(args, kwargs)
        if windows is not None:  # (windows, N, N), per image: repeat over the batch's images, per head
            mask = windows[None, :, None].expand(batch // windows.shape[0], -1, parts.heads, -1, -1)
            mask = mask.reshape(batch, parts.heads, tokens, tokens)
            bias = mask if bias is None else bias + mask
        dropout = parts.dropout if self.training else 0.0
        context = softmax_attention(q, k, v, parts.scale, bias, dropout, self.surgery_attention_quant)
        return parts.host_output(context.transpose(1, 2).reshape(batch, tokens, parts.width))

    def extra_repr(self) -> str:
        return "int8 q k^T and P v"
