"""ToMe against an independent float64 reference: matching, weighted merge, proportional attention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import surgery
from surgery.errors import ConfigError, UnsupportedModelError
from surgery.plugins.ggem.layers import GroupGeM
from surgery.plugins.token_merge.config import ToMeConfig
from surgery.plugins.token_merge.merge import bipartite_soft_matching, merge_weighted
from surgery.toolkit.tokens import token_sizes

from conftest import core, images, parts, supported, tiny

from test_ggem import ggem_reference


def reference_merge(x, size, metric, r, prefix):
    """ToMe for one sample, token by token, in float64 Python: returns (tokens, sizes). ``prefix`` 1 is
    the official cls token, 2 cls + distillation; more are registers: every prefix token in A keeps
    out of merges, every one in B receives none, and all of them stay in front in order."""
    n = len(x)
    a_pos, b_pos = list(range(0, n, 2)), list(range(1, n, 2))
    r = min(r, (n - prefix) // 2)
    if r <= 0:
        return x, size
    unit = metric / np.linalg.norm(metric, axis=1, keepdims=True)
    best = []  # (score, partner) for each A token
    for a in a_pos:
        scores = [-math.inf if a < prefix or b < prefix else float(unit[a] @ unit[b]) for b in b_pos]
        partner = max(range(len(b_pos)), key=lambda j: (scores[j], -j))  # first of the best
        best.append((scores[partner], partner))
    order = sorted(range(len(a_pos)), key=lambda ai: (-best[ai][0], ai))
    merged, kept = order[:r], order[r:]
    if prefix:
        kept = sorted(kept)
    b_sum = {j: x[b] * size[b] for j, b in enumerate(b_pos)}
    b_size = {j: float(size[b]) for j, b in enumerate(b_pos)}
    for ai in merged:
        j = best[ai][1]
        b_sum[j] = b_sum[j] + x[a_pos[ai]] * size[a_pos[ai]]
        b_size[j] += float(size[a_pos[ai]])
    a_tokens = {a_pos[ai]: (x[a_pos[ai]], float(size[a_pos[ai]])) for ai in kept}
    b_tokens = {b: (b_sum[j] / b_size[j], b_size[j]) for j, b in enumerate(b_pos)}
    front = [a_tokens.get(p) or b_tokens[p] for p in range(prefix)]
    tokens = front + [t for p, t in a_tokens.items() if p >= prefix] + [t for p, t in b_tokens.items() if p >= prefix]
    return np.stack([t for t, _ in tokens]), np.array([s for _, s in tokens])


CASES = [(n, r, prefix) for n in (9, 10, 17, 65) for r in (1, 3, 100) for prefix in (0, 1, 2, 5)]


@pytest.mark.parametrize("n, r, prefix", CASES)
def test_matching_and_weighted_merge_match_reference(n, r, prefix):
    g = torch.Generator().manual_seed(n * 100 + r)
    x = torch.randn(2, n, 6, generator=g, dtype=torch.float64)
    metric = torch.randn(2, n, 4, generator=g, dtype=torch.float64)
    size = torch.randint(1, 4, (2, n, 1), generator=g).double()  # many equal sizes (ties)
    matching = bipartite_soft_matching(metric, r, prefix)
    merged, merged_size = merge_weighted(matching, x, size)
    for sample in range(2):
        want_x, want_size = reference_merge(
            x[sample].numpy(), size[sample, :, 0].numpy(), metric[sample].numpy(), r, prefix
        )
        np.testing.assert_allclose(merged[sample].numpy(), want_x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(merged_size[sample, :, 0].numpy(), want_size, rtol=0, atol=0)
    assert torch.equal(merged_size.sum(1), size.sum(1))  # every patch is counted once
    # the prefix tokens come out unchanged, in front ((x * size) / size: equal up to rounding)
    torch.testing.assert_close(merged[:, :prefix], x[:, :prefix], rtol=1e-15, atol=1e-15)
    assert torch.equal(merged_size[:, :prefix], size[:, :prefix])


def test_r_capped_to_what_the_layer_can_merge():
    metric = torch.randn(1, 5, 4)
    assert bipartite_soft_matching(metric, 10, 2).r == 1
    assert bipartite_soft_matching(torch.randn(1, 3, 4), 4, 2) is None
    assert bipartite_soft_matching(torch.randn(1, 7, 4), 4, 5).r == 1


def test_proportional_attention_matches_reference():
    model = surgery.apply(tiny("vit"), [("token_merge", {"r": 2})]).double()
    attention = core(model)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 7, 32, generator=g, dtype=torch.float64)
    size = torch.randint(1, 5, (2, 7, 1), generator=g).double()
    context, metric = attention.tome_attention(hidden, size)
    heads, d = 4, 8
    split = lambda t: t.view(2, 7, heads, d).transpose(1, 2)  # noqa: E731
    q, k, v = (split(attention.tome_parts.projection(role)(hidden)) for role in ("query", "key", "value"))
    logits = q @ k.transpose(-1, -2) / math.sqrt(d) + size.log()[:, None, None, :, 0]
    want = (logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 32)
    torch.testing.assert_close(context, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(metric, k.mean(1), rtol=0, atol=0)


@pytest.mark.parametrize("arch", supported("token_merge"))
def test_r_zero_gives_identical_outputs(arch):
    model = tiny(arch)
    x = images()
    logits = model(pixel_values=x).logits
    surgery.apply(model, [("token_merge", {"r": 0})])
    assert torch.equal(model(pixel_values=x).logits, logits)


@pytest.mark.parametrize("arch, prefix", [("vit", 1), ("deit-distilled", 2), ("dinov2-registers", 5)])
@pytest.mark.parametrize(
    "config", [ToMeConfig(r=8), ToMeConfig(r=30), ToMeConfig(r=12, inflect=-1.0), ToMeConfig(r_per_layer=(20,))]
)
def test_token_counts_follow_the_schedule(arch, prefix, config):
    model = surgery.apply(tiny(arch), config)
    model(pixel_values=images())
    tokens = 64 + prefix
    for r in config.schedule(2):
        tokens -= min(r, (tokens - prefix) // 2)
    sizes = token_sizes(model).sizes
    assert sizes.shape[1] == tokens
    assert torch.all(sizes.sum(1) == 64 + prefix)


def test_merged_model_matches_a_blockwise_reference():
    """Block 1 of a 2-block ViT: attention, merge with the reference, MLP; compare the final features."""
    model = tiny("vit").double()
    x = images().double()
    with torch.no_grad():
        embedded = model.vit.embeddings(x)
        block = parts(model)
        normed = block.part("norm1")(embedded)
        hidden = block.module.attention(normed)
        hidden = (hidden[0] if isinstance(hidden, tuple) else hidden) + embedded  # the host's attention module
        metric = block.attention.projection("key")(normed).view(3, -1, 4, 8).mean(2)
        rows = [reference_merge(hidden[i].numpy(), np.ones(65), metric[i].numpy(), 8, 1) for i in range(3)]
        merged = torch.tensor(np.stack([t for t, _ in rows]))
        out = (
            block.part("mlp_out")(block.part("activation")(block.part("mlp_in")(block.part("norm2")(merged)))) + merged
        )
    surgery.apply(model, [("token_merge", {"r_per_layer": [8]})])
    with torch.no_grad():  # a block returns its hidden states; the sizes travel in the side channel
        hidden_states = block.module(embedded)
        size = token_sizes(model).sizes
    torch.testing.assert_close(hidden_states, out, rtol=1e-10, atol=1e-10)
    assert torch.equal(size[:, :, 0], torch.tensor(np.stack([s for _, s in rows])))


def test_ggem_pools_merged_tokens_by_size():
    model = surgery.apply(tiny("vit"), [("token_merge", {"r": 6}), ("ggem", {"p_init": 2.0})])
    captured = {}
    model.vit.layernorm.norm.register_forward_hook(lambda m, i, out: captured.setdefault("features", out))
    x = images()
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    features = captured["features"].double().numpy()[:, 1:]
    weights = token_sizes(model).sizes.double().numpy()[:, 1:, 0]
    pool = next(m for m in model.modules() if isinstance(m, GroupGeM))
    pooled = ggem_reference(features, pool.p.detach().double().numpy(), 1e-6, weights)
    head = model.classifier
    want = pooled @ head.weight.detach().double().numpy().T + head.bias.detach().double().numpy()
    np.testing.assert_allclose(logits.double().numpy(), want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(weights, 1.0)


def test_swin_refuses_the_reducing_blocks_with_the_reason():
    with pytest.raises(
        UnsupportedModelError,
        match=r"token_merge does not support model_type 'swin'.*windowed: Swin attends "
        r"within fixed windows.*option 'unmerge' got False; allowed: True",
    ):
        surgery.plan(tiny("swin"), [("token_merge", {"unmerge": False})])
    assert surgery.plan(tiny("swin"), ["token_merge"]).steps[0].config.unmerge is True  # left unset: within windows


def test_schedules():
    assert ToMeConfig(r=4).schedule(3) == [4, 4, 4]
    assert ToMeConfig(r=8, inflect=-1.0).schedule(12) == [int(16 - 16 / 11 * i) for i in range(12)]
    assert ToMeConfig(r=8, inflect=-1.0).schedule(12)[0] == 16 and ToMeConfig(r=8, inflect=-1.0).schedule(12)[-1] == 0
    assert ToMeConfig(r=3, inflect=1.0).schedule(4) == [0, 2, 4, 6]
    assert ToMeConfig(r_per_layer=(5, 1)).schedule(4) == [5, 1, 0, 0]
    with pytest.raises(
        ConfigError, match=r"token_merge: option 'r_per_layer' got \[1, 2, 3\]; allowed: at most 2 values"
    ):
        surgery.apply(tiny("vit"), [("token_merge", {"r_per_layer": [1, 2, 3]})])


@pytest.mark.parametrize(
    "options, match",
    [
        ({"r": -1}, r"option 'r' got -1; allowed: an integer >= 0"),
        ({"inflect": 2}, r"option 'inflect' got 2.0; allowed: a number in \[-1, 1\]"),
        ({"r_per_layer": [1, -2]}, r"option 'r_per_layer' got \[1, -2\]; allowed: integers >= 0"),
        ({"r": 2.5}, r"option 'r' got 2.5; allowed: int"),
    ],
)
def test_invalid_options(options, match):
    with pytest.raises(ConfigError, match=match):
        ToMeConfig.from_dict(options)


def test_head_mask_is_refused():
    model = surgery.apply(tiny("vit"), "token_merge")
    with pytest.raises(ValueError, match=r"head_mask is not supported"):
        model(pixel_values=images(), head_mask=torch.ones(4))


def test_print_shows_the_swapped_classes():
    model = tiny("deit-distilled")
    anatomy = surgery.get_host().anatomy("deit")
    (runner_name, runner), block, attention = anatomy.one(model, "encoder"), parts(model).module, core(model)
    names = [runner_name.rsplit(".", 1)[-1], anatomy.find(model, "attention")[0][0].rsplit(".", 1)[1]]
    classes = [type(m).__name__ for m in (runner, block, attention)]
    text = str(surgery.apply(model, [("token_merge", {"r": 5})]))
    assert f"2 x ToMe{classes[1]}(" in text and "r=5, prop_attn=True" in text
    assert f"({names[1]}): ToMe{classes[2]}(" in text
    # the module that runs the blocks keeps its class (transformers 5 records hidden states by the model's class):
    # a hook resets the token sizes at every forward, and revert removes it
    from surgery.toolkit.reducing import SizeReset

    assert type(runner).__name__ == classes[0] and f"ToMe{classes[0]}" not in text
    assert [type(h) for h in runner._forward_pre_hooks.values()] == [SizeReset]
    surgery.revert(model)
    assert not runner._forward_pre_hooks
