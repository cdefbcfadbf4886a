"""Real int8 matrix multiplies for a calibrated ``QuantLinear`` at inference, on the CPU's int8 kernels.

The kernels (oneDNN's and fbgemm's quantized linears, :mod:`.kernels`) take uint8 activation codes
times prepacked per-channel int8 weights, accumulate in int32 and write float32 with the bias added.
Which one runs is chosen per process and layer shape by measurement on this CPU
(:func:`.kernels.choice`; ``benchmarks/int8_kernels.py`` shows the choice per emulated instruction set,
``benchmarks/results/speed_table_avx2.md`` the model on a real AVX2-only CPU: oneDNN's in both). Measured
on a ViT-B/16 linear (1576 x 768 x 3072, 2 threads, AVX-512 VNNI/AMX), oneDNN's ran 3.2x fp32, against
2.3x for fbgemm's dynamic ``quantized.linear_dynamic``, 2.1x for fbgemm's static ``quantized.linear``
(which also requantizes its output) and 1.8x for ``torch._int_mm`` plus a float epilogue.

The codes are the fake-quant's own (``nearbyint(x * (1 / scale)) + zero_point``, clamped to the
calibrated range), so the engine computes the same integer products as the simulation, without its
float rounding. Used only where that holds: float32 on the CPU, eval mode, no gradient recorded,
not tracing (exports keep the QDQ graph; ``torch.compile`` traces :func:`decomposed_linear`), and a
self-check that the chosen kernel gives the exact integer result for this process's instruction set
and activation range (8-bit codes saturate the u8 x s8 instruction on CPUs without VNNI); otherwise
the fake-quant simulation runs, with the same numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from surgery.plugins.quantize.kernels import KERNELS, Kernel, choice, exact_here, named


def available() -> bool:
    """Whether this torch has any of the int8 kernels."""
    return any(kernel.available() for kernel in KERNELS.values())


def exact_for(quant_max: int) -> bool:
    """Whether an int8 kernel gives the exact integer products for codes up to ``quant_max`` on this
    CPU (the first call in a process self-checks the kernels)."""
    return any(exact_here(name, quant_max) for name in KERNELS)


def choose(quant_max: int, inputs: int, outputs: int) -> Kernel | None:
    """The kernel ``inputs`` -> ``outputs`` layers run on here (self-checked and timed once per process
    and shape: :func:`.kernels.choice`), or None where none is exact."""
    return choice(quant_max, inputs, outputs)[0]


@dataclasses.dataclass(frozen=True)
class Int8Linear:
    """One calibrated layer, ready for the chosen kernel: prepacked weights and everything per call
    derives from its scales, computed once."""

    kernel: Kernel
    packed: Any
    w_scale: torch.Tensor
    w_zero_point: torch.Tensor
    x_inverse: torch.Tensor  # 1 / scale in float32, as the fake-quant rounds
    x_scale: float
    x_zero_point: int
    quant_min: int
    quant_max: int

    @classmethod
    def build(
        cls,
        weight_int8: torch.Tensor,
        w_scale: torch.Tensor,
        x_scale: torch.Tensor,
        x_zero_point: torch.Tensor,
        quant_min: int,
        quant_max: int,
        kernel: str | None = None,
    ) -> Int8Linear:
        """``kernel``: a name from :data:`.kernels.KERNELS` (refused unless exact here), or None for the
        process's choice."""
        outputs, inputs = weight_int8.shape
        kernel = choice(quant_max, inputs, outputs)[0] if kernel is None else named(kernel, quant_max)
        scale = x_scale.detach().float().reshape(())
        w_scale = w_scale.detach().float()
        return cls(
            kernel,
            kernel.prepack(weight_int8, w_scale),
            w_scale,
            torch.zeros(w_scale.shape[0], dtype=torch.long),
            torch.reciprocal(scale),
            float(scale),
            int(x_zero_point.reshape(())),
            quant_min,
            quant_max,
        )

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out = self.kernel.run(x.reshape(-1, x.shape[-1]), self, self.packed, bias)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def decomposed_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero_point: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """A W8A8 linear as PyTorch 2's quantization writes it for ``torch.compile`` / ``torch.export``
    (``quantized_decomposed`` quantize and dequantize ops around a float linear): the same codes as
    the fake-quants; Inductor, with ``freezing`` on, folds the weight's codes and lowers the pattern
    to oneDNN's int8 linear."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the quantized_decomposed ops)

    ops = torch.ops.quantized_decomposed
    codes = ops.quantize_per_tensor.tensor(x, x_scale, x_zero_point, quant_min, quant_max, torch.uint8)
    x = ops.dequantize_per_tensor.tensor(codes, x_scale, x_zero_point, quant_min, quant_max, torch.uint8)
    w_codes = ops.quantize_per_channel(weight, w_scale, w_zero_point, 0, -128, 127, torch.int8)
    w = ops.dequantize_per_channel(w_codes, w_scale, w_zero_point, 0, -128, 127, torch.int8)
    return torch.nn.functional.linear(x, w, bias)
