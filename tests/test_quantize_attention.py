"""quantize's int8 attention matmuls (``attention="int8"``): the host's attention reproduced on every
family quantize supports (windows, shifts and position biases included), the int8 grids against a
float64 reference, calibration, save/reload, composition with token reduction, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import surgery
from surgery.core.options import ConfigError
from surgery.plugins.quantize.attention import QuantAttention
from surgery.toolkit.classes import swap_class

from conftest import images, supported, tiny, untie

INT8_ATTENTION = ("quantize", {"attention": "int8"})
CALIBRATION = [images(4, seed=s) for s in range(2)]
# softmax attention: every family quantize takes but those with cosine attention (refused below)
ARCHS = [
    arch
    for arch in supported("quantize")
    if "cosine_attention" not in surgery.get_host().anatomy(tiny(arch).config.model_type).traits
]
DEEP = {"depths": [2, 2]}  # Swin: a second block per stage, so that shifted windows (the mask) are covered


def _tiny(arch: str, dtype=torch.float32):
    return tiny(arch, **(DEEP if arch.startswith("swin") else {})).to(dtype)


def _cores(model):
    return [module for module in model.modules() if isinstance(module, QuantAttention)]


@pytest.mark.parametrize("arch", ARCHS)
def test_the_rewritten_core_reproduces_the_host_attention_in_float64(arch):
    """Without quantizers the rewritten core is the host's attention: its biases, windows and shift masks
    (float64, 1e-10); so what differs with them on is the quantization alone."""
    model = untie(_tiny(arch, torch.float64)).eval()
    x = images(3).double()
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    anatomy = surgery.get_host().anatomy(model.config.model_type)
    for parts in anatomy.blocks(model):
        swap_class(
            parts.attention.core, QuantAttention, "Int8", surgery_attention_quant=None, quant_parts=parts.attention
        )
    assert len(_cores(model)) == len(anatomy.blocks(model)) > 1
    with torch.no_grad():
        got = model(pixel_values=x).logits
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-10)


def _reference(core, x: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """float64 attention context (B, N, C) before the output projection, on the quantizers' grids."""
    parts, quant = core.quant_parts, core.surgery_attention_quant
    b, n, c = x.shape
    grid = lambda t, s, lo, hi: np.clip(np.rint(t * (1.0 / s)), lo, hi) * s  # noqa: E731  (torch: x * (1 / scale))
    heads = [
        parts.projection(role)(torch.from_numpy(x))
        .detach()
        .double()
        .numpy()
        .reshape(b, n, parts.heads, -1)
        .transpose(0, 2, 1, 3)
        for role in ("query", "key", "value")
    ]
    half = 2 ** (quant.qkv_bits - 1)  # attention_bits: 7 -> codes in [-64, 63] (the default), 8 -> [-128, 127]
    q, k, v = (
        grid(t, float(quant.get_submodule(role).scale), -half, half - 1)
        for t, role in zip(heads, ("query", "key", "value"))
    )
    scores = q @ k.transpose(0, 1, 3, 2) * parts.scale
    if bias is not None:
        scores = scores + bias
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    levels = 2**quant.bits - 1
    p = grid(p, 1.0 / levels, 0, levels)
    return (p @ v).transpose(0, 2, 1, 3).reshape(b, n, c)


