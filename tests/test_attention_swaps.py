"""agent_attention and castling against independent float64 references, on ViT, DeiT and Swin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import surgery
from surgery.errors import ConfigError, IncompatibleStepsError
from surgery.plugins.agent_attention.layers import AgentAttention, pool_matrix
from surgery.plugins.castling.layers import LinearAngularAttention

from conftest import ARCHS, core, images, parts, tiny


def _randomize(module: torch.nn.Module, names: tuple[str, ...], seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.split(".")[0] in names:
                parameter.copy_(torch.randn(parameter.shape, generator=g, dtype=parameter.dtype) * 0.3)


def _linear(x, layer):  # Swinv2's key projection has no bias
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0.0)


def _softmax(scores):
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def agent_reference(m: AgentAttention, x: torch.Tensor) -> torch.Tensor:
    """Agent attention from the paper's formula in float64, with the official ops (pooling, interp)."""
    b, n, c = x.shape
    heads, d, a, prefix = m.num_heads, c // m.num_heads, m.agents, m.prefix_tokens
    h = w = math.isqrt(n - prefix)
    p = math.isqrt(a)
    q, k, v = _linear(x, m.projection("query")), _linear(x, m.projection("key")), _linear(x, m.projection("value"))
    agents = (
        F.adaptive_avg_pool2d(q[:, prefix:].reshape(b, h, w, c).permute(0, 3, 1, 2), (p, p))
        .reshape(b, c, a)
        .transpose(1, 2)
    )
    q4, k4, v4, a4 = (t.reshape(b, -1, heads, d) for t in (q, k, v, agents))
    table = F.interpolate(m.an_bias, size=(h, w), mode="bilinear", align_corners=False).reshape(heads, a, h * w)
    pos = table + (m.ah_bias + m.aw_bias).reshape(heads, a, h * w)
    table2 = (
        F.interpolate(m.na_bias, size=(h, w), mode="bilinear", align_corners=False)
        .reshape(heads, a, h * w)
        .transpose(1, 2)
    )
    agent_bias = table2 + (m.ha_bias + m.wa_bias).reshape(heads, h * w, a)
    if prefix:
        ac = m.ac_bias[0] if m.ac_bias is not None else torch.zeros(heads, a, prefix, dtype=x.dtype)
        ca = m.ca_bias[0] if m.ca_bias is not None else torch.zeros(heads, prefix, a, dtype=x.dtype)
        pos = torch.cat([ac, pos], dim=-1)
        agent_bias = torch.cat([ca, agent_bias], dim=-2)
    scale = d**-0.5
    agent_attn = _softmax(torch.einsum("bahd,bnhd->bhan", a4 * scale, k4) + pos)
    agent_v = torch.einsum("bhan,bnhd->bhad", agent_attn, v4)
    query_attn = _softmax(torch.einsum("bnhd,bahd->bhna", q4 * scale, a4) + agent_bias)
    out = torch.einsum("bhna,bhad->bnhd", query_attn, agent_v).reshape(b, n, c)
    conv = F.conv2d(
        v[:, prefix:].reshape(b, h, w, c).permute(0, 3, 1, 2), m.dwc.weight, m.dwc.bias, padding=1, groups=c
    )
    out[:, prefix:] += conv.permute(0, 2, 3, 1).reshape(b, h * w, c)
    return out


def castling_reference(m: LinearAngularAttention, x: torch.Tensor, training: bool) -> np.ndarray:
    """Linear-angular attention from the reference code's formula, token by token in numpy float64."""
    b, n, c = x.shape
    heads, d, prefix = m.num_heads, c // m.num_heads, m.prefix_tokens
    split = lambda t: t.detach().numpy().reshape(b, n, heads, d).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = (
        split(_linear(x, m.projection("query"))),
        split(_linear(x, m.projection("key"))),
        split(_linear(x, m.projection("value"))),
    )
    qn = q / np.linalg.norm(q, axis=-1, keepdims=True)
    kn = k / np.linalg.norm(k, axis=-1, keepdims=True)
    out = 0.5 * v + (1 / np.pi) * (qn @ (kn.transpose(0, 1, 3, 2) @ v))
    if training:
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out = out + m.aux_weight * ((p * (p > m.sparse_threshold)) @ v)
    out = out / np.linalg.norm(out, axis=-1, keepdims=True)
    kernel = m.dconv.weight.detach().numpy()[:, 0, :, 0]  # (heads, taps)
    taps = kernel.shape[1]
    for t in range(prefix, n):
        for j in range(taps):
            src = t + j - taps // 2
            if prefix <= src < n:
                out[:, :, t] += kernel[None, :, j, None] * v[:, :, src]
    return out.transpose(0, 2, 1, 3).reshape(b, n, c)


