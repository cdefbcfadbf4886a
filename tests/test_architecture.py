"""The package's layers, checked from the source: the dependency rule, no import cycles, small modules,
and plugins that build from the anatomy's parts instead of transformers' internals.

The rule (docs/architecture.md): errors <- core <- toolkit, data <- checkpoint <- plugins <- recovery,
evaluation <- publish <- search <- the public API (surgery/__init__) <- demo <- cli. Nothing imports upward;
plugins import only errors, core and the toolkit; nothing outside a plugin imports it. Function-local
imports count like the others: they may defer a heavy dependency, never hide a cycle.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"surgery": REPO / "surgery", "surgery.plugins": REPO / "plugins", "surgery.hub_cards": REPO / "hub_cards"}
LAYERS = [  # (rank, module prefix); the longest matching prefix decides
    (0, "surgery.errors"),
    (0, "surgery._version"),
    (1, "surgery.core"),
    (2, "surgery.toolkit"),
    (2, "surgery.data"),
    (3, "surgery.checkpoint"),
    (4, "surgery.plugins"),
    (5, "surgery.evaluation"),
    (5, "surgery.recovery"),
    (6, "surgery.publish"),
    (6, "surgery.hub_cards"),
    (7, "surgery.recipe_search"),
    (8, "surgery"),  # the public API: surgery/__init__.py
    (9, "surgery.demo"),
    (10, "surgery.cli"),
]
PLUGINS_MAY_IMPORT = ("surgery.errors", "surgery._version", "surgery.core", "surgery.toolkit")
MAX_LINES = 300


def modules() -> dict[str, Path]:
    found = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            if "__pycache__" in path.parts or "assets" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = modules()


def imports(name: str, typing_only: bool = True) -> set[str]:
    """Every surgery module ``name`` imports, at module level or inside functions (and, with
    ``typing_only``, under ``if TYPE_CHECKING:``, which never runs and so cannot form a cycle)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped = set()
    if not typing_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(child) for child in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t == "surgery" or t.startswith("surgery."))
    return {t if t in MODULES else _owner(t) for t in found} - {name}


def _owner(target: str) -> str:
    while target not in MODULES and "." in target:
        target = target.rpartition(".")[0]
    return target


def rank(name: str) -> int:
    best = max((prefix for _, prefix in LAYERS if name == prefix or name.startswith(prefix + ".")), key=len)
    return dict((prefix, r) for r, prefix in LAYERS)[best]


GRAPH = {name: imports(name) for name in MODULES}
RUNTIME_GRAPH = {name: imports(name, typing_only=False) for name in MODULES}


def test_the_layers_cover_every_module():
    assert len(MODULES) > 60
    assert {rank(name) for name in MODULES} == set(range(11))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_nothing_imports_upward(name):
    upward = sorted(t for t in GRAPH[name] if rank(t) > rank(name))
    assert not upward, f"{name} (layer {rank(name)}) imports {', '.join(f'{t} (layer {rank(t)})' for t in upward)}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("surgery.plugins.")))
def test_plugins_import_only_core_and_toolkit(name):
    plugin = ".".join(name.split(".")[:3])
    bad = sorted(
        t
        for t in GRAPH[name]
        if not t.startswith(PLUGINS_MAY_IMPORT) and not (t == plugin or t.startswith(plugin + "."))
    )
    assert not bad, f"{name} imports {bad}; plugins build from surgery.core and surgery.toolkit only"


def test_nothing_outside_a_plugin_names_it():
    for name, targets in GRAPH.items():
        if name.startswith("surgery.plugins"):
            continue
        named = sorted(t for t in targets if t.startswith("surgery.plugins."))
        assert not named, f"{name} imports {named}: the host finds plugins through their hooks, never by name"
        source = MODULES[name].read_text()
        assert "surgery.plugins." not in source, f"{name} names a plugin module path"


# the core's model description: what transformers' layouts look like, with no notion of a plugin (docs/architecture.md)
DESCRIPTION = (
    "surgery.core.anatomy",
    "surgery.core.layout",
    "surgery.core.parts",
    "surgery.core.names",
    "surgery.core.families",
)


def _describes(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in DESCRIPTION)


@pytest.mark.parametrize("name", [name for name in MODULES if _describes(name)])
def test_the_model_description_never_imports_the_plugin_engine(name):
    engine = sorted(t for t in GRAPH[name] if t.startswith("surgery.core") and not _describes(t))
    assert not engine, f"{name} (the core's model description) imports the plugin engine: {', '.join(engine)}"


def test_no_import_cycles():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in RUNTIME_GRAPH.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(RUNTIME_GRAPH):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by concern (limit {MAX_LINES})"


def test_the_checker_sees_a_violation(tmp_path):
    """The AST reader finds function-local and relative imports (so the tests above can fail)."""
    MODULES["surgery.core.fake"] = path = tmp_path / "fake.py"
    try:
        path.write_text("def f():\n    from surgery.cli.main import main\n    from ..publish import cards\n")
        assert imports("surgery.core.fake") == {"surgery.cli.main", "surgery.publish.cards"}
    finally:
        del MODULES["surgery.core.fake"]


# -- plugins build from parts ------------------------------------------------------------------------
FAMILIES = ["vit", "deit", "swin", "dinov2", "dinov2_with_registers", "beit", "swinv2", "vit_msn", "data2vec"]


@functools.lru_cache(maxsize=1)
def transformers_attribute_names() -> frozenset[str]:
    """Attribute names transformers' vision modules set on themselves (``self.x = ...``, buffers)."""
    import transformers

    names = set()
    for family in FAMILIES:
        for path in (Path(transformers.__file__).parent / "models" / family).glob("modeling_*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.ctx, ast.Store)
                    and ast.unparse(node.value) == "self"
                ):
                    names.add(node.attr)
                elif (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "attr", "") == "register_buffer"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    names.add(node.args[0].value)
    return frozenset(names)


