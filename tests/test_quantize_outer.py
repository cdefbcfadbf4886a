"""quantize's patch embedding and classifier (``patch_embed="int8"``, ``classifier="int8"``): every family
quantize supports, the int8 convolution against a float64 reference, the int8 engine against the
simulation, save/reload through the checkpoint guard, revert, export, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

import surgery
from surgery.core.options import ConfigError
from surgery.plugins.quantize.conv import QuantConv2d
from surgery.plugins.quantize.layers import Int8Layer, QuantLinear

from conftest import images, state_values, supported, tiny

OUTER = ("quantize", {"patch_embed": "int8", "classifier": "int8"})
CALIBRATION = [images(4, seed=s) for s in range(2)]
ARCHS = supported("quantize")


def _roles(model, role):
    return surgery.get_host().anatomy(model.config.model_type).find(model, role)


def _conv_reference(conv: QuantConv2d, x: torch.Tensor) -> np.ndarray:
    """float64 convolution of the pixels on their uint8 grid with the weights on their int8 grid; the codes
    rounded as torch's fake-quant rounds them (x * (1 / scale) in float32)."""
    quant = conv.input_quant
    scale, zero = quant.scale.float(), int(quant.zero_point)
    codes = torch.clamp(torch.round(x * torch.reciprocal(scale)) + zero, 0, int(quant.quant_max))
    pixels = (codes.double() - zero) * scale.double()
    weight = conv.weight_int8.double() * conv.weight_quant.scale.double()[:, None, None, None]
    out = torch.nn.functional.conv2d(
        pixels,
        weight,
        None if conv.bias is None else conv.bias.detach().double(),
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
    )
    return out.numpy()


@pytest.mark.parametrize("arch", ARCHS)
def test_patch_embedding_and_classifier_run_int8_as_a_float64_reference(arch):
    model = surgery.apply(tiny(arch), [OUTER], calibration=CALIBRATION).eval()
    ((_, conv),) = _roles(model, "patch_embed")
    heads = [head for _, head in _roles(model, "classifier")]
    assert isinstance(conv, QuantConv2d) and conv.state() == "calibrated" and conv.patchwise
    assert heads and all(isinstance(head, QuantLinear) and head.state() == "calibrated" for head in heads)
    x = images(3, seed=5)
    with torch.no_grad():
        got = conv(x)  # the int8 engine: the flattened patches on the linears' kernels
        assert conv._inference_cache is not None  # (built by the engine path only)
        np.testing.assert_allclose(got.double().numpy(), _conv_reference(conv, x), rtol=0, atol=2e-5)
    # every int8 layer's engine gives its simulation's values on the input it sees in the model (per layer: in the
    # whole model, float rounding of 1e-7 moves a later layer's code across a rounding boundary now and then)
    seen = {}
    hooks = [
        layer.register_forward_hook(lambda layer, args, out: [seen.setdefault(layer, args[0].clone())] and None)
        for layer in model.modules()
        if isinstance(layer, Int8Layer)
    ]
    with torch.no_grad():
        model(pixel_values=x)
        for hook in hooks:
            hook.remove()
        assert conv in seen and all(head in seen for head in heads)
        for layer, inputs in seen.items():
            engine = layer(inputs)
            layer.int8_engine = False
            torch.testing.assert_close(engine, layer(inputs), atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["vit", "swin", "deit-distilled"])
def test_outer_layers_change_the_result_little_reload_exactly_and_revert(arch, tmp_path):
    x = images(5, seed=3)
    base = tiny(arch).eval()
    before = state_values(base)
    linears_only = surgery.apply(tiny(arch), ["quantize"], calibration=CALIBRATION).eval()
    model = surgery.apply(tiny(arch), [OUTER], calibration=CALIBRATION).eval()
    with torch.no_grad():
        reference, plain, got = (m(pixel_values=x).logits for m in (base, linears_only, model))
    assert not torch.equal(got, plain)
    assert float((got - reference).abs().max()) < 0.1 * float(reference.abs().max())  # untrained, 7-bit pixels: loose
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as saved:
        keys, guarded = set(saved.keys()), saved.metadata()["surgery_guarded_tensor"]
    ((conv_name, _),) = _roles(model, "patch_embed")
    # int8 codes on disk, not the float weight: the plain class is refused by the bias instead
    assert f"{conv_name}.weight_int8" in keys and f"{conv_name}.weight" not in keys and guarded == f"{conv_name}.bias"
    reloaded = surgery.load(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=x).logits, got)
    surgery.revert(model)
    after = state_values(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules())


def test_weight_only_patch_embedding_multiplies_by_the_dequantized_weights():
    model = surgery.apply(tiny("vit"), [("quantize", {"activations": "none", "patch_embed": "int8"})]).eval()
    ((_, conv),) = _roles(model, "patch_embed")
    assert conv.state() == "weight-only" and conv.input_quant is None
    x = images(2)
    weight = conv.weight_int8.float() * conv.weight_quant.scale[:, None, None, None]
    with torch.no_grad():
        torch.testing.assert_close(
            conv(x), torch.nn.functional.conv2d(x, weight, conv.bias, conv.stride), atol=1e-6, rtol=0
        )


def test_a_model_without_a_classifier_linear_is_refused_and_left_as_it_was():
    model = tiny("vit")
    model.classifier = torch.nn.Identity()  # as transformers builds it with num_labels=0
    before = state_values(model)
    with pytest.raises(
        ConfigError,
        match=r"quantize: option 'classifier' got 'int8'; allowed: \"float\" on this vit model: "
        r"it has no plain Linear as its classifier",
    ):
        surgery.apply(model, [("quantize", {"classifier": "int8"})], calibration=CALIBRATION)
    after = state_values(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_torch_export_gives_the_eager_logits():
    model = surgery.apply(tiny("vit"), [OUTER], calibration=CALIBRATION).eval()
    x = images(3)
    with torch.no_grad():
        expected = model(pixel_values=x).logits
        exported = torch.export.export(model, (), {"pixel_values": x}).module()(pixel_values=x).logits
    torch.testing.assert_close(exported, expected, atol=1e-5, rtol=0)


def test_the_card_says_what_was_quantized(tmp_path):
    model = surgery.apply(tiny("vit"), [("quantize", {"patch_embed": "int8"})], calibration=CALIBRATION)
    model.save_pretrained(tmp_path)
    text = surgery.card(tmp_path, measure=False).read_text()
    assert "the blocks' linears, the patch embedding convolution)" in text and "Kept in float: the classifier." in text