def _replaced(arch, spec, cls):
    model = surgery.apply(tiny(arch).double(), [spec])
    return model, [m for m in model.modules() if isinstance(m, cls)]


def _tokens(module, arch, seed=3):
    side = module.grid[0] if isinstance(module, AgentAttention) else 4
    windowed = arch in ("swin", "swinv2")
    n = module.prefix_tokens + (side * side if windowed or isinstance(module, AgentAttention) else 16)
    return torch.randn(
        2,
        n,
        module.projection("query").in_features,
        generator=torch.Generator().manual_seed(seed),
        dtype=torch.float64,
    )


AGENT_BIASES = ("an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias", "ac_bias", "ca_bias", "dwc")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("agents", [4, 9])
def test_agent_attention_matches_reference(arch, agents):
    _, modules = _replaced(arch, ("agent_attention", {"agents": agents, "layers": "all"}), AgentAttention)
    for module in modules:
        _randomize(module, AGENT_BIASES)
        x = _tokens(module, arch)
        with torch.no_grad():
            torch.testing.assert_close(module.attend(x), agent_reference(module, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("options", [{"prefix_bias": False}, {"bias_size": None}, {"bias_size": 3}])
def test_agent_attention_bias_options_match_reference(options):
    _, modules = _replaced("deit-distilled", ("agent_attention", {"agents": 4, **options}), AgentAttention)
    for module in modules:
        assert (module.ac_bias is None) == (options.get("prefix_bias") is False)
        table = options.get("bias_size", 7) or 8  # None: tables at the 8x8 grid
        assert tuple(module.an_bias.shape[-2:]) == (table, table)
        _randomize(module, AGENT_BIASES)
        x = _tokens(module, "deit-distilled")
        with torch.no_grad():
            torch.testing.assert_close(module.attend(x), agent_reference(module, x), rtol=1e-10, atol=1e-10)


def test_castling_without_sparse_reg_has_no_auxiliary_branch():
    _, modules = _replaced("vit", ("castling", {"sparse_reg": False}), LinearAngularAttention)
    module = modules[0].train()
    x = _tokens(module, "vit")
    with torch.no_grad():
        got = module.attend(x).numpy()
    np.testing.assert_allclose(got, castling_reference(module, x, training=False), rtol=1e-10, atol=1e-10)
    assert module.aux_penalty is None


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training-aux-branch"])
def test_castling_matches_reference(arch, training):
    _, modules = _replaced(
        arch, ("castling", {"kernel_size": 3, "sparse_threshold": 0.05, "aux_weight": 0.7}), LinearAngularAttention
    )
    for module in modules:
        _randomize(module, ("dconv",))
        module.train(training)
        x = _tokens(module, arch)
        with torch.no_grad():
            got = module.attend(x).numpy()
        np.testing.assert_allclose(got, castling_reference(module, x, training), rtol=1e-10, atol=1e-10)
        assert (module.aux_penalty is not None) == training


@pytest.mark.parametrize("size_in, side", [(8, 3), (14, 7), (4, 2), (5, 9)])
def test_pool_matrix_equals_adaptive_avg_pool(size_in, side):
    x = torch.randn(2, 3, size_in, size_in, dtype=torch.float64)
    want = F.adaptive_avg_pool2d(x, (side, side)).flatten(2)
    got = x.flatten(2) @ pool_matrix(size_in, size_in, side).double().T
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "spec",
    [("agent_attention", {"agents": 4, "init": "paper"}), ("castling", {"init": "paper"})],
    ids=["agent", "castling"],
)
def test_gradients_reach_the_new_parameters(arch, spec):
    model = surgery.apply(tiny(arch), [spec]).train()
    # every token's output (the last block's patch tokens do not reach a cls read-out)
    model.base_model(pixel_values=images()).last_hidden_state.pow(2).mean().backward()
    new = [
        (n, p)
        for n, p in model.named_parameters()
        if any(t in n for t in ("_bias", "dwc", "dconv")) and "classifier" not in n and ".layernorm" not in n
    ]
    assert new and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in new), [
        n for n, p in new if p.grad is None
    ]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", [("agent_attention", {"agents": 4}), ("castling", {})], ids=["agent", "castling"])
