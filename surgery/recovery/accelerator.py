"""The ``accelerate.Accelerator`` recovery runs under: seeded data order, mixed precision, and unwrapping."""

from __future__ import annotations

import os

import torch
from torch import nn

from surgery.errors import SurgeryError
from surgery.recovery.config import RecoveryConfig


def make_accelerator(config: RecoveryConfig):
    """An ``accelerate.Accelerator`` with a seeded data order and the chosen mixed precision.

    accelerate keeps one process-wide state; in a single process a later call with another
    precision starts it afresh (under ``accelerate launch`` the launcher's settings stand).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed

    set_seed(config.seed)
    # Some parameters get no gradient in some steps (bivit's first stage leaves the MLP scales
    # unused), which DDP accepts only when told to look for unused parameters.
    options = {
        "cpu": not has_accelerator(),  # lets torchrun's CPU processes form a gloo group (MULTI_CPU)
        "mixed_precision": resolve_precision(config.mixed_precision),
        "dataloader_config": DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        "kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=True)],
    }
    try:
        return Accelerator(**options)
    except ValueError as error:
        if PartialState().num_processes > 1:
            raise SurgeryError(f"recover: {error}") from error
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**options)


def has_accelerator() -> bool:
    """Whether torch sees a GPU-like device (CUDA/ROCm, Apple MPS, Intel XPU)."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def resolve_precision(choice: str) -> str | None:
    """ "auto": the launcher's choice under ``accelerate launch``, else bf16 on GPUs with it, fp16 on
    other GPUs, and none on CPU (CPU autocast would cost accuracy for little speed on most CPUs)."""
    if choice != "auto":
        return choice
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def unwrap(accelerator, student: nn.Module, model: nn.Module, forward_before) -> None:
    """Undo accelerate's wrapping: DDP, and the mixed-precision ``forward`` it sets on the instance
    (its unwrapping also strips transformers' own decorators, so the instance's forward is put back
    as it was before recovery)."""
    accelerator.unwrap_model(student, keep_fp32_wrapper=False)
    if forward_before is None:
        vars(model).pop("forward", None)
    else:
        model.forward = forward_before
