"""Step specs: names, ``(name, options)`` pairs, config objects, and ``NAME[:key=value,...]`` text, resolved
into validated :class:`PlannedStep` objects.

Values stay strings here; each plugin's config parses its own (``SurgeryConfig.from_strings``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

from surgery.core.host import Host, get_host
from surgery.core.method import PlannedStep, SurgeryMethod  # PlannedStep: also importable from here
from surgery.core.options import SurgeryConfig
from surgery.errors import ConfigError

Spec = Union[str, tuple[str, Mapping[str, Any]], SurgeryConfig]


def parse_plugin_spec(text: str) -> tuple[str, dict[str, str]]:
    """``NAME[:k=v,...]`` to ``(name, {k: v})``; commas inside brackets belong to the value."""
    name, _, rest = text.partition(":")
    options = parse_options(rest, f"--plugin {text!r}", "NAME:key=value,key=value")
    if not name.strip():
        raise ConfigError(f"--plugin {text!r}: the plugin name is missing.")
    return name.strip(), options


def parse_options(text: str, where: str, form: str) -> dict[str, str]:
    """``k=v,...`` to ``{k: v}`` (values still text); ``where`` and ``form`` word the error."""
    options: dict[str, str] = {}
    for item in split_top_level(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: write options as {form} (got {item!r}: not key=value).")
        if key.strip() in options:
            raise ConfigError(f"{where}: option '{key.strip()}' is given twice; give each option once.")
        options[key.strip()] = value.strip()
    return options


def split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += char in "[({"
        depth -= char in "])}"
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        items.append(current)
    return [item for item in items if item.strip()]


def configs_from_text(texts: list[str], host: Host | None = None) -> list[Any]:
    """Each ``NAME[:k=v,...]`` as its plugin's validated config object."""
    host = host or get_host()
    specs = []
    for text in texts:
        name, options = parse_plugin_spec(text)
        specs.append(host.method(name).config_class.from_strings(options))
    return specs


def resolve_specs(specs: Spec | Sequence[Spec], host: Host | None = None) -> list[PlannedStep]:
    """Turn names, ``(name, options)`` pairs and config objects into validated steps."""
    host = host or get_host()
    if isinstance(specs, Mapping):
        raise ConfigError(
            f"steps must be a list, got a dict ({', '.join(repr(k) for k in list(specs)[:3])}): a dict has no order "
            'and its options would be lost; write [("name", {options}), ...].'
        )
    if isinstance(specs, (str, SurgeryConfig)) or (
        isinstance(specs, tuple) and len(specs) == 2 and isinstance(specs[1], Mapping)
    ):
        specs = [specs]  # a single spec
    steps = []
    for spec in specs:
        if isinstance(spec, str):
            method, options = host.method(spec), None
        elif isinstance(spec, SurgeryConfig):
            method, options = _method_for_config(spec, host), spec
        elif (
            isinstance(spec, (tuple, list))
            and len(spec) == 2
            and isinstance(spec[0], str)
            and isinstance(spec[1], (Mapping, SurgeryConfig))
        ):
            method, options = host.method(spec[0]), spec[1]
        else:
            raise ConfigError(
                f"cannot read the step {spec!r}; write a plugin name, a (name, options) pair or a plugin config object."
            )
        steps.append(PlannedStep(method, method.make_config(options)))
    return steps


def _method_for_config(config: SurgeryConfig, host: Host) -> SurgeryMethod:
    for method in host.methods.values():
        if type(config) is method.config_class:
            return method
    return host.method(config.plugin or type(config).__name__)
