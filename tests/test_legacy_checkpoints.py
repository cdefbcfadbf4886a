"""Checkpoints saved by earlier code, and by the other tested transformers version, reload exactly
(fixtures from tests/fixtures/make_legacy.py).

``legacy/`` was written with transformers 4.57.6 before the package was reshaped, ``tf5/`` with
transformers 5.x: every later change to the layout, the anatomy or a plugin's forward must leave both
loading to the same weights and the same logits, on every tested transformers version.
"""

from __future__ import annotations

import json

from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

import surgery
from surgery.checkpoint.files import weights_metadata
from surgery.checkpoint.guard import GUARD_KEY
from surgery.checkpoint.recipe import read_steps

from conftest import cpu_metadata

FIXTURES = Path(__file__).parent / "fixtures"
ROOTS = ("legacy", "tf5")
CASES = sorted(
    f"{root}/{p.name}" for root in ROOTS for p in (FIXTURES / root).iterdir() if (p / "config.json").is_file()
)


@pytest.mark.parametrize("root", ROOTS)
def test_every_plugin_has_a_fixture(root):
    cases = [case for case in CASES if case.startswith(f"{root}/")]
    plugins = {step["plugin"] for case in cases for step in _recipe(case)}
    assert plugins == {"ggem", "token_merge", "agent_attention", "castling", "bivit", "quantize", "ecoformer"}
    assert len(cases) == 23
    families = {json.loads((FIXTURES / case / "config.json").read_text())["surgery_base_model_type"] for case in cases}
    assert families == {
        "vit",
        "vit_msn",
        "deit",
        "swin",
        "swinv2",
        "dinov2",
        "dinov2_with_registers",
        "beit",
        "data2vec-vision",
    }
    assert {_made(FIXTURES / case)["transformers"].split(".")[0] for case in cases} == {
        "4" if root == "legacy" else "5"
    }


def _made(folder: Path) -> dict[str, str]:
    with safe_open(str(folder / "expected.safetensors"), "pt") as handle:
        return handle.metadata() or {}


def _same_kernels(folder: Path) -> bool:
    """The same torch on the same CPU model and int8 flags: only then are the bits the same."""
    made, here = _made(folder), cpu_metadata()
    return (
        made.get("cpu_capability") == torch.backends.cpu.get_cpu_capability()
        and made.get("torch") == torch.__version__
        and all(made.get(key) == value for key, value in here.items())
    )


def _recipe(case: str) -> list[dict]:
    import json

    return json.loads((FIXTURES / case / "config.json").read_text())["quantization_config"]["steps"]


def _changed_since(case: str) -> bool:
    """Whether a plugin of the fixture's recipe changed what it computes after the version that saved it."""
    from packaging.version import Version

    methods = surgery.get_host().methods
    return any(
        Version(step["plugin_version"]) < Version(version)
        for step in _recipe(case)
        for version in methods[step["plugin"]].changes
    )


@pytest.mark.parametrize("loader", ["surgery.load", "from_pretrained"])
@pytest.mark.parametrize("case", CASES)
def test_fixture_reloads_exactly(case, loader, tmp_path):
    folder = FIXTURES / case
    model = (
        surgery.load(folder) if loader == "surgery.load" else AutoModelForImageClassification.from_pretrained(folder)
    )
    model.eval()
    expected = load_file(str(folder / "expected.safetensors"))
    engines = [m for m in model.modules() if hasattr(m, "int8_engine")]
    if engines:  # int8 inference runs integer kernels; the fixtures hold the float simulation's logits
        with torch.no_grad():
            int8 = model(pixel_values=expected["pixel_values"]).logits
        torch.testing.assert_close(int8, expected["logits"], rtol=0, atol=1e-5)
        for module in engines:
            module.int8_engine = False
    with torch.no_grad():
        logits = model(pixel_values=expected["pixel_values"]).logits
    same_bits = _same_kernels(folder) and _made(folder)["transformers"] == transformers.__version__
    if same_bits and not _changed_since(case):  # the same bits
        assert torch.equal(logits, expected["logits"]), (logits - expected["logits"]).abs().max()
    elif _same_kernels(folder):  # another transformers orders some ops differently (Swin's windows), or a plugin
        # rounds differently since the fixture's version (its ``changes`` say so; the test below checks they do)
        torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-5)
    else:  # other CPUs round matmuls differently; the weights below are still compared bit for bit
        torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-4)
    assert [s.plugin for s in surgery.history(model)] == [s["plugin"] for s in _recipe(case)]
    # the recipe names its targets in the reference layout, whatever layout this transformers has
    assert [s["targets"] for s in read_steps(model.config)] == [s["targets"] for s in _recipe(case)]
    # saving again writes the same tensors the old code wrote (the guarded one with its leading 1 where it predates the guard)
    surgery.save(model, tmp_path / "again")
    before, after = (
        load_file(str(folder / "model.safetensors")),
        load_file(str(tmp_path / "again" / "model.safetensors")),
    )
    assert sorted(before) == sorted(after)
    guarded = weights_metadata(tmp_path / "again" / "model.safetensors").get(GUARD_KEY)
    assert guarded in before
    if before[guarded].shape != after[guarded].shape:  # written before the guard: today's adds the leading 1
        assert after[guarded].shape == (1, *before[guarded].shape)
        after[guarded] = after[guarded].squeeze(0)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_step_saved_before_its_plugin_changed_its_computation_says_what_changed():
    """Every fixture whose plugin changed what it computes since the fixture's version warns once per change,
    naming it; the others load silently (the fixtures hold bivit 0.1.0 W1A1 and castling 0.1.0 steps)."""
    import warnings

    from packaging.version import Version

    from surgery.checkpoint.plugins import ComputationChangedWarning

    host = surgery.get_host()
    warned = 0
    for case in CASES:
        expected = sorted(
            f"{step['plugin']} {version} changed what it computes"
            for step in _recipe(case)
            for version in host.methods[step["plugin"]].changes
            if Version(step["plugin_version"]) < Version(version) <= Version(host.methods[step["plugin"]].version)
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            surgery.load(FIXTURES / case)
        got = sorted(
            str(w.message).split("; ", 1)[1].split(":", 1)[0]
            for w in caught
            if issubclass(w.category, ComputationChangedWarning)
        )
        assert got == expected, case
        warned += bool(got)
    assert warned >= 4  # bivit and castling fixtures in both roots


def test_built_in_plugins_record_their_changes_up_to_their_version():
    from packaging.version import Version

    for method in surgery.list_methods():
        assert all(Version(v) <= Version(method.version) for v in method.changes), method.name
    assert surgery.get_host().methods["bivit"].version == "0.2.0"
