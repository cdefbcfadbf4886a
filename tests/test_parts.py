"""The parts of a block reproduce the host block: on every built-in family with global attention (ViT,
ViT-MSN, DeiT, DINOv2 with its layer scale, with and without registers, BEiT and data2vec-vision with
their position bias per block) and on Swin's windows, in
whichever layout this transformers has; plus layout selection from the model and the anatomy's words
for overlaps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import images, tiny
from conftest import parts as block_parts_of

import surgery
from surgery.core.anatomy import Anatomy, Layout
from surgery.core.claims import describe
from surgery.core.parts import block_parts
from surgery.errors import UnsupportedModelError


def composed(parts, hidden, bias=None):
    """The block rebuilt from its parts alone: attention (softmax, from the projections, plus ``bias``),
    residual, MLP."""
    q, k, v = parts.attention.qkv(parts.attention_input(hidden))
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=parts.attention.scale)
    context = context.transpose(1, 2).reshape(hidden.shape[0], -1, parts.width)
    return parts.mlp_residual(parts.attention_residual(hidden, context))


GLOBAL = ["vit", "vit-msn", "deit-distilled", "dinov2", "dinov2-registers", "beit", "data2vec-vision"]


def position_bias(parts):
    """The block's relative position bias at the config's grid: the core's own (4.57 layouts) or the
    module the block computes it in and hands the core (BEiT >= 5); None for families without one."""
    host = parts.part("host_bias") if parts.layout.host_bias else None
    return host(host.window_size) if host is not None else parts.attention.position_bias()


@pytest.mark.parametrize("arch", GLOBAL)
def test_parts_rebuild_the_host_block_exactly(arch):
    model = tiny(arch).double().eval()
    anatomy = surgery.get_host().anatomy(model.config.model_type)
    layout, block = anatomy.layout_of(model).block, anatomy.find(model, "block")[1][1]
    with torch.no_grad():  # a layer scale that is not 1 or one value (DINOv2, BEiT)
        for name, parameter in block.named_parameters():
            if name.startswith(("layer_scale", "lambda_")):
                parameter.uniform_(0.2, 1.5)
            if name.endswith("relative_position_bias_table"):  # a bias that moves the logits
                parameter.normal_(0.0, 1.0)
    parts = block_parts(1, "block", block, layout, (8, 8))
    bias = position_bias(parts)
    assert (bias is not None) == ("relative_position_bias" in anatomy.traits)
    tokens = 65 if bias is not None else 66  # BEiT's bias covers the config's 8x8 grid and cls
    hidden = torch.randn(3, tokens, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = block(hidden, resolution=(32, 32)) if bias is not None else block(hidden)
        expected = expected[0] if isinstance(expected, tuple) else expected
        torch.testing.assert_close(composed(parts, hidden, bias), expected, rtol=0, atol=1e-12)
        if bias is not None:  # the bias is not zero: without it the block differs
            assert (composed(parts, hidden) - expected).abs().max() > 1e-3
    assert (parts.attention.heads, parts.attention.head_dim, parts.width) == (4, 8, 32)
    scale = parts.part("layer_scale1")
    assert (scale is not None and not isinstance(scale, float)) == ("layer_scale" in anatomy.traits)


def test_swin_parts_give_the_windowed_core_with_its_position_bias():
    model = tiny("swin").double().eval()
    anatomy = surgery.get_host().anatomy("swin")
    parts = anatomy.blocks(model)[0]
    assert parts.windowed and parts.grid == (8, 8) and parts.window() == (4, 0) and parts.attended_tokens() == 16
    windows = torch.randn(8, 16, parts.width, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = parts.attention.core(windows)[0]
        q, k, v = parts.attention.qkv(windows)
        scores = q @ k.transpose(-1, -2) / parts.attention.head_dim**0.5 + parts.attention.position_bias()
        ours = parts.attention.host_output((scores.softmax(-1) @ v).transpose(1, 2).reshape(8, 16, parts.width))
    torch.testing.assert_close(
        ours[0], expected, rtol=0, atol=1e-12
    )  # with the core's own output projection, where it owns one


def test_parts_resolve_replaced_modules_when_used():
    model = tiny("vit")
    parts = surgery.get_host().anatomy("vit").blocks(model)[0]
    before = parts.part("mlp_in")
    surgery.apply(model, [("quantize", {"activations": "none"})])
    assert parts.part("mlp_in") is not before and type(parts.part("mlp_in")).__name__ == "QuantLinear"


def test_the_layout_is_chosen_from_the_model():
    base = surgery.get_host().anatomy("vit")
    model = tiny("vit")
    real = base.layout_of(model)  # the built-in layout that matches this transformers' ViT
    renamed = {role: tuple(p.replace("vit.", "vision.") for p in patterns) for role, patterns in real.roles.items()}
    two = Anatomy(
        "vit",
        renamed,
        1,
        "cls",
        base.readout_heads,
        base.readout_width,
        name="5.9-like",
        layouts=(Layout(real.name, real.roles, real.block),),
    )
    assert two.layout_of(model).name == real.name
    assert len(two.blocks(model)) == 2
    with pytest.raises(
        UnsupportedModelError,
        match=r"has no module for role 'pooler' \(looked for nowhere in the layouts '5.9-like'; its top-level modules: classifier, vit\)",
    ):
        Anatomy(
            "vit",
            {**renamed, "pooler": ("nowhere",)},
            1,
            "cls",
            base.readout_heads,
            base.readout_width,
            name="5.9-like",
        ).check(model, ("pooler",))


def test_overlaps_are_described_in_the_anatomy_words():
    model = tiny("swin")
    anatomy = surgery.get_host().anatomy("swin")
    attention = [name for name, _ in anatomy.find(model, "attention")]
    assert describe(model, anatomy, attention[1]) == "the self-attention of block 1"
    assert describe(model, anatomy, "swin.layernorm") == "the final norm (swin.layernorm)"
    assert describe(model, anatomy, "swin.encoder.layers.1.blocks.0") == "block 1"


def test_role_groups_follow_the_layout():
    model = tiny("deit")
    anatomy = surgery.get_host().anatomy("deit")
    assert anatomy.group(model, "linears") == ("query", "key", "value", "attn_output", "mlp_in", "mlp_out")
    assert len(anatomy.find_group(model, "mlp_linears")) == 4
    with pytest.raises(
        UnsupportedModelError, match="no role group 'linear'; groups: attention_linears, linears, mlp_linears"
    ):
        anatomy.group(model, "linear")


def test_prefix_token_parameters_come_from_the_anatomy():
    for arch, expected in (
        ("vit", ["vit.embeddings.cls_token"]),
        ("deit-distilled", ["deit.embeddings.cls_token", "deit.embeddings.distillation_token"]),
        ("swin", []),
        (
            "dinov2-registers",
            ["dinov2_with_registers.embeddings.cls_token", "dinov2_with_registers.embeddings.register_tokens"],
        ),
        ("beit", ["beit.embeddings.cls_token"]),
        ("data2vec-vision", ["data2vec_vision.embeddings.cls_token"]),
    ):
        model = tiny(arch)
        names = [n for n, _ in surgery.get_host().anatomy(model.config.model_type).prefix_token_parameters(model)]
        assert names == expected


def test_swinv2_parts_give_the_cosine_core_and_the_post_norm_block():
    """Swinv2's block from its parts: cosine attention with the learned logit scale and the continuous
    position bias, then post-norm residuals, x + norm(f(x)); on the last stage, whose 4x4 map is one
    window (no shift), so the host's windowing is the identity."""
    model = tiny("swinv2").double().eval()
    anatomy = surgery.get_host().anatomy("swinv2")
    parts = anatomy.blocks(model)[-1]
    assert parts.layout.residual == "post_norm" and parts.window() == (4, 0) and parts.grid == (4, 4)
    core = parts.attention.core
    with torch.no_grad():
        core.logit_scale.copy_(torch.linspace(0.5, 5.0, parts.attention.heads).view(-1, 1, 1))  # one above the clamp
        hidden = torch.randn(3, 16, parts.width, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        q, k, v = parts.attention.qkv(hidden)
        scale = core.logit_scale.clamp(max=math.log(100.0)).exp()
        scores = (
            F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2) * scale + parts.attention.position_bias()
        )
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(3, 16, parts.width)
        torch.testing.assert_close(context, core(hidden)[0], rtol=0, atol=1e-12)
        ours = parts.mlp_residual(parts.attention_residual(hidden, context))
        torch.testing.assert_close(ours, parts.module(hidden, (4, 4))[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ["beit", "data2vec-vision", "swin"])
def test_the_position_bias_from_parts_is_the_one_the_core_adds_at_another_image_size(arch):
    """Methods that keep the core's bias (bivit) rebuild it from the parts for the call the host made:
    at an image size other than the config's, with interpolated positions, the attention computed from
    the parts equals the core's own output."""
    import math

    model = tiny(arch).eval()
    block = block_parts_of(model, 0)
    seen = {}
    handle = block.attention.core.register_forward_hook(
        lambda module, args, kwargs, out: seen.update(args=args, kwargs=kwargs, out=out), with_kwargs=True
    )
    size = 48
    extra = {} if arch == "swin" else {"interpolate_pos_encoding": True}
    with torch.no_grad():
        model(pixel_values=images(2, size=size), **extra)
    handle.remove()
    attention = block.attention
    hidden, args = seen["args"][0], seen["args"][1:]
    with torch.no_grad():
        q, k, v = attention.qkv(hidden)
        scores = q @ k.transpose(-1, -2) / math.sqrt(attention.head_dim)
        for bias in (
            attention.position_bias(hidden.shape[1], args, seen["kwargs"]),
            attention.host_bias(args, seen["kwargs"]),
        ):
            if bias is not None:
                scores = scores + bias
        mask = attention.window_mask(args, seen["kwargs"])
        if mask is not None:
            windows = mask.shape[0]
            scores = (scores.view(-1, windows, *scores.shape[1:]) + mask[None, :, None]).view(scores.shape)
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(hidden.shape[0], hidden.shape[1], -1)
        expected = attention.host_output(context)[0]
    torch.testing.assert_close(expected, seen["out"][0], rtol=0, atol=2e-6)
