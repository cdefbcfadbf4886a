"""Token reduction as a matrix: pruning, ToMe and Token Transforming against float64 references, the
special-case identities, schedules and the FLOPs target, and the plugins on ViT and DeiT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import surgery
from surgery.errors import ConfigError, IncompatibleStepsError, UnsupportedModelError
from surgery.evaluation.flops import model_flops
from surgery.plugins.token_merge.merge import bipartite_soft_matching, merge_weighted
from surgery.plugins.token_prune.prune import top_tokens
from surgery.plugins.token_transform.config import TokenTransformConfig
from surgery.plugins.token_transform.transform import many_to_many
from surgery.toolkit.reduction import BlockCost, Selection, flops_ratio, removable, schedule, solve_r, transport
from surgery.toolkit.tokens import token_sizes

from conftest import images, parts, tiny, untie

from test_token_merge import reference_merge


def inputs(n=17, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, 6, generator=g, dtype=torch.float64)
    metric = torch.randn(batch, n, 4, generator=g, dtype=torch.float64)
    importance = torch.rand(batch, n, generator=g, dtype=torch.float64)
    size = torch.randint(1, 4, (batch, n, 1), generator=g).double()
    return x, metric, importance, size


def reference_transform(x, metric, importance, size, r, prefix, temperature, topk):
    """Token Transforming for one sample, token by token, in float64 Python: (tokens, sizes)."""
    n = len(x)
    r = min(r, n - prefix - 1)
    patches = sorted(range(prefix, n), key=lambda i: -importance[i])
    kept, removed = sorted(patches[: n - prefix - r]), sorted(patches[n - prefix - r :])
    unit = metric / np.linalg.norm(metric, axis=1, keepdims=True)
    mass = {t: x[t] * size[t] for t in kept}
    total = {t: float(size[t]) for t in kept}
    for j in removed:
        sims = np.array([unit[j] @ unit[t] for t in kept]) / temperature
        best = np.argsort(-sims, kind="stable")[:topk]
        weights = np.exp(sims[best] - sims[best].max())
        weights /= weights.sum()
        for w, b in zip(weights, best):
            mass[kept[b]] = mass[kept[b]] + w * x[j] * size[j]
            total[kept[b]] += w * size[j]
    tokens = [x[p] for p in range(prefix)] + [mass[t] / total[t] for t in kept]
    return np.stack(tokens), np.array([float(size[p]) for p in range(prefix)] + [total[t] for t in kept])


@pytest.mark.parametrize(
    "n, r, prefix, temperature, topk",
    [(17, 5, 1, 0.1, 4), (17, 5, 2, 0.5, 2), (9, 100, 1, 0.1, 3), (65, 20, 1, 1.0, 100), (10, 3, 2, 0.05, 1)],
)
def test_many_to_many_matches_reference(n, r, prefix, temperature, topk):
    x, metric, importance, size = inputs(n, seed=n + r)
    reduction = many_to_many(metric, importance, r, prefix, temperature, topk)
    merged, merged_size = reduction.apply(x, size)
    for sample in range(2):
        want_x, want_size = reference_transform(
            x[sample].numpy(),
            metric[sample].numpy(),
            importance[sample].numpy(),
            size[sample, :, 0].numpy(),
            r,
            prefix,
            temperature,
            topk,
        )
        np.testing.assert_allclose(merged[sample].numpy(), want_x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(merged_size[sample, :, 0].numpy(), want_size, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged_size.sum(1), size.sum(1), rtol=1e-12, atol=1e-12)  # every patch's mass stays
    assert torch.equal(merged[:, :prefix], x[:, :prefix])


def test_each_construction_is_its_matrix():
    """Y = diag(1/s') T diag(s) X and s' = T s, with T each construction's own dense matrix."""
    x, metric, importance, size = inputs(17)
    for reduction in (
        many_to_many(metric, importance, 5, 1, 0.2, 3),
        top_tokens(importance, 5, 2),
        bipartite_soft_matching(metric, 5, 2),
    ):
        matrix = reduction.matrix(17)
        assert matrix.shape == (2, 12, 17) and torch.all(matrix >= 0)
        want_x, want_size = transport(matrix, x, size)
        got_x, got_size = reduction.apply(x, size)
        torch.testing.assert_close(got_x, want_x, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_size, want_size, rtol=1e-12, atol=1e-12)


def test_one_hot_rows_are_top_m_pruning():
    """The one-hot matrix is pruning computed independently: the prefix, then the most important patches."""
    x, _, importance, size = inputs(17)
    selection = top_tokens(importance, 5, 1)
    got_x, got_size = transport(selection.matrix(17), x, size)
    for sample in range(2):
        scores = importance[sample, 1:].numpy()
        keep = [0] + sorted(1 + i for i in np.argsort(-scores)[:11])
        np.testing.assert_allclose(got_x[sample].numpy(), x[sample, keep].numpy(), rtol=1e-15, atol=1e-15)
        assert got_size[sample, :, 0].tolist() == size[sample, keep, 0].tolist()
    assert torch.equal(selection.apply(x, size)[0], x.gather(1, selection.index[..., None].expand(-1, -1, 6)))


@pytest.mark.parametrize("prefix", [0, 1, 2, 5])
def test_exclusive_size_weighted_rows_are_tome(prefix):
    """ToMe's exclusive groups as the matrix give ToMe's merge, and its float64 reference."""
    x, metric, _, size = inputs(17)
    matching = bipartite_soft_matching(metric, 6, prefix)
    matrix = matching.matrix(17)
    assert torch.equal(matrix.sum(1), torch.ones(2, 17, dtype=torch.float64))  # every token lands in one group
    got_x, got_size = transport(matrix, x, size)
    want_x, want_size = merge_weighted(matching, x, size)
    torch.testing.assert_close(got_x, want_x, rtol=1e-14, atol=1e-14)
    assert torch.equal(got_size, want_size)
    ref_x, _ = reference_merge(x[0].numpy(), size[0, :, 0].numpy(), metric[0].numpy(), 6, prefix)
    np.testing.assert_allclose(got_x[0].numpy(), ref_x, rtol=1e-12, atol=1e-12)


def test_cold_single_target_transforming_is_merging_into_the_most_similar():
    x, metric, importance, size = inputs(17)
    got_x, _ = many_to_many(metric, importance, 5, 1, 1e-6, 1).apply(x, size)
    want_x, _ = many_to_many(metric, importance, 5, 1, 10.0, 1).apply(x, size)  # topk 1: the temperature is moot
    torch.testing.assert_close(got_x, want_x, rtol=1e-14, atol=1e-14)
    matrix = many_to_many(metric, importance, 5, 1, 0.1, 1).matrix(17)
    assert set(matrix.unique().tolist()) == {0.0, 1.0}  # many-to-one


# -- schedules and the FLOPs target ---------------------------------------------------------------------------
def test_schedule_is_tomes():
    assert schedule(8, -1.0, None, 12) == [int(16 - 16 / 11 * i) for i in range(12)]
    assert schedule(3, 1.0, None, 4) == [0, 2, 4, 6] and schedule(0, 0.0, (5, 1), 4) == [5, 1, 0, 0]


def test_flops_target_is_the_smallest_r_that_meets_it():
    costs = [BlockCost(768, 3072)] * 12
    cap = lambda tokens, r: removable(tokens, r, 1)  # noqa: E731
    for target in (0.6, 0.5):
        r, ratio = solve_r(target, costs, 197, 0.0, cap)
        assert ratio <= target < flops_ratio(costs, 197, schedule(r - 1, 0.0, None, 12), cap)
    with pytest.raises(ValueError, match=r"at most 0\.\d+ of the FLOPs is reachable"):
        solve_r(0.01, costs, 197, 0.0, cap)


@pytest.mark.parametrize("plugin", ["token_transform", "token_prune"])
@pytest.mark.parametrize("target", [0.6, 0.5])
def test_flops_option_meets_the_measured_flops(plugin, target):
    """torch's flop counter on the whole model agrees with the solved schedule (the reduction's own
    matching work, left out of the target, and the solve's granularity of one r separate them)."""
    original = tiny("vit")
    x = images(1)
    full = model_flops(original, x)
    model = surgery.apply(tiny("vit"), [(plugin, {"flops": target})])
    measured = model_flops(model, x) / full
    assert target - 0.04 <= measured <= target + 0.005, measured
    bigger = surgery.apply(tiny("vit"), [(plugin, {"r": parts(model).module.reduction_r - 1})])
    assert model_flops(bigger, x) / full > measured


# -- the plugins on models ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arch, prefix",
    [("vit", 1), ("deit", 2), ("deit-distilled", 2), ("vit-msn", 1), ("dinov2", 1), ("dinov2-registers", 5)],
)
@pytest.mark.parametrize("plugin", ["token_transform", "token_prune"])
def test_token_counts_sizes_and_prefix(arch, prefix, plugin):
    model = surgery.apply(untie(tiny(arch)), [(plugin, {"r": 20})])
    with torch.no_grad():
        model(pixel_values=images())
    sizes = token_sizes(model).sizes
    assert sizes.shape[1] == 64 + prefix - 40  # 20 per block, two blocks
    assert torch.equal(sizes[:, :prefix], torch.ones(3, prefix, 1))
    if plugin == "token_transform":  # mass is spread, never lost
        torch.testing.assert_close(sizes.sum(1), torch.full((3, 1), 64.0 + prefix))
    else:  # pruned tokens are dropped
        assert torch.all(sizes == 1)


