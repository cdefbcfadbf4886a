"""Errors that teach: each names what was wrong, what is allowed, and the nearest valid name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def nearest(name: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` or an empty string."""
    match = nearest(name, choices)
    return f" Did you mean '{match}'?" if match else ""


def clean_text(value: object, limit: int = 100) -> str:
    """Text read from a checkpoint, fit to quote in one line: control characters (newlines that
    could forge output lines) become spaces, and it is cut to ``limit`` characters."""
    text = "".join(" " if not ch.isprintable() else ch for ch in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SurgeryError(Exception):
    """Base class for every error surgery raises on bad input; the CLI prints its message alone."""


class UnknownPluginError(SurgeryError, KeyError):
    """A spec or recipe names a plugin that is not installed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ConfigError(SurgeryError, ValueError):
    """A plugin option is unknown or has a value outside what the plugin allows."""


class UnsupportedModelError(SurgeryError, TypeError):
    """The model's architecture is not one the plugin (or surgery) knows."""


class IncompatibleStepsError(SurgeryError, ValueError):
    """Plugins vetoed a combination of steps; the message lists every reason."""


class RecipeError(SurgeryError, ValueError):
    """A saved recipe cannot be replayed (format, missing plugin, weights that do not fit)."""


class RevertError(SurgeryError, RuntimeError):
    """A step cannot be undone."""


class ApplyError(SurgeryError, RuntimeError):
    """A plugin failed while rewriting the model; the model was restored to its state before apply."""


class ExportError(SurgeryError):
    """The model cannot be exported, or the export does not match PyTorch."""


class PushError(SurgeryError):
    """The upload could not be done (no token, no network, repository exists ...)."""


class CheckpointError(SurgeryError):
    """A recovery checkpoint is not one surgery wrote, or was changed or cut short since."""
