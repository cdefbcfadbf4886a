"""FLOPs with ``torch.utils.flop_counter``, including the CPU kernel of scaled-dot-product attention
and the int8 linears.

torch's counter knows the CUDA SDPA kernels but not ``_scaled_dot_product_flash_attention_for_cpu``,
the one transformers' SDPA attention runs on the CPU, so softmax attention would count as free.
This module registers the same formula for it once, on import, and the matmul formula for the int8
linears (``onednn.qlinear_pointwise`` and fbgemm's ``quantized.linear_with_input_q_dq_qweight_dq_output_fp32``,
which the counter does not know either, so int8 linears counted as free).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

_CPU_SDPA = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)

if _CPU_SDPA is not None:
    try:

        @register_flop_formula(_CPU_SDPA)
        def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)

    except ValueError:  # already registered (module reloaded, or a newer torch knows it)
        pass


# The int8 linears (the quantize plugin's inference kernels: oneDNN's and fbgemm's): a matmul of (M, K)
# codes by the prepacked (K, N) weight, counted as the float matmul it replaces (int8 changes precision,
# not FLOPs)
def _qlinear_flop(x_shape, *args, out_shape=None, **kwargs) -> int:
    rows = 1
    for dim in x_shape[:-1]:
        rows *= dim
    return 2 * rows * x_shape[-1] * out_shape[-1]


for _namespace, _name in (
    ("onednn", "qlinear_pointwise"),
    ("quantized", "linear_with_input_q_dq_qweight_dq_output_fp32"),
):
    try:
        register_flop_formula(getattr(getattr(torch.ops, _namespace), _name))(_qlinear_flop)
    except (AttributeError, RuntimeError, ValueError):  # not in this torch, or already registered
        pass


def count_flops(run: Callable[[], object]) -> int:
    """Total FLOPs of one call of ``run`` (a multiply-add counts as 2)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def model_flops(model: torch.nn.Module, pixel_values: torch.Tensor) -> int:
    """FLOPs of one eval-mode forward of ``model`` on ``pixel_values``.

    Parameters are frozen while counting: the counter's module tracker hooks the autograd graph of
    every module input that requires grad, which fails when a parameter is itself a module's input
    (the int8 weight fake-quant) under inference mode.
    """
    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        for parameter in frozen:
            parameter.requires_grad_(False)
        with torch.no_grad():  # not inference_mode: see surgery.evaluation.accuracy
            return count_flops(lambda: model(pixel_values=pixel_values))
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