@pytest.mark.parametrize("plugin", ["token_transform", "token_prune"])
def test_r_zero_gives_identical_outputs(plugin):
    model = tiny("deit-distilled")
    x = images()
    logits = model(pixel_values=x).logits
    surgery.apply(model, [(plugin, {"r": 0})])
    assert torch.equal(model(pixel_values=x).logits, logits)


def test_swin_refuses_the_reducing_blocks_with_the_reason_and_takes_unmerge():
    """Pruning and Token Transforming reduce within Swin's windows (unmerge=True, what an unset option takes
    there, scored by every token's attention: no cls token); the reducing blocks are refused with the reasons."""
    for plugin in ("token_transform", "token_prune"):
        with pytest.raises(
            UnsupportedModelError,
            match=rf"{plugin} does not support model_type 'swin'.*no_prefix: the reducing blocks score tokens by the "
            r"attention the prefix tokens pay them.*windowed: Swin attends within fixed windows.*"
            r"option 'unmerge' got False; allowed: True on this family",
        ):
            surgery.plan(tiny("swin"), [(plugin, {"unmerge": False})])
        assert surgery.plan(tiny("swin"), [plugin]).steps[0].config.unmerge is True


def test_reductions_do_not_stack_and_refuse_linear_attention():
    with pytest.raises(IncompatibleStepsError):
        surgery.plan(tiny("vit"), ["token_merge", "token_transform"])
    with pytest.raises(IncompatibleStepsError, match=r"token_prune conflicts with castling"):
        surgery.plan(tiny("vit"), ["castling", "token_prune"])
    with pytest.raises(IncompatibleStepsError, match=r"token_transform cannot follow bivit's attention binarization"):
        surgery.plan(tiny("vit"), ["bivit", "token_transform"])


