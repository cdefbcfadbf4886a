"""FLOPs with ``torch.utils.flop_counter``, including the CPU kernel of scaled-dot-product attention.

torch's counter knows the CUDA SDPA kernels but not ``_scaled_dot_product_flash_attention_for_cpu``,
the one transformers' SDPA attention runs on the CPU, so softmax attention would count as free.
This module registers the same formula for it once, on import.
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


def count_flops(run: Callable[[], object]) -> int:
    """Total FLOPs of one call of ``run`` (a multiply-add counts as 2)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()
