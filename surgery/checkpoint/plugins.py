"""A recipe's plugins must be installed, in a version that reads it: the check both load paths share."""

from __future__ import annotations

import re
from typing import Any

from surgery._version import DISTRIBUTION as SELF, LEGACY_DISTRIBUTIONS
from surgery.core.host import get_host
from surgery.errors import RecipeError, clean_text

# a distribution name as PEP 508 allows it (letters, digits, ., _, -; starting and ending alphanumeric)
DISTRIBUTION = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9])?")


def check_plugins_installed(steps: list[dict[str, Any]], versions: bool = True) -> None:
    """Raise one error naming every plugin of the recipe that is not installed, and its package;
    with ``versions``, compare the saved plugin versions with the installed ones (:func:`check_plugin_version`)."""
    host = get_host()
    missing = []
    for index, step in enumerate(steps, 1):
        plugin = clean_text(step["plugin"])
        if step["plugin"] not in host.methods:
            package = step.get("package")
            package = SELF if package in LEGACY_DISTRIBUTIONS else package  # this project, before its rename
            version = f" {clean_text(step['plugin_version'])}" if step.get("plugin_version") else ""
            if isinstance(package, str) and DISTRIBUTION.fullmatch(package):
                source, hint = f"from package '{package}'", f"pip install {package}"
            else:  # never quote arbitrary recipe text as a command to run
                source = (
                    f"from a package whose recorded name {clean_text(package, 60)!r} is not a valid distribution name"
                    if package
                    else "from a package the recipe does not name"
                )
                hint = "install the distribution that provides it"
            missing.append(f"step {index} uses plugin '{plugin}'{version} {source}, which is not installed: {hint}")
        elif versions and step.get("plugin_version"):
            check_plugin_version(index, host.methods[step["plugin"]], step["plugin_version"])
    if missing:
        problems = [str(p) for p in host.problems]
        detail = ("\n  installed plugins that failed to load:\n  - " + "\n  - ".join(problems)) if problems else ""
        raise RecipeError("cannot replay the saved recipe:\n  - " + "\n  - ".join(missing) + detail)


def check_plugin_version(index: int, method: Any, saved: str) -> None:
    """A step saved by a newer major version of its plugin is refused (its options or weights may
    mean something else); one saved by a newer minor or patch version loads with a warning."""
    import warnings

    from packaging.version import InvalidVersion, Version

    try:
        saved_version, installed = Version(saved), Version(method.version)
    except InvalidVersion as error:
        raise RecipeError(
            f"recipe step {index}: plugin_version {clean_text(saved)!r} is not a version number."
        ) from error
    if saved_version.major > installed.major:
        raise RecipeError(
            f"recipe step {index} was saved by {method.name} {saved_version}, and {method.package} "
            f"installs {method.name} {installed}: upgrade it (pip install -U {method.package})."
        )
    if saved_version > installed:
        warnings.warn(
            f"recipe step {index} was saved by {method.name} {saved_version}, newer than the installed "
            f"{installed}; it loads, but upgrading {method.package} is safer.",
            stacklevel=3,
        )
    for version, change in sorted(method.changes.items(), key=lambda item: Version(item[0])):
        if saved_version < Version(version) <= installed:
            warnings.warn(
                f"recipe step {index} was saved by {method.name} {saved_version}; {method.name} {version} "
                f"changed what it computes: {change}",
                ComputationChangedWarning,
                stacklevel=3,
            )


class ComputationChangedWarning(UserWarning):
    """A step saved by an older plugin version loads with a computation that has changed since."""
