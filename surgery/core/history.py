"""The steps applied to a model: kept on the model in memory and mirrored into its config's recipe."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from surgery.core.options import SurgeryConfig

HISTORY_ATTR = "_surgery_history"
_LISTENERS: list[Callable[[nn.Module, list["AppliedStep"]], None]] = []


@dataclasses.dataclass
class AppliedStep:
    """One applied step. Everything but ``config`` and ``undo`` is written to the recipe."""

    plugin: str
    options: dict[str, Any]
    plugin_version: str
    package: str
    targets: list[str]
    versions: dict[str, str]
    base_model: str | None = None
    config: SurgeryConfig | None = dataclasses.field(default=None, repr=False, compare=False)
    undo: Any = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        source = {"base_model": self.base_model} if self.base_model else {}
        return {
            **source,
            "plugin": self.plugin,
            "plugin_version": self.plugin_version,
            "package": self.package,
            "options": dict(self.options),
            "targets": list(self.targets),
            "versions": dict(self.versions),
        }


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def portable_source(name: str | None) -> str | None:
    """Where a model came from, as a model folder may record it: a Hub id as it is, a local folder by
    its name only (never a path: a pushed folder must not carry the pusher's directories)."""
    if not name:
        return None
    text = str(name)
    if HUB_ID.fullmatch(text) and not Path(text).exists():
        return text
    return Path(text.rstrip("/\\")).name or None


def get_history(model: nn.Module) -> list[AppliedStep]:
    """The steps applied to ``model``, oldest first (a copy of the list)."""
    return list(getattr(model, HISTORY_ATTR, []))


def set_history(model: nn.Module, steps: list[AppliedStep]) -> None:
    """Record ``steps`` on the model and tell every listener (the checkpoint layer mirrors them into
    ``model.config``'s recipe and gives the model its quantizer and atomic save)."""
    object.__setattr__(model, HISTORY_ATTR, list(steps))
    for listener in _LISTENERS:
        listener(model, list(steps))


def on_history_change(
    listener: Callable[[nn.Module, list[AppliedStep]], None],
) -> Callable[[nn.Module, list[AppliedStep]], None]:
    """Register ``listener(model, steps)``, called after every change of a model's history (a decorator).

    Core does not know about checkpoints; the layer above registers here (dependency inversion
    instead of an upward import)."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)
    return listener