@pytest.mark.parametrize("arch", ["vit", "dinov2-registers", "swin"])
def test_the_int8_grids_match_a_float64_reference(arch):
    """q, k, v on their calibrated int8 grids, P on i / (2**bits - 1), the bias after q k^T."""
    model = surgery.apply(untie(_tiny(arch)), [INT8_ATTENTION], calibration=CALIBRATION).eval()
    for parts in surgery.get_host().anatomy(model.config.model_type).blocks(model):
        core = parts.attention.core
        quant = core.surgery_attention_quant
        assert quant.state() == "calibrated" and all(
            float(quant.get_submodule(r).scale) != 1.0 for r in ("query", "key", "value")
        )
        n = parts.attended_tokens()
        x = torch.randn(4, n, parts.width, generator=torch.Generator().manual_seed(parts.index))
        bias = parts.attention.position_bias(n)
        bias = None if bias is None else bias.detach().numpy()
        captured = []
        if parts.attention.owns_output:  # transformers 5's cores apply it: the context is its input
            hook = parts.attention.projection("output").register_forward_pre_hook(
                lambda m, args: captured.append(args[0])
            )
        with torch.no_grad():
            context = core(x)[0]
        if parts.attention.owns_output:
            hook.remove()
            context = captured[0]
        context = context.numpy()
        # float32 in the model, float64 here (the same codes from the same projections): float32 rounding only
        np.testing.assert_allclose(context, _reference(core, x.numpy(), bias), rtol=0, atol=2e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_attention_calibrates_stays_close_and_reloads_exactly(arch, tmp_path):
    x = images(5, seed=3)
    base = untie(_tiny(arch)).eval()
    plain = surgery.apply(untie(_tiny(arch)), ["quantize"], calibration=CALIBRATION).eval()
    model = surgery.apply(untie(_tiny(arch)), [INT8_ATTENTION], calibration=CALIBRATION).eval()
    with torch.no_grad():
        reference, linears_only, got = (m(pixel_values=x).logits for m in (base, plain, model))
    assert len(_cores(model)) == len(surgery.get_host().anatomy(model.config.model_type).blocks(model))
    assert not torch.equal(got, linears_only)  # the attention's grids change the result...
    scale = float(reference.abs().max())
    assert float((got - reference).abs().max()) < 0.05 * scale  # ...and stay close to float
    model.save_pretrained(tmp_path)
    reloaded = surgery.load(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=x).logits, got)
    assert [c.surgery_attention_quant.state() for c in _cores(reloaded)] == ["calibrated"] * len(_cores(model))
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "model.safetensors")
    assert any(k.endswith("surgery_attention_quant.query.scale") for k in saved)
    assert not any("surgery_attention_quant" in k and "activation_post_process" in k for k in saved)  # no histograms
    if arch == "vit":  # the card says what was quantized
        text = surgery.card(tmp_path, measure=False).read_text()
        assert "run q k^T and P v in int8" in text and "fixed grid i / 127" in text


