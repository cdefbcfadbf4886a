"""plan / apply / revert / history: validation before mutation, and an atomic apply.

``apply`` first validates every step (plugin names, options, architecture, roles, conflicts and
plugin vetoes), then rehearses the whole sequence on a copy of the model whose tensors live on the
meta device (no memory, no compute). Only then does it touch the model, and if a step still fails,
the model is restored to exactly what it was: same modules, same parameter objects, same values.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import transformers
from torch import nn

from surgery._version import __version__
from surgery.core.anatomy import Anatomy
from surgery.core.claims import overlap_reasons
from surgery.core.history import HISTORY_ATTR, AppliedStep, get_history, portable_source, set_history
from surgery.core.host import Host, get_host
from surgery.core.method import Rewrite
from surgery.core.snapshot import ModelSnapshot
from surgery.core.specs import PlannedStep, Spec, resolve_specs
from surgery.core.wrappers import refuse_adapters
from surgery.errors import (
    ApplyError,
    ConfigError,
    IncompatibleStepsError,
    RevertError,
    SurgeryError,
    UnsupportedModelError,
)


@dataclasses.dataclass
class Plan:
    """What ``apply`` would do to a model; ``str(plan)`` is the human-readable dry run."""

    model_class: str
    model_type: str
    steps: list[PlannedStep]
    anatomy: Anatomy | None = dataclasses.field(default=None, repr=False, compare=False)  # bound to the model

    def __str__(self) -> str:
        lines = [f"plan for {self.model_class} ({self.model_type}): {len(self.steps)} step(s)"]
        for index, step in enumerate(self.steps, 1):
            lines.append(f"{index}. {step.describe()}")
        return "\n".join(lines)


def plan(model: nn.Module, specs: Spec | Sequence[Spec]) -> Plan:
    """Validate ``specs`` against ``model`` and rehearse them; the model is not changed."""
    host = get_host()
    steps = resolve_specs(specs, host)
    anatomy, reasons = validate(model, steps, host, collect=True)
    try:
        _rehearse(model, steps, anatomy)
    except SurgeryError:
        if reasons:  # the declared incompatibility is the reason the rehearsal failed
            raise_incompatible(reasons)
        raise
    raise_incompatible(reasons + overlaps(model, anatomy, [(s.method.name, s.targets) for s in steps], host))
    return Plan(type(model).__name__, anatomy.model_type, steps, anatomy)


def apply(model: nn.Module, specs: Spec | Sequence[Spec], calibration: Iterable[Any] | None = None) -> nn.Module:
    """Rewrite ``model`` in place with every step of ``specs`` and return it.

    ``calibration``: batches of ``pixel_values`` (tensors or dicts with that key) for steps that fit
    values on data (``quantize``); they are observed after every step was applied.
    Nothing mutates until all steps are validated and rehearsed; if a step fails anyway, the model
    is restored exactly and an :class:`ApplyError` naming the plugin is raised.
    """
    refuse_adapters(model, "apply surgery to")
    host = get_host()
    the_plan = plan(model, specs)
    anatomy, planned = the_plan.anatomy, the_plan.steps  # the layout found before any step renamed a module
    assert anatomy is not None  # plan binds it
    for step in planned:
        if step.method.needs_data is not None and step.method.needs_data(step.config) and calibration is None:
            raise ConfigError(
                f"{step.method.name} needs calibration data: surgery.apply(model, specs, calibration=batches), "
                "where batches yields pixel_values (on the command line: --calibration digits)."
            )
    snapshot = ModelSnapshot(model)
    history = get_history(model)
    current: PlannedStep | None = None
    try:
        for current in planned:
            rewrite = current.method.apply(model, current.config, anatomy)
            done = record(current, rewrite, base_model=portable_source(getattr(model.config, "_name_or_path", None)))
            history.append(done)
            set_history(model, history)
            host.pm.hook.surgery_step_applied(model=model, step=done)
        for current, done in zip(planned, history[len(history) - len(planned) :]):
            if current.method.calibrate is not None and calibration is not None:
                current.method.calibrate(model, current.config, Rewrite(done.targets, done.undo), calibration)
    except SurgeryError:
        snapshot.restore()
        raise
    except Exception as error:
        snapshot.restore()
        raise ApplyError(
            f"{current.method.name if current else 'apply'} failed while rewriting {type(model).__name__}: {type(error).__name__}: {error}. "
            "The model was restored to its state before apply."
        ) from error
    return model


def history(model: nn.Module) -> list[AppliedStep]:
    """The steps applied to ``model``, oldest first."""
    return get_history(model)


def revert(model: nn.Module, steps: int | None = None) -> nn.Module:
    """Undo the last ``steps`` steps (all by default), newest first; atomic like ``apply``."""
    refuse_adapters(model, "revert surgery on")
    host = get_host()
    applied = get_history(model)
    count = len(applied) if steps is None else steps
    if not 0 <= count <= len(applied):
        raise RevertError(f"cannot revert {count} step(s): the model has {len(applied)}.")
    undo = applied[len(applied) - count :]
    for step in undo:
        if not host.method(step.plugin).reversible:
            raise RevertError(f"{step.plugin}: this step cannot be undone (the plugin has no revert).")
    snapshot = ModelSnapshot(model)
    try:
        for step in reversed(undo):
            revert_step = host.method(step.plugin).revert
            assert revert_step is not None  # checked above: every step is reversible
            revert_step(model, Rewrite(step.targets, step.undo))
            applied.pop()
            set_history(model, applied)
    except Exception as error:
        snapshot.restore()
        raise RevertError(
            f"{step.plugin} failed to revert: {type(error).__name__}: {error}. The model was restored."
        ) from error
    return model


# -- validation -------------------------------------------------------------------------------
def validate(model: nn.Module, steps: list[PlannedStep], host: Host, collect: bool = False):
    """The anatomy for ``model``, after setting each step's auto options for its family and checking each
    step's architecture and roles (raised at once), the declared conflicts and the plugin vetoes (raised
    together, or with ``collect`` returned beside the anatomy so that the overlaps a rehearsal finds join
    them in one error)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a transformers model (it has no config.model_type)."
        )
    anatomy = host.anatomy_of(model)
    for step in steps:
        step.config = step.method.resolved(step.config, anatomy)  # auto options set for the family
        reason = step.method.refusal(anatomy, step.config)
        if reason is not None:
            raise UnsupportedModelError(
                f"{step.method.name} does not support model_type '{anatomy.model_type}' "
                f"({type(model).__name__}): {reason}."
            )
        anatomy.check(model, step.method.roles)
    reasons = _conflicts(steps, get_history(model), host)
    for answer in host.pm.hook.surgery_veto(model=model, steps=steps, history=get_history(model)):
        reasons.extend(answer or [])
    if collect:
        return anatomy, reasons
    raise_incompatible(reasons)
    return anatomy


