"""The base class of plugin options: a frozen dataclass validated on construction.

Every plugin's ``config.py`` subclasses :class:`SurgeryConfig`. Field types are checked from the
annotations (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None`` and
``tuple[int, ...]``), so a plugin only writes the checks that go beyond types in ``validate``.
Errors name the plugin, the field, the value received and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, ClassVar, Literal, Union

from surgery.errors import ConfigError, did_you_mean


@dataclasses.dataclass(frozen=True)
class SurgeryConfig:
    """Options of one surgery step. Subclasses are frozen dataclasses with paper defaults."""

    plugin: ClassVar[str] = ""
    # option values that recipes saved before an option existed were made with (a new option's
    # default can change the result; a saved recipe must reload as it was saved)
    legacy_defaults: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            coerced = _check_type(self, field.name, value, hints[field.name])
            if coerced is not value:
                object.__setattr__(self, field.name, coerced)
        self.validate()

    def validate(self) -> None:
        """Checks beyond types; raise ``self.invalid(field, value, allowed)``."""

    def invalid(self, field: str, value: Any, allowed: str) -> ConfigError:
        """The error for one bad option value."""
        return ConfigError(
            f"{self.plugin or type(self).__name__}: option '{field}' got {value!r}; allowed: {allowed}."
        )

    # -- JSON round trip -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> SurgeryConfig:
        """Build from a dict of options, refusing unknown names with the nearest valid one."""
        options = dict(options or {})
        names = [f.name for f in dataclasses.fields(cls)]
        for key in options:
            if key not in names:
                allowed = ", ".join(names) if names else "(this plugin takes no options)"
                raise ConfigError(
                    f"{cls.plugin or cls.__name__}: unknown option '{key}'; options are: {allowed}."
                    + did_you_mean(key, names)
                )
        return cls(**options)

    @classmethod
    def from_recipe(cls, options: Any) -> SurgeryConfig:
        """Build from a saved recipe step's options: absent options take their legacy value."""
        if not isinstance(options, dict):
            raise ConfigError(
                f"{cls.plugin or cls.__name__}: a recipe step's options must be a JSON object, "
                f"got {type(options).__name__}."
            )
        return cls.from_dict({**cls.legacy_defaults, **options})

    @classmethod
    def from_strings(cls, options: dict[str, str]) -> SurgeryConfig:
        """Build from command-line strings (``k=v``): JSON values where they parse, else text."""
        return cls.from_dict({k: _parse_text(v) for k, v in options.items()})

    @classmethod
    def describe_options(cls) -> list[tuple[str, str, Any]]:
        """(name, type, default) for each option, for ``surgery list`` and docs."""
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append((f.name, _type_name(hints[f.name]), default))
        return out


def _parse_text(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        lowered = str(text).lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null"):
            return None
        return text


def _to_json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is tuple:
        return f"tuple[{_type_name(typing.get_args(annotation)[0])}, ...]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _check_type(config: SurgeryConfig, name: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` (coerced where lossless: int to float, list to tuple) or raise."""
    ok, coerced = _matches(value, annotation)
    if not ok:
        error = config.invalid(name, value, "a finite number" if annotation is float else _type_name(annotation))
        if isinstance(value, str):
            error.args = (error.args[0] + did_you_mean(value, _literal_values(annotation)),)
        raise error
    return coerced


def _literal_values(annotation: Any) -> list[str]:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    if origin in (Union, types.UnionType):
        return [v for a in typing.get_args(annotation) for v in _literal_values(a)]
    return []


def _matches(value: Any, annotation: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True, value
    if annotation is type(None):
        return value is None, value
    if origin is Literal:
        return value in typing.get_args(annotation), value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(annotation):
            ok, coerced = _matches(value, option)
            if ok:
                return True, coerced
        return False, value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        item_type = typing.get_args(annotation)[0]
        items = [_matches(v, item_type) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:  # finite numbers only: NaN and inf are never a meaningful option
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False, value
        return True, float(value)
    if isinstance(annotation, type):
        return isinstance(value, annotation), value
    return True, value
