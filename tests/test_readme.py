"""The README's quick start stays true: two set-up commands, and CI runs the test one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

from surgery.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quick_start_has_two_commands_and_ci_runs_the_test_one():
    run_demo, run_tests = quick_start_commands()
    assert (
        run_demo.endswith(".venv/bin/surgery demo")
        and "pip install -q -e . -c constraints/tf4.57-optimum.txt" in run_demo
    )
    assert "-c constraints/tf4.57-optimum.txt" in run_tests
    assert run_tests.endswith("python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == run_tests


def test_every_documented_command_exists():
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    text = "".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    documented = set(re.findall(r"^surgery ([a-z-]+)", text, re.M))
    options = {o for action in parser._actions for o in action.option_strings}  # surgery --version
    assert documented <= commands | options, documented - commands - options


def test_every_documented_import_resolves():
    """Import lines in the README's Python blocks name modules and objects that exist."""
    import importlib

    text = "".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    lines = [m for block in blocks for m in re.findall(r"^from (surgery[\w.]*) import ([\w, ]+)", block, re.M)]
    assert lines
    for module, names in lines:
        imported = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(imported, name), f"README: `from {module} import {name}` fails"


def test_every_relative_link_in_the_docs_leads_somewhere():
    """The README and the pages under docs/ link files of the repository that exist."""
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"(https?|mailto):", target) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
