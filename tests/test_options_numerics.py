"""Options and numerics that used to be accepted and harmful: non-finite numbers, out-of-range sizes,
repeated indices and keys, a dict of steps, zero tokens under castling, and bivit's scale choice."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import images, tiny

import surgery
from surgery.cli import main
from surgery.errors import ConfigError, SurgeryError

NON_FINITE = [
    ("ggem", "eps"),
    ("ggem", "p_init"),
    ("castling", "aux_weight"),
    ("castling", "aux_penalty"),
    ("castling", "sparse_threshold"),
    ("castling", "aux_decay"),
]


@pytest.mark.parametrize("plugin,field", NON_FINITE)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_refused_in_every_option(plugin, field, value):
    with pytest.raises(ConfigError, match=rf"{plugin}: option '{field}' got {value}; allowed: a finite number"):
        surgery.plan(tiny("vit"), [(plugin, {field: value})])


@pytest.mark.parametrize("text", ["Infinity", "-Infinity", "NaN"])
def test_the_cli_refuses_non_finite_text_and_writes_no_invalid_json(tmp_path, capsys, text):
    source = tmp_path / "src"
    tiny("vit").save_pretrained(source)
    assert main(["apply", str(source), "-p", f"ggem:p_init={text}", "-o", str(tmp_path / "out")]) == 2
    assert "option 'p_init' got" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["recover", str(source), "--data", "digits", "-o", str(tmp_path / "r"), f"--lr={text}"]) == 2
    assert "recover: option 'lr' got" in capsys.readouterr().err


def test_saved_recipes_are_strict_json(tmp_path):
    surgery.apply(tiny("vit"), [("ggem", {"p_init": 2.5})]).save_pretrained(tmp_path)
    json.loads((tmp_path / "config.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))


@pytest.mark.parametrize(
    "arch,spec,message",
    [
        (
            "vit",
            ("castling", {"kernel_size": 10001}),
            r"an odd integer up to 127 \(block 0 convolves a sequence of 64",
        ),
        ("swin", ("castling", {"kernel_size": 33}), r"an odd integer up to 31 \(block 0 convolves a sequence of 16"),
        ("vit", ("castling", {"layers": [0, 0]}), r"distinct block indices from 0 to 1, each once"),
        ("vit", ("agent_attention", {"layers": [1, 1]}), r"distinct block indices from 0 to 1, each once"),
        ("vit", ("agent_attention", {"agents": 10000}), r"at most the 64 patches of block 0's 8x8 grid"),
        ("swin", ("agent_attention", {"agents": 100}), r"at most the 64 patches of block 0's 8x8 grid"),
    ],
)
def test_sizes_beyond_the_model_are_refused_before_anything_changes(arch, spec, message):
    model = tiny(arch)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=message):
        surgery.apply(model, [spec])
    assert surgery.history(model) == [] and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_dict_of_steps_is_refused_not_silently_stripped_of_its_options():
    with pytest.raises(ConfigError, match=r"steps must be a list, got a dict \('ggem'\)"):
        surgery.apply(tiny("vit"), {"ggem": {"p_init": 2.0}})


def test_repeated_cli_option_keys_are_refused(tmp_path, capsys):
    source = tmp_path / "src"
    tiny("vit").save_pretrained(source)
    assert main(["plan", str(source), "-p", "ggem:p_init=2,p_init=3"]) == 2
    assert "option 'p_init' is given twice" in capsys.readouterr().err


def test_castling_normalisation_has_a_finite_gradient_at_zero():
    from surgery.plugins.castling.layers import NORM_EPS, unit

    x = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    unit(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 4), 1 / NORM_EPS))  # d(x / eps)/dx, not NaN
    y = torch.randn(3, 5, dtype=torch.float64)
    np.testing.assert_allclose(unit(y).numpy(), (y / y.norm(dim=-1, keepdim=True)).numpy(), rtol=1e-12)


def test_castling_recovery_refuses_zero_prefix_tokens_with_the_reason():
    teacher = tiny("deit-distilled", num_labels=10)  # freshly initialised: zero cls and distillation tokens
    student = surgery.apply(copy.deepcopy(teacher), ["castling"])
    data = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with pytest.raises(
        SurgeryError,
        match=r"castling: deit.embeddings.cls_token, deit.embeddings.distillation_token are "
        r"all zero \(an untrained model\)",
    ):
        surgery.recover(student, teacher, data, epochs=1, batch_size=8, progress=False)


@pytest.mark.parametrize("learnable", [True, False])
@pytest.mark.parametrize("activations", ["binary", "full"])
def test_bivit_scales_are_configuration_not_a_gradient_flag(tmp_path, learnable, activations):
    model = surgery.apply(tiny("vit"), [("bivit", {"learnable_alpha": learnable, "activations": activations})]).eval()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "alpha"):
                module.alpha.mul_(1.5)  # as training would move a learned scale away from mean|W|
    x = images()
    expected = model(pixel_values=x).logits.detach()
    model.requires_grad_(False)  # frozen, as PEFT or an inference setup freezes it
    assert torch.equal(model(pixel_values=x).logits, expected)
    model.save_pretrained(tmp_path)
    assert torch.equal(surgery.load(tmp_path)(pixel_values=x).logits, expected)