@functools.lru_cache(maxsize=1)
def surgery_api_names() -> frozenset[str]:
    """Names plugins may read: surgery's own parts, anatomy and toolkit API, torch's module API, and
    what the plugins store on their own modules (``self.x = ...`` and class attributes)."""
    from torch import nn

    from surgery.core.anatomy import Anatomy
    from surgery.core.parts import AttentionParts, BlockParts
    from surgery.toolkit.attention import AttentionCore
    from surgery.toolkit.modules import Changes

    names = set()
    for kind in (AttentionParts, BlockParts, Anatomy, AttentionCore, Changes, nn.Linear, nn.Conv2d, nn.Dropout):
        names.update(dir(kind))
    for instance in (nn.Linear(1, 1), nn.Conv2d(1, 1, 1), nn.Dropout()):
        names.update(vars(instance))
    names.update(f.name for kind in (AttentionParts, BlockParts) for f in __import__("dataclasses").fields(kind))
    for path in [*(REPO / "plugins").rglob("*.py"), *(REPO / "surgery" / "toolkit").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.add(item.target.id)
                    elif isinstance(item, ast.FunctionDef):
                        names.add(item.name)
    return frozenset(names)


PLUGIN_FILES = sorted((REPO / "plugins").rglob("*.py"))


def test_the_internals_list_is_real():
    forbidden = transformers_attribute_names() - surgery_api_names()
    assert {
        "layernorm_before",
        "intermediate",
        "attention_head_size",
        "num_attention_heads",
        "q_proj",
        "relative_position_bias_table",
        "window_size",
        "input_resolution",
        "layer_scale1",
        "cls_token",
    } <= forbidden


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_plugins_read_no_transformers_internals(path):
    forbidden = transformers_attribute_names() - surgery_api_names()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(m == "transformers" or m.startswith("transformers.") for m in modules), (
                f"{path.name}:{node.lineno} imports transformers; plugins build from surgery.core and surgery.toolkit"
            )
        if isinstance(node, ast.Attribute):
            assert node.attr not in forbidden, (
                f"{path.name}:{node.lineno} reads `{ast.unparse(node)}`, a transformers attribute; ask the anatomy's parts"
            )
        if isinstance(node, ast.Call) and (
            getattr(node.func, "id", None) in ("getattr", "hasattr", "setattr", "delattr")
            or getattr(node.func, "attr", None) in ("get_submodule", "set_submodule")
        ):
            literals = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            named = sorted({w for text in literals for w in text.split(".") if w in forbidden})
            assert not named, f"{path.name}:{node.lineno} looks up transformers attribute(s) {named} by name"


def test_every_error_class_lives_in_errors_and_is_exported():
    import surgery
    import surgery.errors as errors

    defined = {
        n
        for n, v in vars(errors).items()
        if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == errors.__name__
    }
    assert {"ExportError", "PushError", "CheckpointError", "SurgeryError"} <= defined
    assert defined <= set(surgery.__all__)
    for name, path in MODULES.items():
        if name != "surgery.errors":
            classes = [
                n.name
                for n in ast.walk(ast.parse(path.read_text()))
                if isinstance(n, ast.ClassDef) and n.name.endswith("Error")
            ]
            assert not classes, f"{name} defines {classes}; errors live in surgery/errors.py"


def test_every_plugin_folder_is_packaged():
    """pyproject.toml's packages list is the one place that names the built-ins; none may be missing."""
    import tomllib

    packages = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {f"surgery.plugins.{p.name}" for p in (REPO / "plugins").iterdir() if (p / "__init__.py").is_file()}
    subpackages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert folders <= packages and subpackages <= packages, sorted((folders | subpackages) - packages)


def test_package_docstrings_state_their_layer_as_the_table_above_has_it():
    """A package docstring that says "Layer N" says its rank in LAYERS (they drifted once)."""
    import re

    wrong = []
    for name, path in modules().items():
        if path.name != "__init__.py":
            continue
        stated = re.match(r'"""Layer (\d+)', path.read_text())
        if stated and int(stated.group(1)) != rank(name):
            wrong.append(f"{name}: says layer {stated.group(1)}, is {rank(name)}")
    assert not wrong, wrong


def test_no_import_cycles_not_even_for_typing():
    """No module reaches itself through imports, counting those under TYPE_CHECKING (``from pkg import
    submodule`` is an import of the submodule)."""
    import ast

    found = modules()
    graph = {}
    for name, path in found.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module in found:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in found else node.module)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name in found}
        graph[name] = targets - {name}
    cycles = []

    def visit(name, path):
        for target in graph[name]:
            if target in path:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in done:
                visit(target, path + [target])
        done.add(name)

    done: set[str] = set()
    for name in graph:
        if name not in done:
            visit(name, [name])
    assert not cycles, cycles[:3]


def test_a_plugins_name_appears_only_in_its_own_folder():
    """Method interactions are declared capabilities (``provides``), never another plugin's name: outside its
    own folder, no plugin's name is a string in the code (docstrings, the demo's default and the tests aside)."""
    import ast

    names = [path.name for path in ROOTS["surgery.plugins"].iterdir() if (path / "__init__.py").is_file()]
    found = []
    for module, path in modules().items():
        if module.startswith("surgery.demo"):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for name in names:
                    if node.value == name and not module.startswith(f"surgery.plugins.{name}"):
                        found.append(f"{module}: '{name}'")
    assert not found, found
