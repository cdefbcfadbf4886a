"""surgery: rewrite Hugging Face vision transformers with published efficiency methods.

import surgery
surgery.plan(model, ["ggem"])                  # dry run
surgery.apply(model, [("ggem", {"p_init": 3})])  # in place
surgery.recover(model, teacher, train, eval)   # distillation fine-tune (accelerate)
surgery.recover(model, teacher, train, eval, lora={"r": 8})  # ... of LoRA adapters (PEFT), merged
model.save_pretrained("out/")                  # weights + recipe in config.json (atomic)
surgery.save(model, "out/", processor=proc)    # the same, with the image processor in one step
model = surgery.load("out/")                   # strict reload, replays the recipe
surgery.export(model, "out/onnx", to="onnx")   # Optimum export, checked against PyTorch
surgery.card("out/")                           # README.md model card; surgery.push("out/", "me/x")
surgery.search("folder", "digits", runtime="onnx", latency=0.5, max_drop=1.0, output="out/")  # find a recipe
"""

from surgery._version import __version__
from surgery.checkpoint import attach as _attach  # noqa: F401  (keeps every rewritten model's recipe in its config)
from surgery.checkpoint import integration as _integration  # noqa: F401  (registers the recipe with from_pretrained)
from surgery.checkpoint.loading import load
from surgery.checkpoint.saving import save
from surgery.core.anatomy import Anatomy
from surgery.core.apply import Plan, PlannedStep, apply, history, plan, revert
from surgery.core.history import AppliedStep
from surgery.core.hookspecs import hookimpl
from surgery.core.host import get_host
from surgery.core.method import Rewrite, SurgeryMethod
from surgery.core.options import SurgeryConfig
from surgery.core.searchable import SearchSpace
from surgery.errors import (
    ApplyError,
    CheckpointError,
    ConfigError,
    ExportError,
    IncompatibleStepsError,
    PushError,
    RecipeError,
    RevertError,
    SurgeryError,
    UnknownPluginError,
    UnsupportedModelError,
)
from surgery.recovery import LoraOptions, RecoveryConfig, RecoveryResult, recover
from surgery.toolkit.training import TrainingHooks


def export(model, output, to="onnx", **kwargs):
    """Export with Optimum and check against PyTorch; see :func:`surgery.publish.export.export`."""
    from surgery.publish.export import export as _export

    return _export(model, output, to=to, **kwargs)


def card(folder, results=None, **kwargs):
    """Write the model card README.md; see :func:`surgery.publish.cards.card`."""
    from surgery.publish.cards import card as _card

    return _card(folder, results=results, **kwargs)


def push(folder, repo_id, **kwargs):
    """Upload a model folder to the Hub; see :func:`surgery.publish.hub.push`."""
    from surgery.publish.hub import push as _push

    return _push(folder, repo_id, **kwargs)


def search(model, data="digits", **kwargs):
    """Search the installed methods for a recipe within a budget; see :func:`surgery.recipe_search.runner.search`."""
    from surgery.recipe_search.runner import search as _search

    return _search(model, data, **kwargs)


def list_methods() -> list[SurgeryMethod]:
    """Every installed surgery method, sorted by name."""
    return sorted(get_host().methods.values(), key=lambda m: m.name)


__all__ = [
    "Anatomy",
    "AppliedStep",
    "ApplyError",
    "CheckpointError",
    "ConfigError",
    "ExportError",
    "PushError",
    "IncompatibleStepsError",
    "Plan",
    "PlannedStep",
    "LoraOptions",
    "RecipeError",
    "RecoveryConfig",
    "RecoveryResult",
    "RevertError",
    "Rewrite",
    "SearchSpace",
    "SurgeryConfig",
    "SurgeryError",
    "SurgeryMethod",
    "UnknownPluginError",
    "UnsupportedModelError",
    "__version__",
    "apply",
    "card",
    "export",
    "get_host",
    "history",
    "hookimpl",
    "list_methods",
    "load",
    "plan",
    "push",
    "recover",
    "revert",
    "save",
    "search",
    "TrainingHooks",
]
