"""Registering a method in a few lines: :func:`define_method` derives what can be derived, and
:func:`registration` makes the ``surgery_register_methods`` hook.

    METHOD = define_method(__name__, summary="...", config_class=MyConfig, model_types=("vit",),
                           apply=rewrite.apply, roles=("block",), paper="https://arxiv.org/abs/...")
    surgery_register_methods = registration(METHOD)

Derived: the name (``config_class.plugin``), the version (of the distribution that ships the
plugin's package, e.g. ``surgery`` for the built-ins), the card template (``card.md.j2`` beside the
plugin's ``__init__.py``, when there is one) and ``revert`` (:func:`surgery.toolkit.modules.undo`,
for rewrites recorded with :class:`~surgery.toolkit.modules.Changes`; pass ``revert=None`` for a
one-way method).
"""

from __future__ import annotations

import functools
import importlib.metadata
import sys
from pathlib import Path
from typing import Any

from surgery.core.hookspecs import hookimpl
from surgery.core.method import SurgeryMethod
from surgery.errors import SurgeryError
from surgery.toolkit.modules import undo

_UNSET: Any = object()


def define_method(
    module_name: str,
    *,
    config_class: type,
    revert: Any = _UNSET,
    version: str | None = None,
    card_template: str | None | Any = _UNSET,
    **fields: Any,
) -> SurgeryMethod:
    """A :class:`SurgeryMethod` for the plugin package ``module_name`` (pass ``__name__``)."""
    name = getattr(config_class, "plugin", "")
    if not name:
        raise SurgeryError(f"{module_name}: {config_class.__name__} sets no `plugin` name (a ClassVar[str]).")
    if card_template is _UNSET:
        card = Path(sys.modules[module_name].__file__).with_name("card.md.j2")
        card_template = str(card) if card.is_file() else None
    return SurgeryMethod(
        name=name,
        config_class=config_class,
        revert=undo if revert is _UNSET else revert,
        version=version or distribution_version(module_name),
        card_template=card_template,
        **fields,
    )


def registration(*methods: SurgeryMethod):
    """The ``surgery_register_methods`` hook implementation returning ``methods``."""

    @hookimpl
    def surgery_register_methods() -> list[SurgeryMethod]:
        return list(methods)

    return surgery_register_methods


def distribution_version(module_name: str) -> str:
    """The version of the installed distribution that provides the top-level package of ``module_name``."""
    top = module_name.partition(".")[0]
    names = _distributions().get(top) or [top]
    for distribution in names:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    module = sys.modules.get(top)
    if getattr(module, "__version__", None):
        return module.__version__
    raise SurgeryError(
        f"{module_name}: no installed distribution provides '{top}', so its version is unknown; "
        "install the plugin's package (pip install -e .) or pass version= to define_method."
    )


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())
