"""BiViT: binarizers and STE gradients against float64 references, packing, layers, recipes, sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForImageClassification

import surgery
from surgery.errors import ConfigError, IncompatibleStepsError
from surgery.toolkit.packing import pack_bits, unpack_bits
from surgery.plugins.bivit.binarize import binary_weight, sign_ste, softmax_binarize
from surgery.plugins.bivit.layers import BinaryAttention, BinaryLinear

from conftest import core, images, parts, supported, tiny


def rng(seed=0):
    return torch.Generator().manual_seed(seed)


def test_sign_ste_forward_and_clipped_gradient():
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.4, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    y = sign_ste(x)
    np.testing.assert_array_equal(y.detach().numpy(), [-1, -1, -1, 1, 1, 1, 1])
    y.backward(torch.arange(1.0, 8.0, dtype=torch.float64))
    # passes where |x| < 1; zero at the boundary, as the official BinaryQuantizer (x >= 1, x <= -1 zeroed)
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0, 3, 4, 5, 0, 0])


def test_binary_weight_forward_and_gradients():
    w = torch.randn(4, 6, generator=rng(), dtype=torch.float64, requires_grad=True)
    alpha = torch.rand(4, 1, generator=rng(1), dtype=torch.float64, requires_grad=True)
    out = binary_weight(w, alpha)
    centred = w.detach().numpy() - w.detach().numpy().mean(1, keepdims=True)
    signs = np.where(centred >= 0, 1.0, -1.0)
    np.testing.assert_allclose(out.detach().numpy(), alpha.detach().numpy() * signs, rtol=0, atol=0)
    upstream = torch.randn(4, 6, generator=rng(2), dtype=torch.float64)
    out.backward(upstream)
    np.testing.assert_allclose(alpha.grad.numpy(), (upstream.numpy() * signs).sum(1, keepdims=True), rtol=1e-12)
    # d/dW through sign(W - mean(W)): STE on the centred weight, then the mean's Jacobian
    g_centred = upstream.numpy() * alpha.detach().numpy() * (np.abs(centred) < 1)
    want = g_centred - g_centred.mean(1, keepdims=True)
    np.testing.assert_allclose(w.grad.numpy(), want, rtol=1e-12, atol=1e-12)


def test_softmax_binarize_threshold_and_softmax_gradient():
    scores = torch.randn(2, 3, 5, generator=rng(), dtype=torch.float64, requires_grad=True)
    probs = scores.softmax(-1)
    out = softmax_binarize(probs, 0.25)
    p = probs.detach().numpy()
    np.testing.assert_array_equal(out.detach().numpy(), (p >= 0.25 * p.max(-1, keepdims=True)).astype(float))
    upstream = torch.randn(2, 3, 5, generator=rng(3), dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, scores, upstream)
    (want,) = torch.autograd.grad(scores.softmax(-1), scores, upstream)  # the softmax's own gradient
    torch.testing.assert_close(grad, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cols", [1, 7, 8, 13, 64])
def test_bit_packing_round_trip(cols):
    bits = torch.rand(5, cols, generator=rng(cols)) > 0.5
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, math.ceil(cols / 8))
    assert torch.equal(unpack_bits(packed, cols), bits)


def test_fixed_alpha_is_recomputed_mean_abs_weight():
    linear = torch.nn.Linear(6, 4).double()
    layer = BinaryLinear.from_linear(linear, binarize_input=False, learnable_alpha=False, pack=True)
    assert not layer.alpha.requires_grad
    with torch.no_grad():
        linear.weight.mul_(2.0)  # XNOR-style: the scale follows the weights
    w = linear.weight.detach().numpy()
    x = torch.randn(3, 6, generator=rng(), dtype=torch.float64)
    wb = np.abs(w).mean(1, keepdims=True) * np.where(w - w.mean(1, keepdims=True) >= 0, 1.0, -1.0)
    np.testing.assert_allclose(layer(x).detach().numpy(), x.numpy() @ wb.T + linear.bias.detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("binarize_input", [True, False], ids=["W1A1", "W1A32"])
def test_binary_linear_matches_reference(binarize_input):
    linear = torch.nn.Linear(6, 4).double()
    layer = BinaryLinear.from_linear(linear, binarize_input, learnable_alpha=True, pack=True)
    assert layer.weight is linear.weight and layer.bias is linear.bias
    w = linear.weight.detach().numpy()
    np.testing.assert_allclose(layer.alpha.detach().numpy()[:, 0], np.abs(w).mean(1))
    x = torch.randn(3, 6, generator=rng(), dtype=torch.float64)
    xb = np.where(x.numpy() >= 0, 1.0, -1.0) if binarize_input else x.numpy()
    wb = np.abs(w).mean(1, keepdims=True) * np.where(w - w.mean(1, keepdims=True) >= 0, 1.0, -1.0)
    want = xb @ wb.T + linear.bias.detach().numpy()
    np.testing.assert_allclose(layer(x).detach().numpy(), want, rtol=1e-12, atol=1e-12)


def attention_reference(core, x, mask=None, swin=False):
    """sign(q) sign(k)^T / sqrt(d) (+ Swin bias and mask), softmax, SAB 0/1 map, times sign(v)."""
    b, n, c = x.shape
    parts = core.bivit_parts
    heads, d = parts.heads, parts.head_dim
    proj = lambda layer: (
        np.where(layer(x).detach().numpy() >= 0, 1.0, -1.0).reshape(b, n, heads, d).transpose(0, 2, 1, 3)
    )  # noqa: E731
    q, k, v = (proj(parts.projection(role)) for role in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    if swin:
        scores = scores + parts.position_bias().detach().numpy()  # the host's relative position bias for its window
        if mask is not None:
            windows = mask.shape[0]
            scores = (scores.reshape(b // windows, windows, heads, n, n) + mask.numpy()[None, :, None]).reshape(
                b, heads, n, n
            )
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    keep = (p >= core.bivit_ratio * p.max(-1, keepdims=True)).astype(float)
    context = torch.from_numpy((keep @ v).transpose(0, 2, 1, 3).reshape(b, n, c))
    return parts.host_output(context)[0].detach().numpy()  # the core's own output projection, where it owns one


@pytest.mark.parametrize("arch", supported("bivit"))
def test_binary_attention_matches_reference(arch):
    model = surgery.apply(tiny(arch).double(), [("bivit", {"softmax_ratio": 0.3})])
    swin = arch == "swin"
    for block in surgery.get_host().anatomy(model.config.model_type).blocks(model):
        core = block.attention.core
        assert isinstance(core, BinaryAttention)
        n = (
            block.attended_tokens()
            if swin
            else 64 + surgery.get_host().anatomy(model.config.model_type).prefix_tokens_of(model.config)
        )
        x = torch.randn(4, n, block.width, generator=rng(), dtype=torch.float64)
        mask = torch.where(torch.rand(2, n, n, generator=rng(5)) > 0.7, -100.0, 0.0).double() if swin else None
        with torch.no_grad():
            got = core(x, mask)[0].numpy()
        np.testing.assert_allclose(got, attention_reference(core, x, mask, swin), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", supported("bivit"))
def test_gradients_reach_latent_weights_and_scales(arch):
    model = surgery.apply(tiny(arch), "bivit").train()
    model.base_model(pixel_values=images()).last_hidden_state.pow(2).mean().backward()
    binary = [m for m in model.modules() if isinstance(m, BinaryLinear)]
    assert binary and all(m.weight.grad is not None and m.alpha.grad is not None for m in binary)
    assert sum(float(m.alpha.grad.abs().sum()) for m in binary) > 0


@pytest.mark.parametrize(
    "options, binary_linears, binary_cores",
    [({}, 6, 1), ({"parts": "attention"}, 4, 1), ({"parts": "mlp"}, 2, 0), ({"activations": "full"}, 6, 0)],
)
def test_parts_and_activations_choose_what_is_binarized(options, binary_linears, binary_cores):
    model = surgery.apply(tiny("vit"), [("bivit", options)])
    block = parts(model).module
    assert sum(isinstance(m, BinaryLinear) for m in block.modules()) == binary_linears
    assert sum(isinstance(m, BinaryAttention) for m in block.modules()) == binary_cores
    assert all(
        m.binarize_input == (options.get("activations", "binary") == "binary")
        for m in block.modules()
        if isinstance(m, BinaryLinear)
    )
    assert not isinstance(model.classifier, BinaryLinear) and not isinstance(
        surgery.get_host().anatomy("vit").one(model, "patch_embed")[1], BinaryLinear
    )


def test_cross_layer_binarization_in_two_steps(tmp_path):
    model = surgery.apply(tiny("vit"), [("bivit", {"parts": "attention", "pack": False})])
    model.save_pretrained(tmp_path / "stage1")
    stage1 = surgery.load(tmp_path / "stage1")  # float latent weights kept: training can go on
    surgery.apply(stage1, [("bivit", {"parts": "mlp"})])
    assert [s.options["parts"] for s in surgery.history(stage1)] == ["attention", "mlp"]
    with pytest.raises(IncompatibleStepsError, match=r"bivit already binarized the mlp of this model"):
        surgery.apply(stage1, [("bivit", {"parts": "all"})])


def test_attention_rewrites_and_binary_attention_are_refused_together():
    with pytest.raises(
        IncompatibleStepsError,
        match=r"bivit binary attention cannot follow agent_attention: it replaces the softmax attention with one that has no softmax map",
    ):
        surgery.plan(tiny("vit"), [("agent_attention", {"agents": 4}), "bivit"])
    with pytest.raises(IncompatibleStepsError, match=r"token_merge cannot follow bivit's attention binarization"):
        surgery.plan(tiny("vit"), ["bivit", "token_merge"])
    surgery.apply(tiny("vit"), [("agent_attention", {"agents": 4}), ("bivit", {"parts": "mlp"})])  # composes


def test_packed_checkpoint_is_smaller_and_reloads_exactly(tmp_path):
    config = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=1)
    fp32 = tiny("vit", **config)
    fp32.save_pretrained(tmp_path / "fp32")
    binary = surgery.apply(tiny("vit", **config), "bivit")
    binary.save_pretrained(tmp_path / "binary")
    x = images(batch=2)
    assert torch.equal(surgery.load(tmp_path / "binary")(pixel_values=x).logits, binary(pixel_values=x).logits)
    # the latent weights are packed away, not missing (transformers 5.x would report them newly initialized)
    _, info = AutoModelForImageClassification.from_pretrained(tmp_path / "binary", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]

    def linear_bytes(folder, prefix):
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            return sum(
                f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys() if k.startswith(prefix)
            )

    with safe_open(
        str(tmp_path / "binary" / "model.safetensors"), framework="pt"
    ) as f:  # as this transformers names it on disk
        layer = next(k for k in f.keys() if k.endswith(".weight_bits")).removesuffix("weight_bits")
    ratio = linear_bytes(tmp_path / "fp32", layer) / linear_bytes(tmp_path / "binary", layer)
    assert ratio >= 28, ratio  # 1 bit per weight + fp32 scale and bias per output channel
    with safe_open(str(tmp_path / "binary" / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor(layer + "weight_bits").dtype == torch.uint8 and layer + "weight" not in f.keys()


@pytest.mark.parametrize(
    "options, match",
    [
        ({"parts": "mpl"}, r"bivit: option 'parts' got 'mpl'.*Did you mean 'mlp'\?"),
        ({"activations": "binary1"}, r"option 'activations' got 'binary1'"),
        ({"softmax_ratio": 0}, r"bivit: option 'softmax_ratio' got 0.0; allowed: a number in \(0, 1\]"),
    ],
)
def test_invalid_options(options, match):
    with pytest.raises(ConfigError, match=match):
        surgery.plan(tiny("vit"), [("bivit", options)])


def test_print_shows_what_is_binary():
    name = surgery.get_host().anatomy("swin").find(tiny("swin"), "attention")[0][0].rsplit(".", 1)[1]
    cls = type(core(tiny("swin"))).__name__
    text = str(surgery.apply(tiny("swin"), "bivit"))
    assert f"({name}): Binary{cls}(" in text and "binary q/k/v, SAB ratio=0.25" in text
    assert "W1A1, learnable_alpha=True, packed=True" in text


def _reference_binary_linear(layer: BinaryLinear, x: torch.Tensor) -> torch.Tensor:
    w = layer.weight.detach().double()
    signs = torch.where(w - w.mean(dim=1, keepdim=True) >= 0, 1.0, -1.0)
    alpha = w.abs().mean(dim=1, keepdim=True) if not layer.learnable_alpha else layer.alpha.detach().double()
    inputs = torch.where(x >= 0, 1.0, -1.0).double() if layer.binarize_input else x.double()
    return inputs @ (alpha * signs).T + layer.bias.detach().double()


@pytest.mark.parametrize("learnable_alpha", [True, False])
def test_inference_binarizes_the_weights_once_and_rebuilds_after_any_change(learnable_alpha, monkeypatch):
    torch.manual_seed(0)
    layer = BinaryLinear.from_linear(
        torch.nn.Linear(16, 8), binarize_input=True, learnable_alpha=learnable_alpha, pack=False
    ).eval()
    x = torch.randn(4, 16)
    calls = []
    real = BinaryLinear._binarized
    monkeypatch.setattr(BinaryLinear, "_binarized", lambda self, fixed: calls.append(1) or real(self, fixed))

    def check(expected_calls: int) -> None:
        torch.testing.assert_close(out.double(), _reference_binary_linear(layer, x), rtol=0, atol=1e-5)
        assert len(calls) == expected_calls

    with torch.no_grad():
        out = layer(x)
        check(1)
        out = layer(x)
        check(1)  # cached
        layer.weight.mul_(-1.0)  # an in-place change autograd tracks (optimizer steps, copy_)
        out = layer(x)
        check(2)
        layer.load_state_dict({k: v * 1.5 for k, v in layer.state_dict().items()})
        out = layer(x)
        check(3)
        layer.weight = torch.nn.Parameter(torch.randn(8, 16))  # another tensor
        out = layer(x)
        check(4)
        layer.weight.data.add_(3.0)  # not tracked: eval() rebuilds
        layer.eval()
        out = layer(x)
        check(5)
    with torch.inference_mode():
        out = layer(x)
        check(6)  # a cache made in inference mode serves inference mode only
    with torch.no_grad():
        out = layer(x)
        check(7)


def test_gradients_are_never_cut_by_the_cache():
    layer = BinaryLinear.from_linear(
        torch.nn.Linear(16, 8), binarize_input=False, learnable_alpha=True, pack=False
    ).eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        layer(x)  # fills the cache
    layer(x).sum().backward()  # eval mode, gradients recorded: computed from the latent weight
    assert layer.weight.grad is not None and layer.alpha.grad is not None and layer.alpha.grad.abs().sum() > 0
    layer.train()
    assert layer._inference_cache is None


def test_the_fast_sign_gives_the_reference_values_on_zeros_and_infinities():
    x = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 3.0, -3.0, float("inf"), float("-inf")])
    expected = torch.where(x >= 0, 1.0, -1.0)
    with torch.no_grad():
        assert torch.equal(sign_ste(x), expected)
    assert torch.equal(sign_ste(x.clone().requires_grad_()).detach(), expected)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_w1a1_sums_the_signs_exactly_then_scales(grad):
    """alpha * (an exact integer) + bias in float32, bit for bit, whatever the batch split: a tie (a
    sum of 0, common at width 768 with zero biases) stays exactly the bias instead of +-rounding."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(768, 32)
    torch.nn.init.zeros_(linear.bias)
    layer = BinaryLinear.from_linear(linear, binarize_input=True, learnable_alpha=True, pack=False).eval()
    x = torch.randn(64, 768, generator=rng())
    signs_x = torch.where(x >= 0, 1.0, -1.0).double()
    w = linear.weight.detach().double()
    integers = signs_x @ torch.where(w - w.mean(1, keepdim=True) >= 0, 1.0, -1.0).double().T  # exact in float64
    want = integers.float() * layer.alpha.detach().reshape(-1) + 0.0
    with torch.set_grad_enabled(grad):
        out = layer(x)
        rows = torch.cat([layer(x[i : i + 1]) for i in range(4)])
    assert (integers == 0).any()  # the case that used to round by summation order
    assert torch.equal(out.detach(), want) and torch.equal(rows.detach(), want[:4])