def test_conflicts_follow_the_capabilities_methods_provide_not_their_names():
    """Every token reduction refuses every method that provides linear_attention (ecoformer included, which a
    list of names once missed) and every other reduction, both orders; what the registry holds decides."""
    host = surgery.get_host()
    reductions = [m for m in host.methods.values() if "token_reduction" in m.provides]
    linear = [m for m in host.methods.values() if "linear_attention" in m.provides]
    assert {m.name for m in linear} >= {"agent_attention", "castling", "ecoformer"} and len(reductions) >= 3
    for reduction in reductions:
        for other in linear + [m for m in reductions if m is not reduction]:
            for order in ([other.name, reduction.name], [reduction.name, other.name]):
                with pytest.raises(
                    IncompatibleStepsError,
                    match=rf"{reduction.name} conflicts with {other.name}|"
                    rf"{other.name} conflicts with {reduction.name}",
                ):
                    surgery.plan(tiny("vit"), order)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"temperature": 0}, r"token_transform: option 'temperature' got 0.0; allowed: a number in \[0.001, 1000\]"),
        ({"temperature": 1e-40}, r"option 'temperature' got 1e-40; allowed: a number in \[0.001, 1000\]"),
        ({"topk": 0}, r"option 'topk' got 0; allowed: an integer >= 1"),
        ({"flops": 1.5}, r"option 'flops' got 1.5; allowed: a fraction of the FLOPs to keep, in \(0, 1\]"),
        ({"flops": 0.6, "r_per_layer": [4]}, r"option 'flops' got 0.6; allowed: None when r_per_layer is given"),
        ({"tempreature": 0.1}, r"Did you mean 'temperature'"),
    ],
)
def test_invalid_options(options, match):
    with pytest.raises(ConfigError, match=match):
        TokenTransformConfig.from_dict(options)


