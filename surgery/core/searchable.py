"""What a method offers the recipe search: the options worth trying and whether it needs recovery.

A plugin declares it on its :class:`~surgery.core.method.SurgeryMethod` (``search=SearchSpace(...)``);
``surgery search`` composes its space from every installed method that declares one, third-party
plugins included, and never names a plugin. A method without a declaration is left out of searches.

    SearchSpace(options={"r": (4, 8, 12, 16)})              # training-free, one option
    SearchSpace(options={"layers": ("default", "all")}, needs_recovery=True)
    SearchSpace()                                           # on or off, with its defaults

``options`` maps option names to the values to try (JSON values: None, bool, int, float, str, or a
list of them, e.g. block indices); options not named keep their defaults. ``quiet`` names, for some of
them, the value that says "nothing chosen" (no block kept float, a part left float): candidate labels
leave an option out at that value, ``quantize(activations=int8)`` rather than listing every default.
``fastest`` names, for some of them, the value of the method's fastest declared point (token_merge's
largest ``r``); the others count at their first value. A search where latency matters measures that
point first, and leaves the method out when even it is no faster than the original on the user's
runtime (it does not pay off there). ``needs_recovery``: the rewritten model must be fine-tuned
before its accuracy means anything (new parameters, a changed readout), so the search recovers it
briefly, and only when its measured cost can reach the front. ``trait_options`` changes the space on a
family with an anatomy trait: ``{trait: {option: values}}`` adds or replaces an option there, and an empty
tuple takes one out (token reduction searches which branches run reduced where its family keeps the token
map, and r instead of a FLOPs target the mode refuses); :meth:`SearchSpace.for_traits` is the space a
search uses on a model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from surgery.errors import ConfigError, did_you_mean

SCALARS = (type(None), bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    options: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    needs_recovery: bool = False
    quiet: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fastest: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    trait_options: Mapping[str, Mapping[str, tuple[Any, ...]]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", _checked(self.options, ""))
        object.__setattr__(
            self,
            "trait_options",
            {trait: _checked(o, f" (on {trait})", dropped=True) for trait, o in dict(self.trait_options).items()},
        )
        values_of = dict(self.options)  # every value an option may take, on some family
        for options in self.trait_options.values():
            for name, values in options.items():
                values_of[name] = values_of.get(name, ()) + values
        for field in ("quiet", "fastest"):
            object.__setattr__(self, field, dict(getattr(self, field)))
            for name, value in getattr(self, field).items():
                if name not in values_of:
                    raise ConfigError(
                        f"search space: {field} names '{name}', which is not among its options: "
                        f"{', '.join(values_of) or 'none'}" + did_you_mean(name, list(values_of))
                    )
                if not any(_same(value, v) for v in values_of[name]):
                    raise ConfigError(
                        f"search space: {field} gives '{name}' the value {value!r}, which is not among "
                        f"its values: {list(values_of[name])}"
                    )

    def for_traits(self, traits: Iterable[str]) -> SearchSpace:
        """The space on a family with ``traits``: ``trait_options`` applied (in trait order), ``quiet`` and
        ``fastest`` kept where their option and value remain."""
        options = dict(self.options)
        for trait in sorted(set(traits) & set(self.trait_options)):
            for name, values in self.trait_options[trait].items():
                if values:
                    options[name] = values
                else:
                    options.pop(name, None)

        def kept(chosen: Mapping[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in chosen.items() if k in options and any(_same(v, x) for x in options[k])}

        return SearchSpace(options, self.needs_recovery, kept(self.quiet), kept(self.fastest))

    def fastest_point(self) -> dict[str, Any]:
        """The option values of the method's fastest declared point: ``fastest``'s, the rest at their first."""
        return {name: self.fastest.get(name, values[0]) for name, values in self.options.items()}

    def shown(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` without those at their quiet value (what a label shows)."""
        return {
            name: value
            for name, value in options.items()
            if not (name in self.quiet and _same(self.quiet[name], value))
        }

    def check(self, method: str, config_class: type) -> None:
        """Refuse option names ``config_class`` lacks and values it rejects, naming the method."""
        fields = [f.name for f in dataclasses.fields(config_class)]
        every = [self.options, *self.trait_options.values()]
        for name, values in [item for options in every for item in options.items()]:
            if name not in fields:
                raise ConfigError(
                    f"method '{method}': its search space names the option '{name}', which "
                    f"{config_class.__name__} lacks; options: {', '.join(fields)}." + did_you_mean(name, fields)
                )
            for value in values:
                try:
                    config_class.from_dict({name: value})
                except ConfigError as error:
                    raise ConfigError(
                        f"method '{method}': its search space tries {name}={value!r}, "
                        f"which the method refuses: {error}"
                    ) from None

    def index(self, option: str, value: Any) -> int:
        """Where ``value`` sits among ``option``'s values (a list read back from JSON matches its tuple)."""
        for position, candidate in enumerate(self.options[option]):
            if _same(candidate, value):
                return position
        raise ConfigError(
            f"search space: {value!r} is not among the values of '{option}': {list(self.options[option])}"
        )

    def size(self) -> int:
        """How many settings of this method the space holds."""
        count = 1
        for values in self.options.values():
            count *= len(values)
        return count


def _checked(options: Mapping[str, Any], where: str, dropped: bool = False) -> dict[str, tuple[Any, ...]]:
    """``options`` with tuples of JSON values, none twice; an empty tuple only where it takes an option out."""
    checked = {name: tuple(values) for name, values in dict(options).items()}
    for name, values in checked.items():
        if not values and not dropped:
            raise ConfigError(f"search space: option '{name}' lists no values; give at least one")
        odd = [v for v in values if not _json_value(v)]
        if odd:
            raise ConfigError(
                f"search space: option '{name}'{where} has the value {odd[0]!r}; "
                "allowed: None, bool, int, float, str, or a tuple of them"
            )
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"search space: option '{name}'{where} lists a value twice: {list(values)}")
    return checked


def _json_value(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(isinstance(v, SCALARS) for v in value)
    return isinstance(value, SCALARS)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and list(a) == list(b)
    return type(a) is type(b) and a == b
