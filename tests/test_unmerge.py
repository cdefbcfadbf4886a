"""Reduce, compute, unmerge (``unmerge=True`` on every token reduction; ToMe for Stable Diffusion's scheme):
every block keeps its token count and order. Against float64 references: the unmerge is T^T, a block is the
reference computation of merge-attention-unmerge-residual, merge-MLP-unmerge-residual; r=0 is the
original model; hidden states and backbone feature maps keep the token map; save/reload, revert and
export are exact."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import surgery
from surgery.checkpoint.replay import replay
from surgery.plugins.token_merge.config import ToMeConfig
from surgery.plugins.token_merge.merge import bipartite_soft_matching
from surgery.toolkit.reducing import reduced_bias
from surgery.toolkit.reduction import dense

from conftest import assert_export_and_compile_match_eager, images, parts, supported, tiny
from test_token_merge import reference_merge

UNMERGE = [("token_merge", {"r": 12, "unmerge": True})]
REDUCTIONS = [name for name, m in sorted(surgery.get_host().methods.items()) if "token_reduction" in m.provides]


class Capture:
    """A builder that records the reductions the wrapped one builds (the block's own choice of tokens)."""

    def __init__(self, builder):
        self.builder, self.importance, self.region, self.built = builder, builder.importance, builder.region, []

    def __call__(self, metric, importance, r):
        self.built.append(self.builder(metric, importance, r))
        return self.built[-1]

    def describe(self):
        return self.builder.describe()


@pytest.mark.parametrize(
    "n, r, prefix", [(n, r, p) for n in (9, 10, 17, 66) for r in (1, 4, 100) for p in (0, 1, 2, 5)]
)
def test_unmerge_is_the_transpose_of_the_merge_matrix(n, r, prefix):
    """Each token takes the row it was merged into; a merged group's tokens all get its output."""
    g = torch.Generator().manual_seed(n + r)
    matching = bipartite_soft_matching(torch.randn(2, n, 4, generator=g, dtype=torch.float64), r, prefix)
    y = torch.randn(2, n - matching.r, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(matching.unmerge(y), matching.matrix(n).transpose(1, 2) @ y, rtol=0, atol=0)
    assert torch.equal(matching.dense_matrix(n, torch.float64), matching.matrix(n))  # built without the float64 pass
    x = torch.randn(2, n, 3, generator=g, dtype=torch.float64)
    merged, _ = matching.apply(x, None)
    assert torch.equal(matching.unmerge(merged)[:, :prefix], x[:, :prefix])  # prefix tokens come back as they were


def scaled(scale, branch: torch.Tensor) -> torch.Tensor:
    """A branch through the block's layer scale: none, a module (DINOv2) or a parameter / float (BEiT)."""
    if scale is None:
        return branch
    return scale(branch) if isinstance(scale, torch.nn.Module) else branch * scale


def position_bias(block, tokens: int):
    """The block's relative position bias (1, heads, N, N) as the host computes it, float64, or None: the
    core's table (BEiT 4.57, data2vec-vision) or the block's (BEiT >= 5), at the config's grid."""
    owner = getattr(block.attention.core, "relative_position_bias", None) or getattr(
        block.module, "relative_position_bias", None
    )
    if owner is None:
        return None
    bias = owner(tuple(owner.window_size))
    assert bias.shape[-1] == tokens
    return bias.to(torch.float64)


def _reference_block(block, hidden: torch.Tensor, r: int, prefix: int) -> torch.Tensor:
    """One pre-norm block, merge-compute-unmerge, sample by sample in float64 with the independent ToMe
    reference: the groups from the block's input, size-weighted means, attention with log(size), each
    branch copied back to every member of its group, through the layer scale where the family has one."""
    heads, d = block.attention.heads, block.attention.head_dim
    out = []
    for h in hidden:
        n = h.shape[0]
        metric = h.numpy()
        rows, sizes = reference_merge(np.eye(n), np.ones(n), metric, r, prefix)  # rows[m, j] = 1/size_m for members
        average, members = torch.tensor(rows), torch.tensor((rows > 0).T.astype(np.float64))  # (M, N), (N, M)
        x = average @ block.part("norm1")(h)
        q, k, v = (
            block.attention.projection(role)(x).view(-1, heads, d).transpose(0, 1)
            for role in ("query", "key", "value")
        )
        logits = q @ k.transpose(-1, -2) / math.sqrt(d) + torch.tensor(np.log(sizes))[None, None, :]
        context = (logits.softmax(-1) @ v).transpose(0, 1).reshape(-1, heads * d)
        branch = members @ block.attention_output(context[None])[0]
        scale = block.part("layer_scale1")
        h = h + scaled(scale, branch)
        x = average @ block.part("norm2")(h)
        branch = members @ block.part("mlp_out")(block.part("activation")(block.part("mlp_in")(x)))
        scale = block.part("layer_scale2")
        out.append(h + scaled(scale, branch))
    return torch.stack(out)


@pytest.mark.parametrize("arch, prefix", [("vit", 1), ("deit-distilled", 2), ("dinov2-registers", 5)])
def test_an_unmerging_block_matches_a_float64_reference(arch, prefix):
    model = surgery.apply(tiny(arch).double(), [("token_merge", {"r": 9, "unmerge": True})])
    block = parts(model)
    hidden = torch.randn(
        3, 64 + prefix, model.config.hidden_size, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    with torch.no_grad():
        got = block.module(hidden)
        want = _reference_block(block, hidden, 9, prefix)
    got = got[0] if isinstance(got, tuple) else got
    assert got.shape == hidden.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("plugin", REDUCTIONS)
@pytest.mark.parametrize(
    "arch, prefix, branches",
    [
        ("vit", 1, "both"),
        ("deit-distilled", 2, "both"),
        ("dinov2-registers", 5, "both"),
        ("beit", 1, "both"),
        ("data2vec-vision", 1, "both"),
        ("vit", 1, "mlp"),
        ("beit", 1, "mlp"),
        ("deit-distilled", 2, "attention"),
        ("beit", 1, "attention"),
    ],
)
def test_every_reduction_unmerges_as_its_matrix_in_a_float64_block(plugin, arch, prefix, branches):
    """Any reduction T the block builds: reduced = diag(1/s) T x (s = T 1), each branch computed on it and
    given back as T^T branch; pruned tokens (zero columns) pass unchanged. A relative position bias B
    (BEiT, data2vec-vision) is reduced on both axes as the tokens are: diag(1/s) T B T^T diag(1/s). A branch
    that ``branches`` leaves out runs on every token (T the identity)."""
    model = surgery.apply(tiny(arch).double(), [(plugin, {"r": 9, "unmerge": True, "branches": branches})])
    block = parts(model)
    capture = Capture(block.module.reduction_builder)
    block.module.reduction_builder = capture
    n = 64 + prefix
    hidden = torch.randn(
        3, n, model.config.hidden_size, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    with torch.no_grad():
        got = block.module(hidden)
        (reduction,) = capture.built
        reduction_matrix = reduction.matrix(n).to(torch.float64)  # (B, M, N)
        full = torch.eye(n, dtype=torch.float64).expand(3, n, n)
        matrix = reduction_matrix if branches in ("both", "attention") else full
        sizes = matrix.sum(-1, keepdim=True)
        heads, d = block.attention.heads, block.attention.head_dim
        x = (matrix @ block.part("norm1")(hidden)) / sizes
        q, k, v = (
            block.attention.projection(role)(x).view(3, -1, heads, d).transpose(1, 2)
            for role in ("query", "key", "value")
        )
        logits = q @ k.transpose(-1, -2) / math.sqrt(d) + sizes.log()[:, None, None, :, 0]
        bias = position_bias(block, n)
        if bias is not None:
            logits = (
                logits
                + (matrix[:, None] @ bias @ matrix.transpose(1, 2)[:, None]) / (sizes @ sizes.transpose(1, 2))[:, None]
            )
        context = (logits.softmax(-1) @ v).transpose(1, 2).reshape(3, -1, heads * d)
        branch = matrix.transpose(1, 2) @ block.attention_output(context)
        scale = block.part("layer_scale1")
        h = hidden + scaled(scale, branch)
        matrix = reduction_matrix if branches in ("both", "mlp") else full
        sizes = matrix.sum(-1, keepdim=True)
        x = (matrix @ block.part("norm2")(h)) / sizes
        branch = matrix.transpose(1, 2) @ block.part("mlp_out")(block.part("activation")(block.part("mlp_in")(x)))
        scale = block.part("layer_scale2")
        want = h + scaled(scale, branch)
        matrix = reduction_matrix
        if capture.importance:  # chosen before attention by the same scores attention would give
            normed = block.part("norm1")(hidden)
            metric, importance = block.attention.core.reduction_scores(normed, prefix, bias)
            _, want_metric, want_importance = block.attention.core.reducing_attention(normed, None, prefix, bias)
            torch.testing.assert_close(importance, want_importance, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(metric, want_metric, rtol=1e-10, atol=1e-12)
    got = got[0] if isinstance(got, tuple) else got  # BEiT 4.57 and data2vec-vision blocks return a tuple
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    y = torch.randn(3, matrix.shape[1], 5, dtype=torch.float64)
    torch.testing.assert_close(reduction.unmerge(y, n), matrix.transpose(1, 2) @ y, rtol=1e-12, atol=1e-12)
    # the same reduction as dense matrix products (what Swin's windows run): each form against the construction's own
    as_dense = dense(reduction, n, torch.float64)
    assert torch.equal(as_dense.matrix(n), matrix)
    for got_part, want_part in zip(as_dense.apply(hidden, None), reduction.apply(hidden, None)):
        torch.testing.assert_close(got_part, want_part, rtol=1e-12, atol=1e-12)
    sizes_in = torch.rand(3, n, 1, dtype=torch.float64) + 0.5
    for got_part, want_part in zip(as_dense.apply(hidden, sizes_in), reduction.apply(hidden, sizes_in)):
        torch.testing.assert_close(got_part, want_part, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(as_dense.unmerge(y, n), reduction.unmerge(y, n), rtol=1e-12, atol=1e-12)
    for shared in (1, 3):  # one bias for the batch (a window's), one per sample (a shift mask's)
        bias = torch.randn(shared, heads, n, n, dtype=torch.float64)
        torch.testing.assert_close(as_dense.bias(bias), reduced_bias(reduction, bias, 3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("plugin", REDUCTIONS)
@pytest.mark.parametrize("arch", supported("token_merge", options={"unmerge": True}))
def test_every_layer_keeps_the_token_map_and_r_zero_is_the_original(plugin, arch):
    if arch not in supported(plugin, options={"unmerge": True}):
        pytest.skip(f"{plugin} refuses {arch} (test_families checks the reason)")
    model, x = tiny(arch), images()
    with torch.no_grad():
        before = model(pixel_values=x, output_hidden_states=True)
        same = surgery.apply(tiny(arch), [(plugin, {"r": 0, "unmerge": True})])(pixel_values=x).logits
        merged = surgery.apply(tiny(arch), [(plugin, {"r": 12, "unmerge": True})])(
            pixel_values=x, output_hidden_states=True
        )
    assert torch.equal(same, before.logits)
    assert [h.shape for h in merged.hidden_states] == [h.shape for h in before.hidden_states]
    assert not torch.equal(merged.hidden_states[-1], before.hidden_states[-1])  # it did merge
    # the same tokens in the same places: each token's features stay closest to its own unreduced ones
    last, reference = merged.hidden_states[-1], before.hidden_states[-1]
    similarity = torch.nn.functional.normalize(last, dim=-1) @ torch.nn.functional.normalize(
        reference, dim=-1
    ).transpose(1, 2)
    assert (similarity.argmax(-1) == torch.arange(last.shape[1])).float().mean() > 0.9


def test_a_base_model_keeps_its_token_map():
    """``ViTModel``: the anatomy finds its blocks without the head's prefix; the last hidden state stays whole."""
    from transformers import ViTModel

    torch.manual_seed(0)
    base, x = ViTModel(tiny("vit").config, add_pooling_layer=False).eval(), images()
    with torch.no_grad():
        before = base(pixel_values=x).last_hidden_state
        surgery.apply(base, UNMERGE)
        after = base(pixel_values=x).last_hidden_state
    assert after.shape == before.shape and not torch.equal(after, before)
    assert torch.nn.functional.cosine_similarity(after, before, dim=-1).mean() > 0.9
    surgery.revert(base)
    with torch.no_grad():
        assert torch.equal(base(pixel_values=x).last_hidden_state, before)


def test_a_dinov2_backbone_keeps_its_feature_maps():
    from transformers import Dinov2Backbone

    config = tiny("dinov2").config
    config.out_features = ["stage1", "stage2"]
    torch.manual_seed(0)
    backbone = Dinov2Backbone(config).eval()
    x = images()
    with torch.no_grad():
        before = backbone(pixel_values=x).feature_maps
        surgery.apply(backbone, [("token_merge", {"r": 16, "unmerge": True})])
        after = backbone(pixel_values=x).feature_maps
    assert [f.shape for f in after] == [f.shape for f in before] == [(3, config.hidden_size, 8, 8)] * 2
    cosine = torch.nn.functional.cosine_similarity(after[-1], before[-1], dim=1)
    assert cosine.mean() > 0.9 and not torch.equal(after[-1], before[-1])


def test_save_reload_revert_and_the_option_default(tmp_path):
    model, x = tiny("vit"), images()
    original = model(pixel_values=x).logits
    surgery.apply(model, UNMERGE)
    logits = model(pixel_values=x).logits
    surgery.save(model, tmp_path / "m")
    assert torch.equal(surgery.load(tmp_path / "m")(pixel_values=x).logits, logits)
    from surgery.publish.cards import card

    text = card(tmp_path / "m", measure=False).read_text()
    assert "Merge, compute, unmerge" in text and "keeps its full token count" in text
    surgery.revert(model)
    assert torch.equal(model(pixel_values=x).logits, original)
    assert ToMeConfig().unmerge is None  # the family decides (ViT: ToMe's reducing blocks, faster for classification)
    assert ToMeConfig.from_recipe({"r": 8}).unmerge is False  # a recipe from before the option
    assert "unmerge=True" in repr(surgery.apply(tiny("vit"), UNMERGE))
    for plugin in REDUCTIONS:
        config = surgery.get_host().method(plugin).config_class
        assert config.from_recipe({"r": 8}).unmerge is False
        surgery.save(surgery.apply(tiny("vit"), [(plugin, {"r": 4, "unmerge": True})]), tmp_path / plugin)
        text = card(tmp_path / plugin, measure=False).read_text()
        assert "unmerge" in text.lower() and "Between attention and MLP" not in text  # the card says where it reduces
    with pytest.raises(
        surgery.ConfigError, match=r"token_prune: option 'flops' got 0.5; allowed: None with unmerge=True"
    ):
        surgery.apply(tiny("vit"), [("token_prune", {"flops": 0.5, "unmerge": True})])


@pytest.mark.parametrize("plugin", REDUCTIONS)
def test_branches_is_checked_and_needs_the_unmerging_blocks(plugin):
    config = surgery.get_host().method(plugin).config_class
    assert config().branches == "both" and config.from_recipe({"r": 8}).branches == "both"  # recipes from before
    with pytest.raises(
        surgery.ConfigError,
        match=rf"{plugin}: option 'branches' got 'mpl'; allowed: one of 'both', "
        r"'attention', 'mlp' .*Did you mean 'mlp'\?",
    ):
        config(branches="mpl")
    for options in (
        {"branches": "mlp", "unmerge": False},
        {"branches": "attention"},
    ):  # unset on ViT: the reducing blocks
        model = tiny("vit")
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(
            surgery.ConfigError,
            match=rf"{plugin}: option 'branches' got '\w+'; allowed: 'both' with "
            r"unmerge=False .*set unmerge=True",
        ):
            surgery.apply(model, [(plugin, {"r": 4, **options})])
        assert not surgery.history(model) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert repr(model) == repr(tiny("vit"))  # no class swapped


@pytest.mark.parametrize("plugin", REDUCTIONS)
def test_unmerge_left_unset_is_the_familys_choice_and_the_recipe_records_it(plugin, tmp_path):
    method, host = surgery.get_host().method(plugin), surgery.get_host()
    assert method.config_class().unmerge is None and method.auto_options == {"unmerge": False}
    for arch in ("vit", "beit", "swin"):
        if arch not in supported(plugin, [arch]):
            continue
        model, x = tiny(arch), images()
        needed = method.options_required(host.anatomy(model.config.model_type)).get("unmerge", False)
        assert needed is (arch != "vit")  # the token map is needed by the windows and the position bias
        surgery.apply(model, [(plugin, {"r": 2})])
        assert surgery.history(model)[0].options["unmerge"] is needed
        assert surgery.history(model)[0].config.unmerge is needed
        surgery.save(model, tmp_path / arch)
        recipe = json.loads((tmp_path / arch / "config.json").read_text())["quantization_config"]["steps"][0]
        assert recipe["options"]["unmerge"] is needed  # the value that ran, never None
        assert torch.equal(surgery.load(tmp_path / arch)(pixel_values=x).logits, model(pixel_values=x).logits)
        replayed = tiny(arch)  # a hand-written recipe that leaves it null: the family decides on replay too
        replay(replayed, [{**recipe, "options": {**recipe["options"], "unmerge": None}}])
        assert surgery.history(replayed)[0].options["unmerge"] is needed
    with pytest.raises(
        surgery.ConfigError,
        match=rf"{plugin}: option 'unmerge' got None; allowed: True or False in a "
        r"direct call",
    ):
        method.apply(tiny("vit"), method.config_class(), host.anatomy("vit"))
    if "flops" in [name for name, _, _ in method.config_class.describe_options()]:  # its FLOPs target: reducing only
        with pytest.raises(
            surgery.ConfigError,
            match=rf"{plugin}: option 'flops' got 0.5; allowed: None with "
            r"unmerge=True .*\(left unset, unmerge=True is what beit takes\)",
        ):
            surgery.apply(tiny("beit"), [(plugin, {"flops": 0.5})])


@pytest.mark.parametrize(
    "plugin, to, arch",
    [(p, "onnx", "dinov2") for p in REDUCTIONS]
    + [("token_merge", "openvino", "dinov2")]
    + [(p, "onnx", "beit") for p in REDUCTIONS]
    + [("token_prune", "openvino", "data2vec-vision")],
)
def test_export_matches_pytorch(tmp_path, plugin, to, arch):
    """The reduced relative position bias (BEiT, data2vec-vision) exports too: ONNX Runtime and OpenVINO
    give PyTorch's logits."""
    pytest.importorskip("onnxruntime" if to == "onnx" else "openvino")
    model = surgery.apply(tiny(arch), [(plugin, {"r": 12, "unmerge": True})])
    result = surgery.export(model, tmp_path / to, to=to)  # raises beyond the float tolerance
    assert result.max_abs_diff < 1e-4


def test_torch_export_and_compile_give_the_eager_logits():
    assert_export_and_compile_match_eager(surgery.apply(tiny("vit"), UNMERGE), images())