def test_runs_at_a_second_resolution(arch, spec):
    model = surgery.apply(tiny(arch), [spec])
    x = torch.randn(2, 3, 48, 48)
    kwargs = {} if arch in ("swin", "swinv2") else {"interpolate_pos_encoding": True}
    logits = model(pixel_values=x, **kwargs).logits
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_zero_init_is_two_stage_softmax_through_agents():
    model = surgery.apply(tiny("vit").double(), [("agent_attention", {"agents": 4})])
    module = core(model)
    assert all(
        float(p.detach().abs().sum()) == 0
        for n, p in module.named_parameters()
        if n.endswith("_bias") or n.startswith("dwc")
    )
    x = _tokens(module, "vit")
    with torch.no_grad():
        torch.testing.assert_close(module.attend(x), agent_reference(module, x), rtol=1e-10, atol=1e-10)


def test_defaults_follow_the_paper():
    vit = surgery.apply(tiny("vit"), "agent_attention")
    assert [m.agents for m in vit.modules() if isinstance(m, AgentAttention)] == [49, 49]
    swin = surgery.apply(tiny("swin"), "agent_attention")
    (stage0,) = [m for m in swin.modules() if isinstance(m, AgentAttention)]  # every stage but the last
    assert stage0.agents == 9 and stage0.grid == (8, 8)
    base = surgery.plan(
        tiny("vit", hidden_size=768, num_attention_heads=12, num_hidden_layers=6, intermediate_size=64),
        "agent_attention",
    )
    assert len(base.steps[0].targets) == 4  # DeiT-B: agent attention in the first 4 blocks only


def test_swin_agent_blocks_attend_globally_and_revert_restores_windows():
    model = tiny("swin")
    block = parts(model)
    window = block.window()
    surgery.apply(model, [("agent_attention", {"agents": 4})])
    model(pixel_values=images())
    assert block.window() == (8, 0)  # one window = the whole 8x8 map
    surgery.revert(model)
    assert block.window() == window


def test_same_blocks_are_refused_and_disjoint_blocks_compose():
    with pytest.raises(
        IncompatibleStepsError, match=r"castling and agent_attention would both replace the self-attention of block 0"
    ):
        surgery.plan(tiny("vit"), [("agent_attention", {"agents": 4}), "castling"])
    model = surgery.apply(
        tiny("vit"), [("agent_attention", {"agents": 4, "layers": [0]}), ("castling", {"layers": [1]}), "ggem"]
    )
    assert [s.plugin for s in surgery.history(model)] == ["agent_attention", "castling", "ggem"]
    with pytest.raises(IncompatibleStepsError, match=r"agent_attention and castling would both replace .* block 1"):
        surgery.apply(model, [("agent_attention", {"agents": 4, "layers": [1]})])


def test_token_merge_conflicts_with_attention_swaps():
    with pytest.raises(
        IncompatibleStepsError,
        match=r"token_merge conflicts with agent_attention: token merging needs softmax attention",
    ):
        surgery.plan(tiny("vit"), [("agent_attention", {"agents": 4}), "token_merge"])


@pytest.mark.parametrize(
    "spec, match",
    [
        (("agent_attention", {"agents": 10}), r"agent_attention: option 'agents' got 10; allowed: a perfect square"),
        (
            ("agent_attention", {"layers": [5]}),
            r"agent_attention: option 'layers' got \[5\]; allowed: distinct block indices from 0 to 1",
        ),
        (("agent_attention", {"layers": "first"}), r"option 'layers' got 'first'; allowed: 'default' \| 'all' \| int"),
        (("agent_attention", {"init": "papr"}), r"option 'init' got 'papr'.*Did you mean 'paper'\?"),
        (("castling", {"kernel_size": 4}), r"castling: option 'kernel_size' got 4; allowed: an odd integer >= 1"),
        (
            ("castling", {"layers": 3}),
            r"castling: option 'layers' got 3; allowed: a number of leading blocks from 1 to 2",
        ),
    ],
)
def test_invalid_options(spec, match):
    with pytest.raises(ConfigError, match=match):
        surgery.plan(tiny("vit"), [spec])


def test_print_shows_the_new_attention():
    text = str(
        surgery.apply(
            tiny("deit-distilled"), [("agent_attention", {"agents": 9, "layers": [0]}), ("castling", {"layers": [1]})]
        )
    )
    assert "(attention): AgentAttention(" in text and "heads=4, agents=9 (3x3), grid=(8, 8), prefix_tokens=2" in text
    assert (
        "(attention): LinearAngularAttention(" in text
        and "heads=4, kernel=9, prefix_tokens=2, sparse_reg=True" in text
    )
