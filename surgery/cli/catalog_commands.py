"""The commands that show what is installed: ``surgery list`` (the methods) and ``surgery families`` (the model
families and what each method does on them)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from surgery.core.support import supported_families


def cmd_list(args: argparse.Namespace) -> int:
    import surgery

    host = surgery.get_host()
    methods = surgery.list_methods()
    if args.json:
        print(json.dumps([_method_json(m, host) for m in methods], indent=2))
    else:
        _print_methods(methods, list(host.anatomies.values()))
    for problem in host.problems:
        print(f"surgery: warning: {problem}", file=sys.stderr)
    return 0


def _print_methods(methods: list[Any], anatomies: list[Any]) -> None:
    """A table that rich fits to the terminal (80 columns where the width is unknown), wrapping cells at
    spaces: families read "all N" or "all but X" where a method takes (nearly) every installed one;
    plugins from other packages are named under the table."""
    import shutil

    from rich import box
    from rich.console import Console
    from rich.table import Table

    from surgery._version import DISTRIBUTION

    every = [a.model_type for a in anatomies]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("families", ratio=1, min_width=max(len(name) for name in every) + 1)
    table.add_column("summary", ratio=2)
    for method in methods:
        families = supported_families(method, anatomies)
        missing = [name for name in every if name not in families]
        shown = (
            f"all {len(every)}"
            if not missing
            else f"all but {', '.join(missing)}"
            if len(missing) <= 2
            else ", ".join(families) or "none"
        )
        table.add_row(method.name, method.version, shown, method.summary)
    console = Console(width=shutil.get_terminal_size((80, 24)).columns, no_color=True, highlight=False)
    console.print(table)
    others = [f"{m.name} ({m.package})" for m in methods if m.package != DISTRIBUTION]
    if others:
        console.print(f"from other packages than {DISTRIBUTION}: {', '.join(others)}", soft_wrap=False)


def cmd_families(args: argparse.Namespace) -> int:
    """Which installed method works on which family (from their declarations), as markdown or JSON."""
    import dataclasses

    import surgery
    from surgery.core.support import support_matrix, support_table

    host = surgery.get_host()
    methods, anatomies = surgery.list_methods(), list(host.anatomies.values())
    if args.json:
        rows = [dataclasses.asdict(cell) for row in support_matrix(methods, anatomies) for cell in row]
        print(
            json.dumps(
                {
                    "families": {a.model_type: {"family": a.title, "traits": sorted(a.traits)} for a in anatomies},
                    "support": rows,
                },
                indent=2,
            )
        )
    else:
        print(support_table(methods, anatomies))
    return 0


def _method_json(method: Any, host: Any) -> dict[str, Any]:
    return {
        "name": method.name,
        "summary": method.summary,
        "model_types": list(method.model_types),
        "families": supported_families(method, list(host.anatomies.values())),
        "package": method.package,
        "version": method.version,
        "reversible": method.reversible,
        "paper": method.paper,
        "options": [{"name": n, "type": t, "default": d} for n, t, d in method.config_class.describe_options()],
    }
