"""The plugins' training hooks (:class:`surgery.toolkit.training.TrainingHooks`) of every applied step."""

from __future__ import annotations

from torch import nn

from surgery.core.history import get_history
from surgery.core.host import get_host
from surgery.toolkit.training import TrainingHooks


def step_hooks(model: nn.Module) -> list[TrainingHooks]:
    """The training hooks of every applied step whose plugin has some."""
    host = get_host()
    anatomy = host.anatomy_of(model)
    hooks = []
    for step in get_history(model):
        method = host.method(step.plugin)
        if method.training is not None:
            hooks.append(method.training(model, step.config, list(step.targets), anatomy))
    return hooks
