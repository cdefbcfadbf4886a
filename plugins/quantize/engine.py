"""Real int8 matrix multiplies for a calibrated ``QuantLinear`` at inference, on the CPU's int8 kernels.

The engine is oneDNN's quantized linear (``torch.ops.onednn.qlinear_prepack`` /
``qlinear_pointwise``, the kernels PyTorch's own x86 int8 lowering uses): uint8 activation codes
times prepacked per-channel int8 weights, accumulated in int32 and written back as float32 with the
bias added. oneDNN picks the instruction set at run time (AVX2, AVX-512, AVX-512 VNNI, AMX). Chosen by
measurement (``benchmarks/pytorch_speed.py``): on a ViT-B/16 linear (1576 x 768 x 3072, 2 threads,
AVX-512 VNNI/AMX) it ran 3.2x fp32, against 2.3x for fbgemm's dynamic ``quantized.linear_dynamic``,
2.1x for fbgemm's static ``quantized.linear`` (which also requantizes its output) and 1.8x for
``torch._int_mm`` plus a float epilogue.

The codes are the fake-quant's own (``nearbyint(x * (1 / scale)) + zero_point``, clamped to the
calibrated range), so the engine computes the same integer products as the simulation, without its
float rounding. Used only where that holds: float32 on the CPU, eval mode, no gradient recorded,
not tracing (exports keep the QDQ graph), and a self-check that the kernels give the exact integer
result for this process's instruction set and activation range (8-bit codes saturate the u8 x s8
instruction on CPUs without VNNI); otherwise the fake-quant simulation runs, with the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch


def available() -> bool:
    return hasattr(torch.ops, "onednn") and hasattr(torch.ops.onednn, "qlinear_pointwise") and \
        hasattr(torch.ops.onednn, "qlinear_prepack") and torch.backends.mkldnn.is_available()


def prepack(weight_int8: torch.Tensor):
    return torch.ops.onednn.qlinear_prepack(weight_int8, None)


def linear(x2d_codes: torch.Tensor, x_scale: float, x_zero_point: int, packed, w_scale: torch.Tensor,
           w_zero_point: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.onednn.qlinear_pointwise(x2d_codes, x_scale, x_zero_point, packed, w_scale, w_zero_point, bias,
                                              1.0, 0, torch.float32, "none", [], "")


@dataclasses.dataclass(frozen=True)
class Int8Linear:
    """One calibrated layer, ready for the kernels: prepacked weights and everything per call derives
    from its scales, computed once."""

    packed: Any
    w_scale: torch.Tensor
    w_zero_point: torch.Tensor
    x_inverse: torch.Tensor  # 1 / scale in float32, as the fake-quant rounds
    x_scale: float
    x_zero_point: int
    quant_min: int
    quant_max: int

    @classmethod
    def build(cls, weight_int8: torch.Tensor, w_scale: torch.Tensor, x_scale: torch.Tensor, x_zero_point: torch.Tensor,
              quant_min: int, quant_max: int) -> Int8Linear:
        scale = x_scale.detach().float().reshape(())
        return cls(prepack(weight_int8), w_scale.detach().float(), torch.zeros(w_scale.shape[0], dtype=torch.long),
                   torch.reciprocal(scale), float(scale), int(x_zero_point.reshape(())), quant_min, quant_max)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The uint8 codes torch's fake-quant rounds ``x`` to."""
        return (x * self.x_inverse).round_().add_(self.x_zero_point).clamp_(self.quant_min, self.quant_max).to(torch.uint8)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        flat = self.codes(x.reshape(-1, x.shape[-1]))
        out = linear(flat, self.x_scale, self.x_zero_point, self.packed, self.w_scale, self.w_zero_point, bias)
        return out.reshape(*x.shape[:-1], out.shape[-1])


@functools.lru_cache(maxsize=4)
def exact_for(quant_max: int) -> bool:
    """Whether the kernels give the exact integer products for codes up to ``quant_max`` here: a
    small problem with extreme codes (where u8 x s8 pairs saturate an int16 sum) against int64."""
    if not available():
        return False
    generator = torch.Generator().manual_seed(0)
    rows, columns, outputs = 16, 64, 32
    x = torch.randint(0, quant_max + 1, (rows, columns), generator=generator, dtype=torch.uint8)
    x[:4] = quant_max  # the worst case: every product of a row at its largest
    w = torch.randint(-128, 128, (outputs, columns), generator=generator, dtype=torch.int8)
    w[:4] = -128
    zero_point, x_scale = 3, 0.5
    w_scale = torch.rand(outputs, generator=generator) + 0.5
    try:
        got = linear(x, x_scale, zero_point, prepack(w), w_scale, torch.zeros(outputs, dtype=torch.long), None)
    except RuntimeError:
        return False
    exact = ((x.long() - zero_point) @ w.long().T).double() * x_scale * w_scale.double()
    return bool(torch.allclose(got.double(), exact, rtol=1e-6, atol=1e-6))
