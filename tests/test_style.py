"""The style gates: ruff's checks as pyproject.toml selects them and ruff's format, on everything the repository
ships, and mypy on surgery/ as pyproject.toml configures it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


CHECKED = ["surgery", "plugins", "hub_cards", "tests", "benchmarks", "examples", ".ci"]


def _ruff() -> str:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the test extra)")
    return ruff


def test_ruff_finds_nothing():
    done = subprocess.run(
        [_ruff(), "check", "--output-format", "concise", *CHECKED], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_ruff_format_leaves_every_file_as_it_is():
    """The code is formatted as ``ruff format`` writes it (the line length pyproject.toml sets): run it to mend."""
    done = subprocess.run(
        [_ruff(), "format", "--check", "--output-format", "concise", *CHECKED],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:] + "\nmend with: ruff format ."


def _module(path: str) -> str:
    """``surgery/core/apply.py`` -> ``surgery.core.apply``; a package's ``__init__.py`` is the package."""
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def test_mypy_finds_nothing_outside_the_listed_modules_and_something_in_each_listed_one(tmp_path):
    """The type gate: mypy as pyproject.toml configures it, run once without the list of modules not checked yet,
    so the test sees every module's errors: none may have one outside the list, and each listed module must still
    have one (a module whose errors were fixed leaves the list)."""
    import tomllib

    pytest.importorskip("mypy", reason="mypy is not installed (it comes with the test extra)")
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    overrides, files = settings.pop("overrides"), settings.pop("files")
    listed = {name for override in overrides if override.get("ignore_errors") for name in override["module"]}
    sections = [("mypy", settings)] + [
        ("mypy-" + ",".join(o["module"]), {k: v for k, v in o.items() if k != "module"})
        for o in overrides
        if not o.get("ignore_errors")
    ]
    ini = tmp_path / "mypy.ini"
    ini.write_text(
        "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) for name, values in sections)
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ini),
            "--cache-dir",
            str(REPO / ".mypy_cache"),
            "--no-error-summary",
            *files,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert done.returncode in (0, 1) and (errors or done.returncode == 0), done.stdout[-2000:] + done.stderr[-2000:]
    where = [(_module(line.split(":", 1)[0]), line) for line in errors]
    found = {module for module, _ in where}
    unlisted = [line for module, line in where if module not in listed]
    assert not unlisted, "mypy finds errors in modules it checks:\n" + "\n".join(unlisted[:40])
    fixed = sorted(listed - found)
    assert not fixed, (
        f"no mypy error left in {', '.join(fixed)}: take them out of [[tool.mypy.overrides]] in pyproject.toml"
    )
