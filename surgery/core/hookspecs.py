"""Every hook a surgery plugin may implement. All names carry the ``surgery_`` prefix.

A plugin is a module (or object) with functions marked ``@surgery.hookimpl``, published through the
entry-point group ``surgery``::

    [project.entry-points.surgery]
    my_method = "my_package.surgery_plugin"

Hooks declare; objects act. ``surgery_register_methods`` hands over :class:`SurgeryMethod`
objects, which the host dispatches by name. The other hooks are moments where every plugin may have
a say.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from surgery.core.anatomy import Anatomy
    from surgery.core.history import AppliedStep
    from surgery.core.method import SurgeryMethod
    from surgery.core.method import PlannedStep

PROJECT = "surgery"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def surgery_register_methods() -> list[SurgeryMethod]:
    """Return the surgery methods this plugin provides.

    Called once when the plugin manager is built. Names must be unique across installed plugins;
    a duplicate is reported against the later plugin and skipped.
    """


@hookspec
def surgery_register_anatomies() -> list[Anatomy]:
    """Return anatomies for architectures (``config.model_type``) surgery does not know yet.

    Called once when the plugin manager is built. A later anatomy for a known model type is
    reported and skipped; the built-in ones come first.
    """


@hookspec
def surgery_veto(model: nn.Module, steps: list[PlannedStep], history: list[AppliedStep]) -> list[str]:
    """Return the reasons (plain sentences) why ``steps`` must not be applied to ``model``.

    Called by ``plan`` and ``apply`` after each step's options and architecture were validated and
    before anything mutates. ``history`` holds the steps already applied to the model. Every
    plugin's reasons are collected into one :class:`IncompatibleStepsError`.
    """


@hookspec
def surgery_step_applied(model: nn.Module, step: AppliedStep) -> None:
    """Observe a finished step (logging, metrics). Called after each step of ``apply``.

    The model must not be changed here; an exception aborts ``apply`` and restores the model.
    """


@hookspec
def surgery_card_sections(folder: str, steps: list[dict]) -> list[str]:
    """Return extra markdown sections for the model card of the saved model in ``folder``.

    Called by ``surgery card`` with the recipe's step dicts; each string is one section (start it
    with a ``##`` heading). Sections go inside the generated block, after the built-in ones.
    """