def test_wide_w1a1_model_matches_its_onnx_export(tmp_path):
    """Width 768: ties are common, and the export runs another summation order (was off by 2.4)."""
    from transformers import ViTConfig, ViTForImageClassification

    from surgery.publish.export import export

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=16,
        hidden_size=768,
        num_hidden_layers=1,
        num_attention_heads=12,
        intermediate_size=1536,
        num_labels=10,
    )
    model = surgery.apply(ViTForImageClassification(config).eval(), "bivit")
    assert export(model, tmp_path / "onnx", to="onnx", check=False).max_abs_diff < 1e-5


@pytest.mark.parametrize("arch", ["vit", "swin"])
def test_w1a1_goes_to_openvino_as_binary_convolution_with_the_pytorch_logits(arch, tmp_path):
    """surgery's OpenVINO export runs every W1A1 linear as BinaryConvolution on u1 bits (exact integers), at
    the export's static batch; W1A32 keeps its float graph and its dynamic batch."""
    import json

    import openvino as ov

    from surgery.publish.export import export

    model = surgery.apply(tiny(arch), ["bivit"]).eval()
    linears = sum(isinstance(m, BinaryLinear) for m in model.modules())
    result = export(model, tmp_path / "w1a1", to="openvino", batch=4)  # raises beyond 1e-3 of the logits' scale
    report = json.loads((tmp_path / "w1a1" / "export_report.json").read_text())
    assert report["openvino_rewrites"] == [
        f"bivit: {linears} W1A1 linears run as BinaryConvolution (xnor-popcount "
        "on u1 bits); static input shape [4, 3, 32, 32]"
    ]
    assert result.max_abs_diff < 1e-5  # exact integers: float rounding only (the float graph drifted by 0.1-0.3)
    compiled = ov.Core().compile_model(str(result.path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    kinds = [
        (op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
        for op in compiled.get_runtime_model().get_ops()
    ]
    assert kinds.count(("BinaryConvolution", "u1")) == linears
    assert list(compiled.inputs[0].get_partial_shape().to_shape()) == [4, 3, 32, 32]
    w1a32 = export(surgery.apply(tiny(arch), [("bivit", {"activations": "full"})]), tmp_path / "w1a32", to="openvino")
    assert "openvino_rewrites" not in json.loads((tmp_path / "w1a32" / "export_report.json").read_text())
    assert ov.Core().read_model(str(w1a32.path)).inputs[0].get_partial_shape()[0].is_dynamic
    try:  # optimum-intel (the transformers 4.57 set only) loads it with static shapes
        from optimum.intel import OVModelForImageClassification
    except ImportError:
        return
    pixels = images(4)
    door = OVModelForImageClassification.from_pretrained(
        tmp_path / "w1a1", dynamic_shapes=False, ov_config={"INFERENCE_PRECISION_HINT": "f32"}
    )
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
    assert float((torch.as_tensor(door(pixel_values=pixels).logits) - expected).abs().max()) < 1e-5
