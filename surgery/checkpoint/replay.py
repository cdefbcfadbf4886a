"""Replay a saved recipe: rebuild the structure its steps describe (no data, no calibration, any device).

Runs inside ``from_pretrained`` (the quantizer's before-weight-loading hook) and ``surgery.load``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from surgery.core.apply import overlaps, raise_incompatible, record, validate
from surgery.core.history import set_history
from surgery.core.host import Host, get_host
from surgery.core.specs import PlannedStep


def replay(model: nn.Module, step_dicts: Iterable[dict[str, Any]], host: Host | None = None) -> None:
    """Rebuild the structure a saved recipe describes (no data, no calibration; any device)."""
    host = host or get_host()
    step_dicts = list(step_dicts)
    planned = []
    for data in step_dicts:
        method = host.method(data["plugin"])
        planned.append(PlannedStep(method, method.config_class.from_recipe(data.get("options", {}))))
    anatomy = validate(model, planned, host)  # the same checks as apply: architecture, roles, conflicts, vetoes
    history = []
    for step, data in zip(planned, step_dicts):
        rewrite = step.method.apply(model, step.config, anatomy)
        # what each step claims, against what the earlier steps claimed (as apply's rehearsal does)
        raise_incompatible(
            overlaps(
                model,
                anatomy,
                [(step.method.name, list(rewrite.targets))],
                host,
                applied=[(h.plugin, h.targets) for h in history],
            )
        )
        history.append(record(step, rewrite, data.get("versions"), data.get("base_model")))
    set_history(model, history)