def test_unreachable_flops_target_names_what_is_reachable():
    with pytest.raises(
        ConfigError, match=r"token_prune: option 'flops' got 0.05; allowed: a fraction this model reaches: at most"
    ):
        surgery.apply(tiny("vit"), [("token_prune", {"flops": 0.05})])


def test_print_shows_the_construction():
    text = str(surgery.apply(tiny("vit"), [("token_transform", {"r": 5, "topk": 2})]))
    assert "TokenTransformViTLayer(" in text and "r=5, prop_attn=True, many-to-many, temperature=0.02, topk=2" in text
    assert "r=3, prop_attn=True, top-k pruning" in str(surgery.apply(tiny("deit"), [("token_prune", {"r": 3})]))
    assert Selection(torch.tensor([[0, 2]])).matrix(3).tolist() == [[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]]


def test_the_coldest_temperature_allowed_gives_finite_logits_in_every_float_type():
    model = surgery.apply(untie(tiny("vit")), [("token_transform", {"r": 8, "temperature": 1e-3})]).eval()
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            assert torch.isfinite(model.to(dtype)(pixel_values=images(2).to(dtype)).logits).all()


@pytest.mark.parametrize("plugin", ["token_merge", "token_prune", "token_transform"])
def test_dinov2_with_a_swiglu_mlp_is_refused_up_front(plugin):
    model = tiny("dinov2", use_swiglu_ffn=True)
    with pytest.raises(UnsupportedModelError, match=r"has no module for role 'mlp_in'"):
        surgery.plan(model, [plugin])


@pytest.mark.parametrize(
    "plugin", [n for n, m in sorted(surgery.get_host().methods.items()) if "token_reduction" in m.provides]
)
@pytest.mark.parametrize("arch", ["vit", "dinov2"])
def test_hidden_states_are_recorded_with_the_reduced_token_counts(plugin, arch):
    """transformers 5 records ``output_hidden_states`` by the model's class, so the reductions never swap the
    class of the module that runs the blocks (a hook resets the sizes): every block's output is there."""
    model = surgery.apply(tiny(arch), [(plugin, {"r": 6})])
    with torch.no_grad():
        states = model(pixel_values=images(), output_hidden_states=True).hidden_states
    assert states is not None and len(states) == model.config.num_hidden_layers + 1
    assert [s.shape[1] for s in states] == [65, 59, 53]  # the embeddings, then 6 fewer tokens after each block
