"""int8 inference in PyTorch: the integer kernels against float64 integer arithmetic, against the
fake-quant simulation on every architecture, and only where no gradient or trace needs the simulation."""

from __future__ import annotations

import pytest
import torch

import surgery
from surgery.errors import SurgeryError
import surgery.plugins.quantize.engine as engine
import surgery.plugins.quantize.kernels as kernels
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
    real = engine.Int8Linear.__call__
    monkeypatch.setattr(engine.Int8Linear, "__call__", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("kernel", list(kernels.KERNELS))
@pytest.mark.parametrize("bits", [7, 8])
def test_one_layer_equals_integer_arithmetic_in_float64(bits, kernel):
    if not kernels.exact(kernels.KERNELS[kernel], 2**bits - 1):
        pytest.skip(f"{kernel} is missing or not exact for {bits}-bit codes on this CPU")
    model = calibrated(activation_bits=bits)
    layer = layers(model)[0]
    layer.int8_kernel = kernel
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


@pytest.mark.parametrize("name", list(kernels.KERNELS))
def test_the_self_check_sees_a_wrong_kernel(name, monkeypatch):
    import dataclasses

    kernel = kernels.KERNELS[name]
    if not kernel.available():
        pytest.skip(f"this torch has no {name} int8 linear")
    assert kernels.exact(kernel, 127)
    wrong = dataclasses.replace(kernel, run=lambda *a: kernel.run(*a) + 1.0)
    assert kernels.exact(wrong, 127) is False
    kernels.forget()
    monkeypatch.setitem(kernels.KERNELS, name, wrong)
    try:
        assert kernels.choice(127)[0] is not wrong
    finally:
        kernels.forget()


@pytest.mark.parametrize("spec", ["quantize", "bivit"])
def test_a_model_that_has_run_inference_copies_and_takes_another_step(spec):
    import copy

    model = (
        surgery.apply(tiny("vit"), spec, calibration=[images(4)]).eval()
        if spec == "quantize"
        else surgery.apply(tiny("vit"), spec).eval()
    )
    x = images()
    with torch.no_grad():
        before = model(pixel_values=x).logits
        copied = copy.deepcopy(model)
        assert torch.equal(copied(pixel_values=x).logits, before)
    surgery.apply(model, "ggem")  # plans on a copy of the model
    assert [s.plugin for s in surgery.history(model)] == [spec, "ggem"]


def test_the_kernel_is_chosen_by_measurement_and_can_be_set(monkeypatch):
    kernels.forget()
    try:
        chosen, reason = kernels.choice(127)
        assert chosen is not None and chosen.name in kernels.KERNELS
        exact_here = [k for k in kernels.KERNELS.values() if kernels.exact(k, 127)]
        assert reason.startswith("fastest here") if len(exact_here) > 1 else reason == "the only exact kernel here"
        for name in (k.name for k in exact_here):
            monkeypatch.setenv(kernels.ENVIRONMENT, name)
            kernels.forget()
            assert kernels.choice(127) == (kernels.KERNELS[name], f"set by {kernels.ENVIRONMENT}")
        monkeypatch.setenv(kernels.ENVIRONMENT, "onedn")
        kernels.forget()
        with pytest.raises(SurgeryError, match=r"SURGERY_INT8_KERNEL got 'onedn'; allowed: onednn, fbgemm.*'onednn'"):
            kernels.choice(127)
    finally:
        kernels.forget()


def test_a_layer_pinned_to_another_kernel_gives_the_same_numbers_and_a_wrong_name_is_refused():
    model = calibrated()
    x = images(seed=4)
    results = {}
    for name, kernel in kernels.KERNELS.items():
        if kernels.exact(kernel, 127):
            for layer in layers(model):
                layer.int8_kernel = name
            with torch.inference_mode():
                results[name] = model(pixel_values=x).logits
    assert results
    for got in results.values():  # the same integer products; only the float epilogues differ
        torch.testing.assert_close(got, next(iter(results.values())), rtol=0, atol=1e-5)
    layers(model)[0].int8_kernel = "cuda"
    with pytest.raises(SurgeryError, match=r"int8_kernel got 'cuda'; allowed: onednn, fbgemm"), torch.inference_mode():
        model(pixel_values=x)


def test_the_self_check_runs_on_the_cpu_whatever_the_default_device():
    """transformers 5 builds a model being loaded under a meta default device: the kernels' self-check and
    timing, made once per process while the layers are built, must not be made on meta (they were: every
    kernel then counted as inexact for the rest of the process, and int8 ran as the simulation)."""
    kernels.forget()
    with torch.device("meta"):
        under_meta = {name: kernels.exact_here(name, 127) for name in kernels.KERNELS}
        chosen, _ = kernels.choice(127, 32, 32)
    kernels.forget()
    assert under_meta == {name: kernels.exact(kernel, 127) for name, kernel in kernels.KERNELS.items()}
    assert (chosen is None) == (not any(under_meta.values()))
    kernels.forget()
