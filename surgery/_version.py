"""The version and the distribution name, in one place (pyproject.toml reads the version from here).

The import name is ``surgery`` and the command is ``surgery``; the distribution is ``vision-surgery``
because ``surgery`` on the package index is an unrelated tool: every install hint names
:data:`DISTRIBUTION`."""

__version__ = "0.1.0"
DISTRIBUTION = "vision-surgery"
# names this project's own recipes, markers and plugins were recorded under before the rename
LEGACY_DISTRIBUTIONS = ("surgery",)
