"""The CPU int8 kernels a calibrated ``QuantLinear`` can run on at inference, and the choice among
them, made by measurement on this CPU.

Both take the layer's own activation codes and per-channel int8 weights, accumulate in int32 and
return float32, so each computes the same integer products as the fake-quant simulation:

- ``onednn``: oneDNN's quantized linear (``torch.ops.onednn.qlinear_prepack`` / ``qlinear_pointwise``,
  what PyTorch's own x86 int8 lowering uses), fed the uint8 codes.
- ``fbgemm``: fbgemm's static linear with float output
  (``quantized.linear_with_input_q_dq_qweight_dq_output_fp32``, the kernels behind
  ``quantize_dynamic``), fed the activations already on the codes' grid (``(code - zero_point) *
  scale``, which it quantizes back to the same codes exactly). Its prepack takes a quantized tensor,
  an API torch 2.13 deprecates; where a torch lacks it, the self-check leaves this kernel out.

Which is faster depends on the CPU: on AVX-512 VNNI / AMX oneDNN's kernels won our measurements; on
one AVX2-only AMD EPYC an earlier engine's int8 barely beat fp32 while ``quantize_dynamic`` (fbgemm) ran
1.49x (issue 32); on another (Zen 3, AVX2 without VNNI) oneDNN's won each ViT-B shape, by 1-20 % over
fbgemm's static linear, and the model ran ahead of ``quantize_dynamic`` (``benchmarks/results/speed_table_avx2.md``).
The ranking also depends on the layer's shape. So the first int8 layer built in a process runs a
self-check of every kernel (exact integer results for this CPU's instruction set and the activation
range: 8-bit codes saturate the u8 x s8 instruction on CPUs without VNNI), and each layer shape is
timed once on the exact kernels when its first layer is built (apply or load, a fraction of a second
for a ViT-B); the fastest serves every layer of that shape (oneDNN's unless another is 5 % faster:
a few milliseconds of timing are noisy). ``SURGERY_INT8_KERNEL=onednn|fbgemm`` overrides the timing (an inexact or missing
kernel is refused with the reason). :func:`choice` says which runs and why.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from surgery.errors import SurgeryError, did_you_mean

logger = logging.getLogger(__name__)
ENVIRONMENT = "SURGERY_INT8_KERNEL"


@dataclasses.dataclass(frozen=True)
class Kernel:
    """``prepack(w_int8, w_scale)`` once per layer; ``run(x2d, layer, packed, bias)`` per call, where
    ``layer`` carries the activation scale, zero point, range and ``1 / scale`` (an ``Int8Linear``)."""

    name: str
    available: Callable[[], bool]
    prepack: Callable[[torch.Tensor, torch.Tensor], Any]
    run: Callable[[torch.Tensor, Any, Any, torch.Tensor | None], torch.Tensor]


def _onednn_available() -> bool:
    return (
        hasattr(torch.ops, "onednn")
        and hasattr(torch.ops.onednn, "qlinear_pointwise")
        and hasattr(torch.ops.onednn, "qlinear_prepack")
        and torch.backends.mkldnn.is_available()
    )


def _onednn_run(x: torch.Tensor, layer: Any, packed: Any, bias: torch.Tensor | None) -> torch.Tensor:
    codes = (x * layer.x_inverse).round_().add_(layer.x_zero_point).clamp_(layer.quant_min, layer.quant_max)
    return torch.ops.onednn.qlinear_pointwise(
        codes.to(torch.uint8),
        layer.x_scale,
        layer.x_zero_point,
        packed,
        layer.w_scale,
        layer.w_zero_point,
        bias,
        1.0,
        0,
        torch.float32,
        "none",
        [],
        "",
    )


def _fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(
        torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32"
    )


def _fbgemm_prepack(weight_int8: torch.Tensor, w_scale: torch.Tensor) -> Any:
    zeros = torch.zeros(w_scale.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch 2.13 deprecates quantized tensors; fbgemm's prepack still takes one
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
        weight = torch._make_per_channel_quantized_tensor(weight_int8, w_scale.double(), zeros, 0)
    return torch.ops.quantized.linear_prepack(weight, None)


def _fbgemm_run(x: torch.Tensor, layer: Any, packed: Any, bias: torch.Tensor | None) -> torch.Tensor:
    zero = layer.x_zero_point  # the codes' grid, as floats: fbgemm quantizes them back to the same codes
    grid = (x * layer.x_inverse).round_().clamp_(layer.quant_min - zero, layer.quant_max - zero).mul_(layer.x_scale)
    out = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(grid, layer.x_scale, zero, packed)
    return out if bias is None else out.add_(bias)


KERNELS = {
    "onednn": Kernel("onednn", _onednn_available, lambda w, s: torch.ops.onednn.qlinear_prepack(w, None), _onednn_run),
    "fbgemm": Kernel("fbgemm", _fbgemm_available, _fbgemm_prepack, _fbgemm_run),
}


@dataclasses.dataclass(frozen=True)
class _Problem:
    """What a kernel's ``run`` reads from a layer, for the self-check and the timing."""

    x_scale: float
    x_zero_point: int
    quant_min: int
    quant_max: int
    w_scale: torch.Tensor
    w_zero_point: torch.Tensor

    @property
    def x_inverse(self) -> torch.Tensor:
        return torch.reciprocal(torch.tensor(self.x_scale, dtype=torch.float32))


