"""What a plugin registers: a :class:`SurgeryMethod`, and the :class:`Rewrite` its ``apply`` returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from surgery.core.anatomy import TRAITS, Anatomy
from surgery.core.options import SurgeryConfig
from surgery.core.searchable import SearchSpace
from surgery.errors import ConfigError, did_you_mean


@dataclasses.dataclass
class Rewrite:
    """What one ``apply`` changed: the module names it rewrote and what ``revert`` needs to undo it.

    ``undo`` lives in memory only (for example the original modules); it is never serialized.
    """

    targets: list[str]
    undo: Any = None


ANY_MODEL_TYPE = "*"


@dataclasses.dataclass(frozen=True)
class SurgeryMethod:
    """One surgery method, as a plugin registers it from ``surgery_register_methods``.

    Attributes:
        name: the name users write in specs and recipes (``"ggem"``).
        summary: one line for ``surgery list``.
        config_class: the :class:`SurgeryConfig` subclass holding its options.
        model_types: the ``config.model_type`` values it supports, or :data:`ANY_MODEL_TYPE` (the
            default): every family with an anatomy, except those with a trait it refuses.
        refused_traits: anatomy traits (:data:`~surgery.core.anatomy.TRAITS`) it refuses, each with the
            reason: what a family does that this method cannot handle, so a family a third-party plugin
            describes gets the same answer as a built-in one.
        trait_notes: what happens to a trait it accepts (``{"relative_position_bias": "dropped: ..."}``),
            for the support table and the card.
        trait_options: refused traits it accepts with certain option values (``{"relative_position_bias":
            {"unmerge": True}}``): a step whose options hold them is applied, any other is refused with
            the trait's reason and the values that would be accepted.
        auto_options: options whose None means "the family decides" (``{"unmerge": False}``): a step that
            leaves one at None gets the value its family's traits require (``trait_options``), else the
            value given here; ``apply`` and a recipe's replay resolve them (:meth:`resolved`), so a
            recipe always holds the value that ran.
        refused_model_types: model types it refuses on purpose, each with the reason.
        roles: the anatomy roles it needs (checked before anything mutates); "parts" when it builds
            from the blocks' parts (:meth:`Anatomy.blocks`), which a roles-only layout lacks.
        apply: ``apply(model, config, anatomy) -> Rewrite``. It must only change structure that the
            recipe can replay without data: it runs again, on the meta device, inside
            ``from_pretrained`` before the weights load.
        revert: ``revert(model, rewrite)`` undoing ``apply``, or None when the step is one-way.
        calibrate: ``calibrate(model, config, rewrite, batches)`` fitting data-dependent values
            (e.g. quantization scales) after every step was applied; never called on reload, where
            those values come from the checkpoint.
        needs_data: ``needs_data(config) -> bool``; when true, ``apply`` refuses to start without
            calibration data.
        conflicts: what this method cannot be combined with, mapped to the reason: another method's name, or a
            capability another method ``provides`` (so a new method that declares the capability is covered
            without naming it here).
        refuse_export: ``refuse_export(format, options) -> reason or None`` for the export formats
            ("onnx", "openvino") a step cannot go to; checked before exporting.
        openvino_graph: ``openvino_graph(ov_model, options, input_shape) -> note or None`` rewriting OpenVINO's
            graph of the exported model after its conversion from ONNX, for ops ONNX cannot express (bivit's
            W1A1 linears as BinaryConvolution); it may fix the input shape to ``input_shape`` (the export's
            check batch). The note goes into the export report. The export's check runs after it.
        training: ``training(model, config, targets, anatomy) -> TrainingHooks`` for methods with
            training-only behaviour (auxiliary losses, staged schedules) that
            :func:`surgery.recover` drives; None when plain fine-tuning is all it needs.
        repeatable: whether the method may appear twice in one model's history.
        version: the plugin's version, written into recipes. It moves whenever what a saved step
            computes changes, beyond float rounding or not.
        changes: ``{version: what changed}`` for each version whose computation differs from the one
            before: a recipe saved by an older version reloads with a warning naming every change since
            (or, where an option reproduces the old computation, through ``legacy_defaults``).
        paper, reference: citation and the official code the implementation follows.
        card_template: a Jinja2 file rendering this method's section of the model card (it gets
            ``step``); None uses the generic section.
        export_exact: False when an export may differ from PyTorch beyond float rounding (int8 kernels
            round differently from the fake-quant simulation); export then reports the difference
            instead of failing on it.
        provides: capabilities other parts of surgery (and other methods' ``conflicts``) ask for instead of
            naming the plugin: ``"int8"`` (what the CLI's ``export --int8`` adds), ``"linear_attention"``
            (replaces the softmax attention core), ``"token_reduction"`` (runs its own attention forward on
            fewer tokens), ``"binary_linears"`` (linears below 8 bits).
        search: the options ``surgery search`` tries and whether the method needs recovery
            (:class:`~surgery.core.searchable.SearchSpace`); None leaves the method out of searches.
        package: the distribution that provides it (filled in by the plugin manager).
    """

    name: str
    summary: str
    config_class: type[SurgeryConfig]
    apply: Callable[[nn.Module, SurgeryConfig, Anatomy], Rewrite]
    model_types: tuple[str, ...] = ("*",)
    revert: Callable[[nn.Module, Rewrite], None] | None = None
    calibrate: Callable[[nn.Module, SurgeryConfig, Rewrite, Any], None] | None = None
    needs_data: Callable[[SurgeryConfig], bool] | None = None
    roles: tuple[str, ...] = ()
    refused_model_types: Mapping[str, str] = dataclasses.field(default_factory=dict)
    refused_traits: Mapping[str, str] = dataclasses.field(default_factory=dict)
    trait_notes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    trait_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    auto_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    conflicts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    refuse_export: Callable[[str, Mapping[str, Any]], str | None] | None = None
    openvino_graph: Callable[[Any, Mapping[str, Any], list[int]], str | None] | None = None
    training: Callable[[nn.Module, SurgeryConfig, list[str], Anatomy], Any] | None = None
    repeatable: bool = False
    version: str = "0.1.0"
    changes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    paper: str = ""
    reference: str = ""
    card_template: str | None = None
    export_exact: bool = True
    provides: tuple[str, ...] = ()
    search: SearchSpace | None = None
    package: str = ""

    def conflict_with(self, other: SurgeryMethod) -> str | None:
        """Why this method cannot be combined with ``other``, by its name or a capability it provides (this
        side's declaration only; a method is never in conflict with itself here: repeats are another rule)."""
        if other.name == self.name:
            return None
        return next(
            (reason for key, reason in self.conflicts.items() if key == other.name or key in other.provides), None
        )

    @property
    def reversible(self) -> bool:
        return self.revert is not None

    def __post_init__(self) -> None:
        named = {field: getattr(self, field) for field in ("refused_traits", "trait_notes", "trait_options")}
        named["search.trait_options"] = self.search.trait_options if self.search is not None else {}
        for field, traits in named.items():
            unknown = sorted(set(traits) - set(TRAITS))
            if unknown:
                raise ConfigError(
                    f"method '{self.name}': {field} names unknown trait(s) {', '.join(unknown)}; "
                    f"traits: {', '.join(TRAITS)}." + did_you_mean(unknown[0], TRAITS)
                )
        options = {f.name: f for f in dataclasses.fields(self.config_class)} if self.auto_options else {}
        for name in self.auto_options:
            if name not in options or options[name].default is not None:
                raise ConfigError(
                    f"method '{self.name}': auto_options names '{name}', which is not an option of "
                    f"{self.config_class.__name__} whose default is None." + did_you_mean(name, options)
                )
        if self.search is not None:
            self.search.check(self.name, self.config_class)

    def traits_refused(self, anatomy: Anatomy, config: SurgeryConfig | None = None) -> list[tuple[str, str]]:
        """``(trait, why)`` for each of ``anatomy``'s traits this method refuses, in trait order. A trait it
        accepts with some option values (``trait_options``) counts only against a ``config`` without
        them (none given: some configuration is accepted)."""
        refused = []
        for trait in sorted(anatomy.traits):
            needed = self.trait_options.get(trait)
            if trait not in self.refused_traits:
                continue
            satisfiable = needed is not None and config is None  # some configuration is accepted
            satisfied = (
                needed is not None
                and config is not None
                and all(  # None: an auto option, resolved to v
                    getattr(config, k) == v or (getattr(config, k) is None and k in self.auto_options)
                    for k, v in needed.items()
                )
            )
            if satisfiable or satisfied:
                continue
            given = (
                ""
                if needed is None
                else " ("
                + ", ".join(
                    f"option '{k}' got {getattr(config, k)!r}; allowed: {v!r} on this family"
                    for k, v in needed.items()
                )
                + ")"
            )
            refused.append((trait, self.refused_traits[trait] + given))
        return refused

    def options_required(self, anatomy: Anatomy) -> dict[str, Any]:
        """The option values ``anatomy``'s traits require of a step (``trait_options``), or {}."""
        return {k: v for trait in sorted(anatomy.traits) for k, v in self.trait_options.get(trait, {}).items()}

    def resolved(self, config: SurgeryConfig, anatomy: Anatomy) -> SurgeryConfig:
        """``config`` with every auto option left at None set for ``anatomy``'s family: the value its traits
        require (:meth:`options_required`), else the declared one (``auto_options``); ``config`` itself
        when none is left."""
        left = [name for name in self.auto_options if getattr(config, name) is None]
        if not left:
            return config
        required = self.options_required(anatomy)
        values = {name: required.get(name, self.auto_options[name]) for name in left}
        try:
            return dataclasses.replace(config, **values)
        except ConfigError as error:
            chosen = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise ConfigError(f"{error} (left unset, {chosen} is what {anatomy.model_type} takes)") from None

    def traits_noted(self, anatomy: Anatomy) -> list[tuple[str, str]]:
        """``(trait, what happens to it)`` for each of ``anatomy``'s traits this method has a note on."""
        return [(trait, self.trait_notes[trait]) for trait in sorted(anatomy.traits) if trait in self.trait_notes]

    def refusal(self, anatomy: Anatomy, config: SurgeryConfig | None = None) -> str | None:
        """Why this method refuses ``anatomy``'s family (a refused model type or trait, or a type it
        does not list), with ``config`` (None: in any configuration), or None when it supports it."""
        if anatomy.model_type in self.refused_model_types:
            return self.refused_model_types[anatomy.model_type]
        refused = self.traits_refused(anatomy, config)
        if refused:
            return "; ".join(f"{trait}: {why}" for trait, why in refused)
        if ANY_MODEL_TYPE not in self.model_types and anatomy.model_type not in self.model_types:
            return f"it supports {', '.join(self.model_types)} only"
        return None

    def export_refusal(self, to: str, options: Mapping[str, Any]) -> str | None:
        """Why a step with ``options`` cannot be exported to ``to``, or None when it can."""
        return self.refuse_export(to, options) if self.refuse_export is not None else None

    def make_config(self, options: SurgeryConfig | Mapping[str, Any] | None = None) -> SurgeryConfig:
        """A validated config from a config object, a dict of options, or None for the defaults."""
        if isinstance(options, SurgeryConfig):
            if not isinstance(options, self.config_class):
                raise ConfigError(
                    f"{self.name}: expected a {self.config_class.__name__}, got {type(options).__name__}."
                )
            return options
        return self.config_class.from_dict(dict(options or {}))


@dataclasses.dataclass
class PlannedStep:
    """One validated step: the method, its options and the modules it will rewrite."""

    method: SurgeryMethod
    config: SurgeryConfig
    targets: list[str] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        options = " ".join(f"{k}={v}" for k, v in self.config.to_dict().items())
        head = f"{self.method.name} {self.method.version} ({self.method.package})"
        lines = [f"{head}  {options}".rstrip()]
        lines.append(f"   rewrites: {', '.join(self.targets) or '(nothing)'}")
        lines.append(f"   reversible: {'yes' if self.method.reversible else 'no'}")
        return "\n".join(lines)