def raise_incompatible(reasons: list[str]) -> None:
    if reasons:
        raise IncompatibleStepsError("these steps cannot be applied together:\n  - " + "\n  - ".join(reasons))


def overlaps(
    model: nn.Module,
    anatomy: Anatomy,
    planned: list[tuple[str, list[str]]],
    host: Host,
    applied: list[tuple[str, list[str]]] | None = None,
) -> list[str]:
    """Why steps would rewrite a module another method's step rewrote or will rewrite (none: [])."""
    if applied is None:
        applied = [(step.plugin, list(step.targets)) for step in get_history(model)]
    declared = {}
    for first, _ in applied + planned:
        for second, _ in applied + planned:
            a, b = host.methods.get(first), host.methods.get(second)
            if a is not None and b is not None and (a.conflict_with(b) or b.conflict_with(a)):
                declared[(first, second)] = declared[(second, first)] = True
    return overlap_reasons(model, anatomy, applied, planned, declared)


def _conflicts(steps: list[PlannedStep], applied: list[AppliedStep], host: Host) -> list[str]:
    """Reasons from the methods' declared conflicts (either side may declare) and repeats."""
    earlier = [host.methods.get(s.plugin) for s in applied]
    reasons = []
    for step in steps:
        new = step.method
        for old in earlier:
            if old is None:
                continue
            if old.name == new.name and not new.repeatable:
                reasons.append(f"{new.name} is already applied (it can appear once per model).")
            reason = new.conflict_with(old) or old.conflict_with(new)
            if reason:
                reasons.append(f"{new.name} conflicts with {old.name}: {reason}")
        earlier.append(new)
    return reasons


def _rehearse(model: nn.Module, steps: list[PlannedStep], anatomy: Anatomy) -> None:
    """Run the steps on a meta-device copy to find their targets and catch failures early."""
    rehearsal = _meta_copy(model)
    anatomy = anatomy.bind(rehearsal, anatomy.layout_of(model))
    for step in steps:
        try:
            step.targets = list(step.method.apply(rehearsal, step.config, anatomy).targets)
        except SurgeryError:
            raise
        except Exception as error:
            raise ApplyError(
                f"{step.method.name} failed on {type(model).__name__} during the dry run: "
                f"{type(error).__name__}: {error}. The model was not changed."
            ) from error


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of the module tree whose parameters and buffers are on the meta device."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for tensor in list(module._parameters.values()) + list(module._buffers.values()):
            if tensor is None or id(tensor) in memo:
                continue
            meta = tensor.detach().to("meta")
            memo[id(tensor)] = (
                nn.Parameter(meta, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
            )
    saved = model.__dict__.pop(HISTORY_ATTR, None)  # undo records may hold real tensors
    try:
        return copy.deepcopy(model, memo)
    finally:
        if saved is not None:
            model.__dict__[HISTORY_ATTR] = saved


def record(
    step: PlannedStep, rewrite: Rewrite, versions: dict[str, str] | None = None, base_model: str | None = None
) -> AppliedStep:
    return AppliedStep(
        base_model=base_model,
        plugin=step.method.name,
        options=step.config.to_dict(),
        plugin_version=step.method.version,
        package=step.method.package,
        targets=list(rewrite.targets),
        versions=dict(versions) if versions else library_versions(),
        config=step.config,
        undo=rewrite.undo,
    )


def library_versions() -> dict[str, str]:
    return {"surgery": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
