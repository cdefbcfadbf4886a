"""The search space, composed from what the installed methods declare (``SurgeryMethod.search``).

A candidate is one to ``max_steps`` methods, each with one value per declared option. Which methods
may share a model, and in which order, is decided by the host's own validation (``surgery.plan``:
declared conflicts, overlapping claims, vetoes, unsupported families), never by names written here:
every set of methods is planned in each order until one passes, and a set no order passes is left
out with the host's reason. So a third-party method that declares a space is searched like a
built-in one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from surgery.core.apply import plan
from surgery.core.host import get_host
from surgery.core.method import SurgeryMethod
from surgery.core.searchable import SearchSpace
from surgery.errors import ConfigError, SurgeryError, did_you_mean
from surgery.recipe_search import report

SEP = "+"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One recipe to measure: ``((plugin, {option: value}), ...)`` in application order."""

    steps: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    needs_recovery: bool = False

    @property
    def key(self) -> str:
        """A canonical text for the cache: the same recipe always gives the same key."""
        return json.dumps(self.specs(), sort_keys=True)

    def specs(self) -> list[list[Any]]:
        return [[plugin, dict(options)] for plugin, options in self.steps]

    @property
    def label(self) -> str:
        """``token_merge(r=8) + quantize(activations=int8)``: an option at the value its method's search
        space declares quiet ("nothing chosen": no block kept float, a part left float) is left out."""
        methods = get_host().methods
        shown = []
        for plugin, options in self.steps:
            space = getattr(methods.get(plugin), "search", None)
            shown.append((plugin, list((space.shown(dict(options)) if space is not None else dict(options)).items())))
        return " + ".join(
            plugin + (f"({', '.join(f'{k}={v}' for k, v in options)})" if options else "") for plugin, options in shown
        )