def test_revert_restores_the_host_attention_exactly():
    model = untie(_tiny("swin"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    surgery.apply(model, [INT8_ATTENTION], calibration=CALIBRATION)
    surgery.revert(model)
    assert [type(m) for m in model.modules()] == classes
    assert before.keys() == model.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("reduction", ["token_merge", "token_prune"])
def test_token_reduction_attends_on_the_int8_grids(reduction):
    """Either order: the reducing attention puts q, k, v and P on the grids and adds proportional
    attention's log(size) after the int8 q k^T (the float64 reference); both orders give one model."""
    option = {"token_merge": {"r": 8}, "token_prune": {"flops": 0.6}}[reduction]
    x, logits = images(4, seed=2), []
    for steps in ([(reduction, option), INT8_ATTENTION], [INT8_ATTENTION, (reduction, option)]):
        model = surgery.apply(untie(tiny("vit")), steps, calibration=CALIBRATION).eval()
        with torch.no_grad():
            logits.append(model(pixel_values=x).logits)
        for core in _cores(model):
            hidden = torch.randn(3, 17, core.quant_parts.width, generator=torch.Generator().manual_seed(1))
            size = torch.randint(1, 4, (3, 17, 1), generator=torch.Generator().manual_seed(2)).float()
            with torch.no_grad():
                context = core.reducing_attention(hidden, size)[0].numpy()
            bias = np.log(size.double().numpy())[:, None, None, :, 0]
            np.testing.assert_allclose(context, _reference(core, hidden.numpy(), bias), rtol=0, atol=2e-6)
        assert len(_cores(model)) == 2
    assert torch.equal(logits[0], logits[1])


@pytest.mark.parametrize(
    "steps, match",
    [
        (
            [("agent_attention", {"agents": 4}), INT8_ATTENTION],
            r"quantize: option 'attention' got 'int8'; allowed: \"float\" after a step that replaced the softmax attention",
        ),
        (
            [("quantize", {"attention": "int8", "activations": "none"})],
            r"quantize: option 'attention' got 'int8'; allowed: \"float\" with weight-only quantization",
        ),
        (
            [("quantize", {"attention": "int9"})],
            r"quantize: option 'attention' got 'int9'; allowed: 'float' \| 'int8'. Did you mean 'int8'\?",
        ),
    ],
)
def test_refusals_name_the_option_and_leave_the_model_as_it_was(steps, match):
    model = tiny("vit")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=match):
        surgery.apply(model, steps, calibration=CALIBRATION)
    assert before.keys() == model.state_dict().keys() and all(
        torch.equal(before[k], v) for k, v in model.state_dict().items()
    )


def test_cosine_attention_is_refused_with_its_reason():
    arch = next(
        a
        for a in supported("quantize")
        if "cosine_attention" in surgery.get_host().anatomy(tiny(a).config.model_type).traits
    )
    with pytest.raises(
        ConfigError, match=r"'attention' got 'int8'; allowed: \"float\" on models with cosine attention"
    ):
        surgery.apply(tiny(arch), [INT8_ATTENTION], calibration=CALIBRATION)


@pytest.mark.parametrize("arch", ["vit", "swin"])
def test_torch_export_and_compile_give_the_eager_logits(arch):
    """No graph break (the quantizers' state is read outside the trace), the same grids traced."""
    model = surgery.apply(untie(_tiny(arch)), [INT8_ATTENTION], calibration=CALIBRATION).eval()
    x = images(3)
    with torch.no_grad():
        expected = model(pixel_values=x).logits
        exported = torch.export.export(model, (), {"pixel_values": x}).module()(pixel_values=x).logits
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="eager", fullgraph=True)(pixel_values=x).logits
    torch.testing.assert_close(exported, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(compiled, expected, atol=1e-5, rtol=0)


def test_the_inference_fast_path_gives_the_fake_quant_kernels_values():
    """Eager inference rounds in four vectorised passes; training and exports use torch's fake-quant
    kernel (gradients, Q/DQ in ONNX): the same values, ties included."""
    model = surgery.apply(untie(tiny("vit")), [INT8_ATTENTION], calibration=CALIBRATION).eval()
    quant = _cores(model)[0].surgery_attention_quant
    for role in ("query", "key", "value", "probs"):
        scale = float(quant.probs_scale if role == "probs" else quant.get_submodule(role).scale)
        x = (
            torch.randn(4, 2, 9, 9, generator=torch.Generator().manual_seed(0)).abs()
            if role == "probs"
            else torch.randn(4, 2, 9, 9, generator=torch.Generator().manual_seed(0)) * 60 * scale
        )
        x[0, 0, 0, :4] = torch.tensor([0.5, 1.5, -2.5, 3.5])[:4] * scale  # ties: half to even in both
        with torch.no_grad():
            fast = quant(role, x)
        slow = quant(role, x.clone().requires_grad_())
        assert torch.equal(fast, slow.detach()), role


def test_q_k_v_codes_stay_in_seven_bits_by_default_and_older_recipes_keep_eight():
    """attention_bits=7 (the default): no code of q, k or v leaves [-64, 63], so no pair of products saturates
    the int16 sums of CPUs without VNNI; a recipe from before the option reloads with 8 ([-128, 127])."""
    from surgery.plugins.quantize.config import QuantizeConfig

    model = surgery.apply(untie(tiny("vit")), [INT8_ATTENTION], calibration=CALIBRATION).eval()
    quant = _cores(model)[0].surgery_attention_quant
    for role in ("query", "key", "value"):
        scale = quant.get_submodule(role).scale
        x = torch.randn(2, 2, 9, 9, generator=torch.Generator().manual_seed(1)) * 200 * scale
        for tracked in (False, True):  # the inference path and the fake-quant path (training, export)
            with torch.set_grad_enabled(tracked):
                codes = torch.round(quant(role, x.clone().requires_grad_(tracked)) / scale)
            assert codes.min() == -64 and codes.max() == 63, role
    assert QuantizeConfig().attention_bits == 7
    assert QuantizeConfig.from_recipe({"attention": "int8"}).attention_bits == 8
    legacy = surgery.apply(
        untie(tiny("vit")), [("quantize", {"attention": "int8", "attention_bits": 8})], calibration=CALIBRATION
    )
    assert _cores(legacy)[0].surgery_attention_quant.get_submodule("query").quant_min == -128
