"""surgery: rewrite Hugging Face vision transformers with published efficiency methods.

    import surgery
    surgery.plan(model, ["ggem"])                  # dry run
    surgery.apply(model, [("ggem", {"p_init": 3})])  # in place
    model.save_pretrained("out/")                  # weights + recipe in config.json
    model = surgery.load("out/")                   # strict reload, replays the recipe
"""

from surgery import integration as _integration  # noqa: F401  (registers the recipe with from_pretrained)
from surgery._version import __version__
from surgery.anatomy import Anatomy
from surgery.apply import Plan, PlannedStep, apply, history, plan, revert
from surgery.config import SurgeryConfig
from surgery.errors import (
    ApplyError,
    ConfigError,
    IncompatibleStepsError,
    RecipeError,
    RevertError,
    SurgeryError,
    UnknownPluginError,
    UnsupportedModelError,
)
from surgery.history import AppliedStep
from surgery.hookspecs import hookimpl
from surgery.loading import load
from surgery.manager import get_host
from surgery.method import Rewrite, SurgeryMethod


def list_methods() -> list[SurgeryMethod]:
    """Every installed surgery method, sorted by name."""
    return sorted(get_host().methods.values(), key=lambda m: m.name)


__all__ = [
    "Anatomy", "AppliedStep", "ApplyError", "ConfigError", "IncompatibleStepsError", "Plan", "PlannedStep",
    "RecipeError", "RevertError", "Rewrite", "SurgeryConfig", "SurgeryError", "SurgeryMethod",
    "UnknownPluginError", "UnsupportedModelError", "__version__", "apply", "get_host", "history", "hookimpl",
    "list_methods", "load", "plan", "revert",
]
