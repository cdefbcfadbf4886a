"""What trains and how fast: new vs original parameters, AdamW groups, the two-stage learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from surgery.recovery.config import RecoveryConfig
from surgery.recovery.lora import canonical, is_adapter_parameter


def new_parameter_names(model: nn.Module, teacher: nn.Module) -> list[str]:
    """Parameters of the rewritten model that the original does not have (by name and shape), named
    as in ``model``. PEFT's wrapping is seen through on both sides, and adapters (``lora_*``) are not
    new parameters: they change the original weights and train with them."""
    original = {canonical(name): p.shape for name, p in teacher.named_parameters()}
    return [
        name
        for name, p in model.named_parameters()
        if not is_adapter_parameter(name) and original.get(canonical(name)) != p.shape
    ]


def parameter_groups(model: nn.Module, new: set[str], config: RecoveryConfig) -> list[dict[str, Any]]:
    """Four AdamW groups: new / original parameters, each with and without weight decay."""
    groups = []
    for is_new in (True, False):
        for decay in (True, False):
            params = [
                p
                for n, p in model.named_parameters()
                if (n in new) == is_new and (p.ndim > 1) == decay and _trainable(p)
            ]
            groups.append({"params": params, "weight_decay": config.weight_decay if decay else 0.0, "new": is_new})
    return groups


def _trainable(parameter: torch.Tensor) -> bool:
    return parameter.requires_grad and parameter.is_floating_point()


def optimizer_and_schedule(model: nn.Module, new: set[str], config: RecoveryConfig, steps_per_epoch: int):
    """AdamW over the parameter groups, and the per-group learning-rate schedule."""
    groups = [dict(g, lr=config.lr) for g in parameter_groups(model, new, config) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    new_factor, original_factor = lr_factors(config, steps_per_epoch)
    factors = [new_factor if g["new"] else original_factor for g in optimizer.param_groups]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def lr_factors(config: RecoveryConfig, steps_per_epoch: int):
    """Learning-rate multipliers per group kind: new parameters run at ``warmup_lr / lr`` in the
    warm-up stage, original ones at 0 (AdamW scales its decay by the rate too, so they stay exactly
    as they are; freezing by rate rather than ``requires_grad`` keeps DDP's gradient hooks valid);
    both then follow a linear warm-up and a cosine decay."""
    warm_steps = config.warmup_epochs * steps_per_epoch
    main_steps = max(1, config.epochs * steps_per_epoch)
    ramp = max(1, int(config.schedule_warmup * main_steps))

    def main(step: int) -> float:
        step = step - warm_steps
        if step < ramp:
            return (step + 1) / ramp
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - ramp) / max(1, main_steps - ramp))))

    def new(step: int) -> float:
        return config.warmup_lr / config.lr if step < warm_steps else main(step)

    def original(step: int) -> float:
        return 0.0 if step < warm_steps else main(step)

    return new, original