def exact(kernel: Kernel, quant_max: int) -> bool:
    """Whether ``kernel`` gives the exact integer products for codes up to ``quant_max`` here: a small
    problem with extreme codes (where u8 x s8 pairs saturate an int16 sum) against int64."""
    if not kernel.available():
        return False
    with torch.device("cpu"):  # on the CPU whatever the caller's default device (transformers 5 builds on meta)
        return _exact(kernel, quant_max)


def _exact(kernel: Kernel, quant_max: int) -> bool:
    generator = torch.Generator().manual_seed(0)
    rows, columns, outputs = 16, 64, 32
    codes = torch.randint(0, quant_max + 1, (rows, columns), generator=generator)
    codes[:4] = quant_max  # the worst case: every product of a row at its largest
    w = torch.randint(-128, 128, (outputs, columns), generator=generator, dtype=torch.int8)
    w[:4] = -128
    problem = _Problem(
        0.5, 3, 0, quant_max, torch.rand(outputs, generator=generator) + 0.5, torch.zeros(outputs, dtype=torch.long)
    )
    x = (codes - problem.x_zero_point).float() * problem.x_scale  # exactly on the grid
    try:
        got = kernel.run(x, problem, kernel.prepack(w, problem.w_scale), None)
    except (RuntimeError, NotImplementedError, AttributeError):  # AttributeError: a torch without the API
        return False
    expected = ((codes - problem.x_zero_point) @ w.long().T).double() * problem.x_scale * problem.w_scale.double()
    return bool(torch.allclose(got.double(), expected, rtol=1e-6, atol=1e-6))


ROWS = 1576  # tokens timed: a ViT-B/16 batch of 8 at 224 px
MARGIN = 0.05  # another kernel replaces the first exact one (oneDNN's) only when this much faster


def _milliseconds(kernel: Kernel, quant_max: int, inputs: int, outputs: int, repeats: int = 7) -> float:
    """Median time of ``kernel`` on a ``ROWS`` x ``inputs`` -> ``outputs`` linear, after two warm-up calls."""
    with torch.device("cpu"):  # as in :func:`exact`
        return _timed(kernel, quant_max, inputs, outputs, repeats)


def _timed(kernel: Kernel, quant_max: int, inputs: int, outputs: int, repeats: int) -> float:
    rows = ROWS
    generator = torch.Generator().manual_seed(0)
    problem = _Problem(
        0.05,
        quant_max // 2,
        0,
        quant_max,
        torch.rand(outputs, generator=generator) * 0.01 + 0.001,
        torch.zeros(outputs, dtype=torch.long),
    )
    x = torch.randn(rows, inputs, generator=generator)
    packed = kernel.prepack(
        torch.randint(-128, 128, (outputs, inputs), generator=generator, dtype=torch.int8), problem.w_scale
    )
    bias = torch.zeros(outputs)
    with torch.inference_mode():
        kernel.run(x, problem, packed, bias)
        kernel.run(x, problem, packed, bias)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            kernel.run(x, problem, packed, bias)
            times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2] * 1000


@functools.lru_cache(maxsize=8)
def exact_here(name: str, quant_max: int) -> bool:
    """:func:`exact` for the kernel called ``name``, once per process."""
    return exact(KERNELS[name], quant_max)


def named(name: str, quant_max: int, source: str = "int8_kernel") -> Kernel:
    """The kernel called ``name``, refused with the reason unless it is exact here."""
    if name not in KERNELS:
        raise SurgeryError(
            f"quantize: {source} got {name!r}; allowed: {', '.join(KERNELS)}{did_you_mean(name, list(KERNELS))}"
        )
    if not exact_here(name, quant_max):
        usable = [k for k in KERNELS if exact_here(k, quant_max)]
        raise SurgeryError(
            f"quantize: {source} got {name!r}, but that kernel is missing from this torch or not exact for "
            f"{quant_max + 1}-level activation codes on this CPU; exact here: {', '.join(usable) or 'none'}"
        )
    return KERNELS[name]


@functools.lru_cache(maxsize=64)
def choice(quant_max: int, inputs: int = 768, outputs: int = 768) -> tuple[Kernel | None, str]:
    """The kernel int8 layers of shape ``inputs`` -> ``outputs`` with codes up to ``quant_max`` run on
    in this process, and why (None when none is exact here: the layers then run the fake-quant
    simulation). Which kernel is faster depends on the shape as well as the CPU (on one AVX-512 VNNI
    CPU oneDNN's won 768 -> 3072 and fbgemm's 768 -> 768), so each shape is timed once."""
    forced = os.environ.get(ENVIRONMENT)
    if forced:
        return named(forced, quant_max, ENVIRONMENT), f"set by {ENVIRONMENT}"
    candidates = [kernel for kernel in KERNELS.values() if exact_here(kernel.name, quant_max)]
    if len(candidates) <= 1:
        return (
            candidates[0] if candidates else None
        ), "the only exact kernel here" if candidates else "no exact kernel here"
    times = {kernel.name: _milliseconds(kernel, quant_max, inputs, outputs) for kernel in candidates}
    first = candidates[0]
    best = min(candidates, key=lambda kernel: times[kernel.name])
    best = best if times[best.name] < (1 - MARGIN) * times[first.name] else first
    reason = (
        f"fastest here on a {ROWS} x {inputs} -> {outputs} linear (another kernel than {first.name} only when "
        f"{MARGIN:.0%} faster): " + ", ".join(f"{n} {t:.1f} ms" for n, t in times.items())
    )
    logger.info("quantize: int8 %d -> %d layers run on %s (%s)", inputs, outputs, best.name, reason)
    return best, reason


def forget() -> None:
    """Drop the self-checks and choices made in this process (they are made again on next use)."""
    exact_here.cache_clear()
    choice.cache_clear()
