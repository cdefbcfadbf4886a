"""int8 inference in PyTorch: the integer kernels against float64 integer arithmetic, against the
fake-quant simulation on every architecture, and only where no gradient or trace needs the simulation."""

from __future__ import annotations

import pytest
import torch

import surgery
import surgery.plugins.quantize.engine as engine
from surgery.plugins.quantize.layers import QuantLinear

from conftest import ARCHS, images, tiny

pytestmark = pytest.mark.skipif(not engine.available(), reason="this torch has no oneDNN quantized linear")


def calibrated(arch: str = "vit", **options):
    model = tiny(arch, seed=3)
    return surgery.apply(model, [("quantize", options)], calibration=[images(4, seed=s) for s in range(2)]).eval()


def layers(model) -> list[QuantLinear]:
    return [m for m in model.modules() if isinstance(m, QuantLinear)]


def simulate(model, on: bool = True) -> None:
    for layer in layers(model):
        layer.int8_engine = not on


def count_engine_calls(monkeypatch) -> list[int]:
    calls = []
    real = engine.linear
    monkeypatch.setattr(engine, "linear", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("bits", [7, 8])
def test_one_layer_equals_integer_arithmetic_in_float64(bits):
    model = calibrated(activation_bits=bits)
    layer = layers(model)[0]
    x = torch.randn(2, 17, layer.in_features, generator=torch.Generator().manual_seed(5)) * 2
    with torch.no_grad():
        got = layer(x).double()
    quant = layer.input_quant
    scale, zero = quant.scale.double().item(), int(quant.zero_point.item())
    codes = torch.clamp(torch.round(x.double() * (1 / quant.scale.double())) + zero, quant.quant_min, quant.quant_max)
    weights = layer.weight_int8.double()
    exact = (codes - zero) @ weights.T * scale * layer.weight_quant.scale.double() + layer.bias.double()
    torch.testing.assert_close(got, exact, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_model_runs_on_the_kernels_and_matches_the_simulation(arch, monkeypatch):
    model = calibrated(arch)
    x = images(seed=9)
    calls = count_engine_calls(monkeypatch)
    with torch.inference_mode():
        int8 = model(pixel_values=x).logits
    assert len(calls) == len(layers(model)) > 0
    simulate(model)
    with torch.no_grad():
        simulated = model(pixel_values=x).logits
    assert len(calls) == len(layers(model))  # the simulation did not call the kernels
    torch.testing.assert_close(int8, simulated, rtol=0, atol=1e-5)


def test_gradients_tracing_and_training_use_the_simulation(monkeypatch):
    model = calibrated()
    x = images()
    calls = count_engine_calls(monkeypatch)
    model(pixel_values=x).logits.sum().backward()  # eval mode, gradients recorded
    assert layers(model)[0].weight.grad is not None
    model.train()
    with torch.no_grad():
        model(pixel_values=x)
    model.eval()
    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixels):
            return self.inner(pixel_values=pixels).logits

    with torch.no_grad():
        torch.jit.trace(Logits(model), (x,), check_trace=False)
    assert calls == []


def test_weight_only_inference_is_the_simulation_bit_for_bit():
    model = calibrated(activations="none")
    x = images()
    with torch.no_grad():
        cached = model(pixel_values=x).logits
        simulate(model)
        simulated = model(pixel_values=x).logits
    assert torch.equal(cached, simulated)


def test_a_changed_weight_or_scale_rebuilds_the_kernels(monkeypatch):
    model = calibrated()
    layer = layers(model)[0]
    x = images()
    with torch.no_grad():
        before = model(pixel_values=x).logits
        layer.weight.mul_(-1.0)  # on the same int8 grid, negated
        after = model(pixel_values=x).logits
        simulate(model)
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, model(pixel_values=x).logits, rtol=0, atol=1e-5)
        simulate(model, on=False)
        layer.input_quant.scale.mul_(2.0)  # another calibration
        changed = model(pixel_values=x).logits
        simulate(model)
        torch.testing.assert_close(changed, model(pixel_values=x).logits, rtol=0, atol=1e-5)


def test_kernels_that_are_not_exact_here_are_not_used(monkeypatch):
    model = calibrated()
    calls = count_engine_calls(monkeypatch)
    monkeypatch.setattr(engine, "exact_for", lambda quant_max: False)
    with torch.no_grad():
        model(pixel_values=images())
    assert calls == []


def test_the_self_check_sees_a_wrong_kernel(monkeypatch):
    engine.exact_for.cache_clear()
    real = engine.linear
    monkeypatch.setattr(engine, "linear", lambda *a: real(*a) + 1.0)
    try:
        assert engine.exact_for(127) is False
    finally:
        engine.exact_for.cache_clear()


@pytest.mark.parametrize("spec", ["quantize", "bivit"])
def test_a_model_that_has_run_inference_copies_and_takes_another_step(spec):
    import copy

    model = surgery.apply(tiny("vit"), spec, calibration=[images(4)]).eval() if spec == "quantize" else \
        surgery.apply(tiny("vit"), spec).eval()
    x = images()
    with torch.no_grad():
        before = model(pixel_values=x).logits
        copied = copy.deepcopy(model)
        assert torch.equal(copied(pixel_values=x).logits, before)
    surgery.apply(model, "ggem")  # plans on a copy of the model
    assert [s.plugin for s in surgery.history(model)] == [spec, "ggem"]