@dataclasses.dataclass
class Space:
    """The methods a search tries on one model, and the sets of them that compose."""

    methods: dict[str, SurgeryMethod]
    combos: dict[str, tuple[str, ...]]  # "a+b" -> the order that plans
    left_out: dict[str, str]  # method or set -> why it is not searched
    # method -> the option values the model's family requires of it (``SurgeryMethod.options_required``:
    # token reduction's unmerge=True on Swin and BEiT), held fixed in every candidate
    required: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # method -> its space on the model's family (``SearchSpace.for_traits``: the trait options applied)
    spaces: dict[str, SearchSpace] = dataclasses.field(default_factory=dict)

    @classmethod
    def build(
        cls, model: nn.Module, max_steps: int = 2, include: Sequence[str] | None = None, exclude: Sequence[str] = ()
    ) -> Space:
        """Every method that declares a space and plans on ``model`` alone, and every set of up to
        ``max_steps`` of them that plans together in some order (tried in name order first), each
        method at the first of its declared values."""
        if max_steps < 1:
            raise ConfigError(f"search: max_steps must be at least 1, got {max_steps}")
        host = get_host()
        declared = {name: m for name, m in sorted(host.methods.items()) if m.search is not None}
        for name in [*(include or ()), *exclude]:
            if name not in host.methods:
                raise ConfigError(
                    f"search: no installed method '{name}'; installed: {', '.join(sorted(host.methods))}."
                    + did_you_mean(name, host.methods)
                )
            if host.methods[name].search is None:
                raise ConfigError(
                    f"search: method '{name}' declares no search space (SurgeryMethod.search), so the "
                    f"search cannot try it; methods with one: {', '.join(declared)}"
                )
        chosen = [n for n in declared if (include is None or n in include) and n not in exclude]
        left_out: dict[str, str] = {n: "not declared searchable" for n in sorted(host.methods) if n not in declared}
        anatomy = host.anatomy_of(model, required=False)
        required = {n: declared[n].options_required(anatomy) for n in chosen} if anatomy is not None else {}
        required = {n: options for n, options in required.items() if options}
        traits = anatomy.traits if anatomy is not None else frozenset()
        spaces = {name: declared[name].search.for_traits(traits) for name in chosen}
        methods: dict[str, SurgeryMethod] = {}
        for name in chosen:
            reason = _plan_reason(model, (name,), spaces, required)
            if reason is None:
                methods[name] = declared[name]
            else:
                left_out[name] = reason
        combos: dict[str, tuple[str, ...]] = {}
        for size in range(1, max_steps + 1):
            for group in itertools.combinations(sorted(methods), size):
                reasons = []
                for order in itertools.permutations(group):
                    reason = _plan_reason(model, order, spaces, required)
                    if reason is None:
                        combos[SEP.join(group)] = order
                        break
                    reasons.append(reason)
                else:
                    left_out[SEP.join(group)] = reasons[0]
        if not combos:
            raise SurgeryError(
                "search: no installed method plans on this model; "
                + "; ".join(f"{n}: {why}" for n, why in left_out.items())
            )
        return cls(methods, combos, left_out, required, {name: spaces[name] for name in methods})

    def needs_recovery(self, order: Sequence[str]) -> bool:
        return any(self.spaces[name].needs_recovery for name in order)

    def candidate(self, combo: str, values: Mapping[str, Any]) -> Candidate:
        """The candidate of ``combo`` with ``values`` (``{"method.option": value}``)."""
        order = self.combos[combo]
        steps = tuple(
            (
                name,
                tuple((option, _plain(values[f"{name}.{option}"])) for option in self.spaces[name].options)
                + tuple((option, _plain(value)) for option, value in self.required.get(name, {}).items()),
            )
            for name in order
        )
        return Candidate(steps, self.needs_recovery(order))

    @staticmethod
    def combo_of(steps: Sequence[Sequence[Any]]) -> str:
        """The set a record's ``[[plugin, {option: value}], ...]`` belongs to (its key in ``combos``)."""
        return SEP.join(sorted(plugin for plugin, _ in steps))

    def from_steps(self, steps: Sequence[Sequence[Any]]) -> Candidate:
        """The candidate of a record's ``[[plugin, {option: value}], ...]`` (as the cache keeps it)."""
        return self.candidate(
            self.combo_of(steps), {f"{plugin}.{k}": v for plugin, options in steps for k, v in options.items()}
        )

    def suggest(self, trial: Any) -> Candidate:
        """Ask an Optuna trial for a set of methods, then for each chosen method's options (by the
        value's position among the declared ones, so any JSON value can be declared)."""
        combo = trial.suggest_categorical("recipe", list(self.combos))
        values = {}
        for name in self.combos[combo]:
            for option, choices in self.spaces[name].options.items():
                values[f"{name}.{option}"] = choices[
                    trial.suggest_categorical(f"{name}.{option}", list(range(len(choices))))
                ]
        return self.candidate(combo, values)

    def params(self, candidate: Candidate) -> dict[str, Any]:
        """The Optuna parameters that give ``candidate`` (for replaying cached trials)."""
        combo = self.combo_of(candidate.steps)
        return {
            "recipe": combo,
            **{
                f"{plugin}.{k}": self.spaces[plugin].index(k, v)
                for plugin, options in candidate.steps
                for k, v in options
                if k in self.spaces[plugin].options
            },
        }  # not the required ones

    def distributions(self, params: Mapping[str, Any]) -> dict[str, Any]:
        import optuna

        out = {"recipe": optuna.distributions.CategoricalDistribution(list(self.combos))}
        for key in params:
            if key != "recipe":
                name, option = key.split(".", 1)
                out[key] = optuna.distributions.CategoricalDistribution(
                    list(range(len(self.spaces[name].options[option])))
                )
        return out

    def starting_points(self) -> list[Candidate]:
        """The training-free methods alone, measured first: each option swept over its declared
        values while the others stay at their first (a sensitivity sweep; the sampler tries the
        mixtures), taken round-robin across the methods so that a trial cap still reaches every
        method; then each method that needs recovery alone at its first values."""
        sweeps, costly = [], []
        for name, space in self.spaces.items():
            if name not in self.combos:
                continue
            options = space.options
            first = {option: values[0] for option, values in options.items()}
            settings = [first] + [
                {**first, option: value} for option, values in options.items() for value in values[1:]
            ]
            candidates = [self.candidate(name, {f"{name}.{k}": v for k, v in s.items()}) for s in settings]
            if space.needs_recovery:
                costly.append(candidates[0])
            else:
                sweeps.append(candidates)
        return [c for round_ in itertools.zip_longest(*sweeps) for c in round_ if c is not None] + costly

    def combo_size(self, combo: str) -> int:
        """How many candidates the set ``combo`` holds."""
        count = 1
        for name in self.combos[combo]:
            count *= self.spaces[name].size()
        return count

    def compositions(self, singles: list[dict[str, Any]], objective: str, limit: int = 8) -> list[Candidate]:
        """Pairs of the methods on the front of the single-method starting points, each at its value on
        that front, where the two compose: the cheapest products of their cost ratios first. The sampler
        would find them too, but a pair of front points is the likeliest way past what either reaches
        alone, so they are measured before the sampler takes over."""
        cost = report.OBJECTIVES[objective]
        pairs = []
        for a, b in itertools.combinations(report.front(singles, objective), 2):
            (first, first_options), (second, second_options) = a["steps"][0], b["steps"][0]
            combo = SEP.join(sorted((first, second)))
            if first == second or combo not in self.combos:
                continue
            values = {
                **{f"{first}.{k}": v for k, v in first_options.items()},
                **{f"{second}.{k}": v for k, v in second_options.items()},
            }
            pairs.append((a[cost] * b[cost], len(pairs), self.candidate(combo, values)))
        return [candidate for _, _, candidate in sorted(pairs, key=lambda p: p[:2])][:limit]

    def probe(self, name: str) -> Candidate:
        """``name`` alone at its fastest declared point (``SearchSpace.fastest``)."""
        point = self.spaces[name].fastest_point()
        return self.candidate(name, {f"{name}.{option}": value for option, value in point.items()})

    def without(self, dropped: Mapping[str, str]) -> Space:
        """This space less the methods in ``dropped`` (method -> why) and every set holding one of them."""
        methods = {n: m for n, m in self.methods.items() if n not in dropped}
        combos = {c: order for c, order in self.combos.items() if not set(order) & set(dropped)}
        left_out = {**self.left_out, **dropped}
        for combo, order in self.combos.items():
            if combo not in combos and SEP in combo:
                left_out[combo] = next(f"{n}: {dropped[n]}" for n in order if n in dropped)
        required = {n: o for n, o in self.required.items() if n in methods}
        return Space(methods, combos, left_out, required, {n: s for n, s in self.spaces.items() if n in methods})

    def describe(self) -> dict[str, Any]:
        return {
            "methods": {
                name: {
                    "options": {k: [_plain(value) for value in v] for k, v in self.spaces[name].options.items()},
                    "needs_recovery": self.spaces[name].needs_recovery,
                    "version": m.version,
                }
                for name, m in self.methods.items()
            },
            "sets": {combo: list(order) for combo, order in self.combos.items()},
            "left_out": self.left_out,
            **({"required": self.required} if self.required else {}),
        }


def _plain(value: Any) -> Any:
    """A declared value as JSON gives it back (tuples as lists), so a candidate's key never depends on
    whether it came from the declaration or from the cache."""
    return json.loads(json.dumps(value))


def _plan_reason(
    model: nn.Module,
    order: Sequence[str],
    spaces: Mapping[str, SearchSpace],
    required: Mapping[str, Mapping[str, Any]],
) -> str | None:
    """None when ``order`` (each method at the first of its declared values and the values the family
    requires of it) plans on ``model``, else the host's reason."""
    specs = [
        (name, {**{k: _plain(v[0]) for k, v in spaces[name].options.items()}, **required.get(name, {})})
        for name in order
    ]
    try:
        plan(model, specs)
    except SurgeryError as error:
        return " ".join(str(error).split())[:300]
    return None
