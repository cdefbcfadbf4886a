"""The plugin host: a pluggy PluginManager with surgery's hookspecs, the built-ins and entry points.

Built-in plugins and third-party ones (entry-point group ``surgery``) go through the same
:func:`Host.load_plugin`. A third-party plugin that fails to import, implements a hook with a wrong
signature or an unknown ``surgery_`` hook, or returns something that is not a method, is recorded in
:attr:`Host.problems` with its distribution name and left out; the others keep working.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import logging
import pkgutil
import weakref
from collections.abc import Iterable
from typing import Any, Literal, overload

import pluggy

from surgery.core import hookspecs
from surgery.core.anatomy import Anatomy
from surgery.core.families import builtin_anatomies
from surgery.core.method import SurgeryMethod
from surgery._version import DISTRIBUTION, LEGACY_DISTRIBUTIONS
from surgery.errors import SurgeryError, UnknownPluginError, UnsupportedModelError, did_you_mean

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "surgery"
SELF_DISTRIBUTION = DISTRIBUTION
BUILTIN_PACKAGE = "surgery.plugins"  # plugins/ in the repository


def builtin_plugins() -> dict[str, str]:
    """Every built-in plugin: name to module, found in the installed ``surgery.plugins`` package (the
    packages list of pyproject.toml is the one place that names them)."""
    package = importlib.import_module(BUILTIN_PACKAGE)
    return {
        info.name: f"{BUILTIN_PACKAGE}.{info.name}"
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name)
        if info.ispkg
    }


BUILTIN_PLUGINS = builtin_plugins()


@dataclasses.dataclass(frozen=True)
class PluginProblem:
    """A plugin that was left out, and why."""

    distribution: str
    plugin: str
    reason: str

    def __str__(self) -> str:
        return f"plugin '{self.plugin}' from package '{self.distribution}' was not loaded: {self.reason}"


class Host:
    """The loaded plugins: methods by name, anatomies by model type, and what failed to load."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.distributions: dict[str, str] = {}
        self.problems: list[PluginProblem] = []
        self.methods: dict[str, SurgeryMethod] = {}
        self.anatomies: dict[str, Anatomy] = {a.model_type: a for a in builtin_anatomies()}
        self._bound: weakref.WeakKeyDictionary[Any, tuple[Anatomy, Anatomy]] = weakref.WeakKeyDictionary()

    # -- loading ---------------------------------------------------------------------------
    def load_plugin(self, name: str, target: str | Any, distribution: str, strict: bool = False) -> bool:
        """Import ``target`` (a module path or an object) and register it as plugin ``name``.

        A third-party plugin that fails is reported and left out; with ``strict`` (the built-ins,
        pytest's habit) the failure is raised: a broken installation must not look like a smaller one.
        """
        try:
            plugin = importlib.import_module(target) if isinstance(target, str) else target
            self.pm.register(plugin, name=name)
        except Exception as error:  # a broken plugin must not break the others
            if strict:
                raise SurgeryError(
                    f"the built-in plugin '{name}' failed to load: {type(error).__name__}: {error}"
                ) from error
            self._problem(distribution, name, f"{type(error).__name__}: {error}")
            return False
        unknown = self._unknown_hooks(plugin)
        if unknown:
            self.pm.unregister(plugin)
            known = [h for h in dir(hookspecs) if h.startswith("surgery_")]
            hint = "".join(did_you_mean(h, known) for h in unknown)
            if strict:
                raise SurgeryError(
                    f"the built-in plugin '{name}' implements unknown hook(s) {', '.join(unknown)}.{hint}"
                )
            self._problem(distribution, name, f"implements unknown hook(s) {', '.join(unknown)}.{hint}")
            return False
        self.distributions[name] = distribution
        return True

    def load_entry_points(self, entry_points: Iterable[importlib.metadata.EntryPoint] | None = None) -> None:
        """Register every plugin of the entry-point group ``surgery`` (or the ones given)."""
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in entry_points:
            distribution = ep.dist.name if ep.dist is not None else "unknown"
            if distribution in (SELF_DISTRIBUTION, *LEGACY_DISTRIBUTIONS) or self.pm.has_plugin(ep.name):
                continue
            try:
                target = ep.load()
            except Exception as error:
                self._problem(distribution, ep.name, f"import failed: {type(error).__name__}: {error}")
                continue
            self.load_plugin(ep.name, target, distribution)

    def collect(self) -> None:
        """Ask every plugin for its methods and anatomies, one plugin at a time."""
        for impl in self.pm.hook.surgery_register_anatomies.get_hookimpls():
            for anatomy in self._call_registration(impl, Anatomy, "surgery_register_anatomies"):
                if anatomy.model_type in self.anatomies:
                    self._problem(
                        self._dist(impl), impl.plugin_name, f"anatomy for '{anatomy.model_type}' already registered"
                    )
                else:
                    self.anatomies[anatomy.model_type] = anatomy
        # get_hookimpls() lists plugins in registration order: built-ins first, so they keep their names
        for impl in self.pm.hook.surgery_register_methods.get_hookimpls():
            for method in self._call_registration(impl, SurgeryMethod, "surgery_register_methods"):
                if method.name in self.methods:
                    owner = self.methods[method.name].package
                    self._problem(
                        self._dist(impl), impl.plugin_name, f"method '{method.name}' is already provided by '{owner}'"
                    )
                    continue
                self.methods[method.name] = dataclasses.replace(method, package=self._dist(impl))

    # -- lookups ---------------------------------------------------------------------------
    def method(self, name: str) -> SurgeryMethod:
        """The method called ``name``; the error lists what exists and the nearest name."""
        if name in self.methods:
            return self.methods[name]
        available = ", ".join(sorted(self.methods)) or "(none)"
        broken = [p for p in self.problems if p.plugin == name]
        extra = f" It is installed but failed to load: {broken[0].reason}" if broken else ""
        raise UnknownPluginError(
            f"no surgery plugin named '{name}'; available: {available}." + did_you_mean(name, self.methods) + extra
        )

    def provider(self, capability: str) -> SurgeryMethod:
        """The method that declares ``capability`` in its ``provides`` (a built-in first)."""
        for method in self.methods.values():
            if capability in method.provides:
                return method
        raise UnknownPluginError(f"no installed surgery plugin provides '{capability}'.")

    @overload
    def anatomy_of(self, model: Any, required: Literal[True] = ...) -> Anatomy: ...

    @overload
    def anatomy_of(self, model: Any, required: bool) -> Anatomy | None: ...

    def anatomy_of(self, model: Any, required: bool = True) -> Anatomy | None:
        """The anatomy of ``model``'s family bound to ``model`` (:meth:`Anatomy.bind`): the one lookup from a
        model. Its layout is resolved at the first lookup (``plan``, before any step renames a module) and kept
        for the model's life (weakly: the host does not keep a model alive), so every later lookup, the
        recipe's reference names after each step included, reads the layout the model was built with. A model
        of no known family is an error naming the supported model types, or None when not ``required``."""
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if not required and model_type not in self.anatomies:
            return None
        anatomy = self.anatomy(str(model_type), type(model).__name__)
        source, bound = self._bound.get(model, (None, None))
        if source is not anatomy or bound is None:  # first lookup, or the family's anatomy was registered anew
            bound = anatomy.bind(model)
            self._bound[model] = (anatomy, bound)
        return bound

    def anatomy(self, model_type: str, model_class: str = "model") -> Anatomy:
        if model_type in self.anatomies:
            return self.anatomies[model_type]
        raise UnsupportedModelError(
            f"{model_class} has model_type '{model_type}', which surgery has no anatomy for; "
            f"supported: {', '.join(sorted(self.anatomies))}." + did_you_mean(model_type, self.anatomies)
        )

    # -- helpers ---------------------------------------------------------------------------
    def _dist(self, impl: pluggy.HookImpl) -> str:
        return self.distributions.get(impl.plugin_name, "unknown")

    def _problem(self, distribution: str, plugin: str, reason: str) -> None:
        problem = PluginProblem(distribution, plugin, reason)
        logger.warning("%s", problem)
        self.problems.append(problem)

    def _call_registration(self, impl: pluggy.HookImpl, kind: type, hook: str) -> list[Any]:
        try:
            result = impl.function()
        except Exception as error:
            self._problem(self._dist(impl), impl.plugin_name, f"{hook} raised {type(error).__name__}: {error}")
            return []
        items = list(result or [])  # type: ignore[call-overload]  # a plugin's hook may return anything
        good = [item for item in items if isinstance(item, kind)]
        if len(good) != len(items):
            bad = next(type(item).__name__ for item in items if not isinstance(item, kind))
            self._problem(
                self._dist(impl), impl.plugin_name, f"{hook} returned a {bad}, expected {kind.__name__} objects"
            )
        return good

    def _unknown_hooks(self, plugin: Any) -> list[str]:
        return sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [] if not caller.has_spec())


def build_host(
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    builtins: bool = True,
    extra: Iterable[tuple[str, Any, str]] = (),
) -> Host:
    """A fresh host: the built-ins, the installed (or given) entry points, then ``extra``
    ``(name, plugin, distribution)`` triples (for embedding and tests)."""
    host = Host()
    if builtins:
        for name, module in BUILTIN_PLUGINS.items():
            host.load_plugin(name, module, SELF_DISTRIBUTION, strict=True)
    host.load_entry_points(entry_points)
    for name, plugin, distribution in extra:
        host.load_plugin(name, plugin, distribution)
    host.collect()
    return host


_HOST: Host | None = None


def get_host() -> Host:
    """The process-wide host, built on first use."""
    global _HOST
    if _HOST is None:
        _HOST = build_host()
    return _HOST


def set_host(host: Host | None) -> Host | None:
    """Replace the process-wide host (tests, embedding); returns the previous one."""
    global _HOST
    previous, _HOST = _HOST, host
    return previous
