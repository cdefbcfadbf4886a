"""Plugin discovery through fake installed distributions: good plugins load, broken ones are reported."""

from __future__ import annotations

import importlib.metadata
import textwrap

import pytest

from surgery.core.host import BUILTIN_PLUGINS, build_host

GOOD = """
import dataclasses, typing
import surgery

@dataclasses.dataclass(frozen=True)
class Options(surgery.SurgeryConfig):
    plugin: typing.ClassVar[str] = "noop"

@surgery.hookimpl
def surgery_register_methods():
    return [surgery.SurgeryMethod(name="noop", summary="does nothing", config_class=Options,
                                  model_types=("vit",), apply=lambda m, c, a: surgery.Rewrite([]))]
"""

BROKEN = {
    "fails-import": ("raise RuntimeError('missing CUDA')", "import failed: RuntimeError: missing CUDA"),
    "bad-signature": (
        "import surgery\n@surgery.hookimpl\ndef surgery_veto(model, plan_steps):\n    return []",
        "surgery_veto.*plan_steps",
    ),
    "unknown-hook": (
        "import surgery\n@surgery.hookimpl\ndef surgery_register_method():\n    return []",
        r"unknown hook\(s\) surgery_register_method. Did you mean 'surgery_register_methods'\?",
    ),
    "wrong-return": (
        "import surgery\n@surgery.hookimpl\ndef surgery_register_methods():\n    return ['ggem']",
        "returned a str, expected SurgeryMethod objects",
    ),
    "raises-in-hook": (
        "import surgery\n@surgery.hookimpl\ndef surgery_register_methods():\n    raise KeyError('boom')",
        "surgery_register_methods raised KeyError",
    ),
    "duplicate-name": (
        GOOD.replace('name="noop"', 'name="ggem"'),
        "method 'ggem' is already provided by 'vision-surgery'",
    ),
}


def fake_distribution(site, dist_name: str, module_name: str, source: str) -> None:
    """An installed distribution as pip leaves it: a module and a dist-info with an entry point."""
    (site / f"{module_name}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist_name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[surgery]\n{module_name} = {module_name}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def entry_points(site):
    return [
        ep
        for dist in importlib.metadata.distributions(path=[str(site)])
        for ep in dist.entry_points
        if ep.group == "surgery"
    ]


def test_builtins_are_registered_like_plugins():
    host = build_host(entry_points=[])
    assert host.methods["ggem"].package == "vision-surgery"
    assert host.distributions["ggem"] == "vision-surgery"
    assert host.problems == []


def test_a_third_party_plugin_is_discovered_with_its_distribution(site):
    fake_distribution(site, "surgery-noop", "surgery_noop_plugin", GOOD)
    host = build_host(entry_points=entry_points(site))
    assert host.methods["noop"].package == "surgery-noop"
    assert set(host.methods) == set(BUILTIN_PLUGINS) | {"noop"}


def test_broken_plugins_are_reported_and_do_not_break_the_others(site):
    fake_distribution(site, "surgery-noop", "surgery_noop_plugin", GOOD)
    for index, (dist, (source, _)) in enumerate(BROKEN.items()):
        fake_distribution(site, f"surgery-{dist}", f"broken_plugin_{index}", source)
    host = build_host(entry_points=entry_points(site))
    assert set(host.methods) == set(BUILTIN_PLUGINS) | {"noop"}
    assert host.methods["ggem"].package == "vision-surgery"
    reported = {p.distribution: str(p) for p in host.problems}
    assert set(reported) == {f"surgery-{d}" for d in BROKEN}
    import re

    for dist, (_, reason) in BROKEN.items():
        assert re.search(reason, reported[f"surgery-{dist}"]), reported[f"surgery-{dist}"]
        assert f"from package 'surgery-{dist}' was not loaded" in reported[f"surgery-{dist}"]


def test_unknown_name_mentions_a_plugin_that_failed_to_load(site):
    from surgery.errors import UnknownPluginError

    fake_distribution(site, "surgery-fails-import", "fails_import_plugin", BROKEN["fails-import"][0])
    host = build_host(entry_points=entry_points(site))
    with pytest.raises(
        UnknownPluginError, match=r"installed but failed to load: import failed: RuntimeError: missing CUDA"
    ):
        host.method("fails_import_plugin")


def test_a_builtin_that_fails_to_import_is_an_error(monkeypatch):
    """Third-party failures are reported and isolated; a broken built-in is a broken installation."""
    import surgery.core.host as host_module
    from surgery.errors import SurgeryError

    monkeypatch.setitem(host_module.BUILTIN_PLUGINS, "ghost", "surgery.plugins.no_such_plugin")
    with pytest.raises(SurgeryError, match=r"the built-in plugin 'ghost' failed to load: ModuleNotFoundError"):
        build_host(entry_points=[])


def test_builtins_are_found_in_the_plugins_package_once():
    from pathlib import Path

    folders = {
        p.name for p in (Path(__file__).resolve().parents[1] / "plugins").iterdir() if (p / "__init__.py").is_file()
    }
    assert (
        set(BUILTIN_PLUGINS)
        == folders
        == {
            "agent_attention",
            "bivit",
            "castling",
            "ecoformer",
            "ggem",
            "quantize",
            "token_merge",
            "token_prune",
            "token_transform",
        }
    )


def test_define_method_derives_name_version_card_and_revert():
    import surgery
    from surgery.toolkit.modules import undo

    method = surgery.get_host().method("ggem")  # no version= given: the distribution's
    assert (method.name, method.version, method.revert) == ("ggem", surgery.__version__, undo)
    method = surgery.get_host().method("castling")  # version= given: its computation changed since 0.1.0
    assert (method.name, method.version, method.revert) == ("castling", "0.1.1", undo)
    assert method.card_template.endswith("plugins/castling/card.md.j2") or method.card_template.endswith(
        "castling/card.md.j2"
    )
    assert surgery.get_host().provider("int8").name == "quantize"
    assert not surgery.get_host().method("quantize").export_exact and surgery.get_host().method("ggem").export_exact


def test_a_builtin_with_an_unknown_hook_is_an_error(monkeypatch):
    import sys
    import types

    import surgery
    import surgery.core.host as host_module
    from surgery.errors import SurgeryError

    module = types.ModuleType("fake_builtin_with_typo")
    module.surgery_register_method = surgery.hookimpl(lambda: [])
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(host_module.BUILTIN_PLUGINS, "typo", module.__name__)
    with pytest.raises(
        SurgeryError,
        match=r"built-in plugin 'typo' implements unknown hook\(s\) surgery_register_method\..*Did you mean 'surgery_register_methods'",
    ):
        build_host(entry_points=[])
