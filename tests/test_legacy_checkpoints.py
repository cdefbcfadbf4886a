"""Checkpoints saved by earlier code reload bit-exactly (fixtures from tests/fixtures/make_legacy.py).

The folders were written before the package was reshaped; every later change to the layout, the
anatomy or a plugin's forward must leave them loading to the same weights and the same logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

import surgery

ROOT = Path(__file__).parent / "fixtures" / "legacy"
CASES = sorted(p.name for p in ROOT.iterdir() if (p / "config.json").is_file())


def test_every_plugin_has_a_fixture():
    plugins = {step["plugin"] for case in CASES for step in _recipe(case)}
    assert plugins == {"ggem", "token_merge", "agent_attention", "castling", "bivit", "quantize"}
    assert len(CASES) == 12


def _made_on_this_kind_of_cpu(folder: Path) -> bool:
    with safe_open(str(folder / "expected.safetensors"), "pt") as handle:
        made = handle.metadata() or {}
    return made.get("cpu_capability") == torch.backends.cpu.get_cpu_capability() and made.get("torch") == torch.__version__


def _recipe(case: str) -> list[dict]:
    import json

    return json.loads((ROOT / case / "config.json").read_text())["quantization_config"]["steps"]


@pytest.mark.parametrize("loader", ["surgery.load", "from_pretrained"])
@pytest.mark.parametrize("case", CASES)
def test_fixture_reloads_bit_exactly(case, loader, tmp_path):
    folder = ROOT / case
    model = surgery.load(folder) if loader == "surgery.load" else AutoModelForImageClassification.from_pretrained(folder)
    model.eval()
    expected = load_file(str(folder / "expected.safetensors"))
    with torch.no_grad():
        logits = model(pixel_values=expected["pixel_values"]).logits
    if _made_on_this_kind_of_cpu(folder):  # the same kernels: the same bits
        assert torch.equal(logits, expected["logits"]), (logits - expected["logits"]).abs().max()
    else:  # other CPUs round matmuls differently; the weights below are still compared bit for bit
        torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-4)
    assert [s.plugin for s in surgery.history(model)] == [s["plugin"] for s in _recipe(case)]
    assert [s.targets for s in surgery.history(model)] == [s["targets"] for s in _recipe(case)]
    # saving again writes the same tensors the old code wrote
    surgery.save(model, tmp_path / "again")
    before, after = load_file(str(folder / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
