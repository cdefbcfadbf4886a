"""The example third-party package in examples/, installed for real and used like any plugin."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import surgery
from surgery.errors import ConfigError, RecipeError, RevertError
from surgery.core.host import build_host, set_host

from conftest import images, tiny

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "surgery-drop-layers"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip install`` the example into a private folder (no change to the environment)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
    )
    return target


@pytest.fixture
def host(installed, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))
    eps = [
        ep
        for d in importlib.metadata.distributions(path=[str(installed)])
        for ep in d.entry_points
        if ep.group == "surgery"
    ]
    previous = set_host(build_host(entry_points=eps))
    yield surgery.get_host()
    set_host(previous)


def run_cli(*args, pythonpath=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "surgery.cli", *args], capture_output=True, text=True, env=env)


def test_surgery_list_shows_the_installed_plugin_and_its_package(installed):
    result = run_cli("list", "--json", pythonpath=installed)
    assert result.returncode == 0, result.stderr
    listed = {m["name"]: m for m in json.loads(result.stdout)}
    assert listed["drop_layers"]["package"] == "surgery-drop-layers"
    assert listed["drop_layers"]["model_types"] == ["vit", "deit"]
    assert listed["ggem"]["package"] == "vision-surgery"
    table = run_cli("list", pythonpath=installed).stdout
    assert (
        "drop_layers" in table
        and "from other packages than vision-surgery: drop_layers (surgery-drop-layers)" in table
    )


@pytest.mark.parametrize("arch", ["vit", "deit-distilled"])
def test_apply_save_reload_and_revert(host, tmp_path, arch):
    model = tiny(arch)
    x = images()
    logits = model(pixel_values=x).logits
    surgery.apply(model, [("drop_layers", {"layers": [0]}), "ggem"])
    assert len(surgery.get_host().anatomy(model.config.model_type).find(model, "block")) == 1
    assert surgery.history(model)[0].package == "surgery-drop-layers"
    model.save_pretrained(tmp_path)
    reloaded = surgery.load(tmp_path)
    assert torch.equal(reloaded(pixel_values=x).logits, model(pixel_values=x).logits)
    surgery.revert(model)
    assert torch.equal(model(pixel_values=x).logits, logits)
    with pytest.raises(RevertError, match=r"dropped blocks' weights are not in the checkpoint"):
        surgery.revert(reloaded)


def test_options_are_validated(host):
    with pytest.raises(
        ConfigError,
        match=r"drop_layers: option 'layers' got \[0, 1\]; allowed: indices below 2, keeping at least one block",
    ):
        surgery.apply(tiny("vit"), [("drop_layers", {"layers": [0, 1]})])
    with pytest.raises(ConfigError, match=r"drop_layers: option 'layers' got \[\]; allowed: a non-empty list"):
        surgery.plan(tiny("vit"), ["drop_layers"])


def test_reload_without_the_plugin_names_the_package(host, tmp_path):
    surgery.apply(tiny("vit"), [("drop_layers", {"layers": [1]})]).save_pretrained(tmp_path)
    previous = set_host(build_host(entry_points=[]))  # as if the package were not installed
    try:
        with pytest.raises(
            RecipeError,
            match=r"plugin 'drop_layers' 0.1.0 from package 'surgery-drop-layers', which is not installed: pip install surgery-drop-layers",
        ):
            surgery.load(tmp_path)
    finally:
        set_host(previous)


def test_the_search_tries_the_example_method_because_it_declares_a_space(host):
    """A third-party method that declares SurgeryMethod.search is composed like a built-in one."""
    from surgery.recipe_search.space import Space

    space = Space.build(tiny("vit"), max_steps=2)
    assert "drop_layers" in space.methods and space.methods["drop_layers"].search.needs_recovery
    assert "drop_layers+ggem" in space.combos and "drop_layers+token_merge" in space.combos
    candidate = space.candidate("drop_layers", {"drop_layers.layers": [0, 1]})
    assert candidate.needs_recovery and candidate.label == "drop_layers(layers=[0, 1])"
    assert space.params(candidate) == {
        "recipe": "drop_layers",
        "drop_layers.layers": 1,
    }  # by position: lists may be declared
