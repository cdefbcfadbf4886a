"""Merge, compute, unmerge inside Swin's windows (``token_merge`` with ``unmerge=True``): every window
merges its own tokens, the block keeps its feature map. Against a float64 reference built from the host's
own window functions (transformers' ``window_partition`` / ``window_reverse``, the block's padding and
shifted-window mask): the reduced bias and mask, both branches unmerged; merges stay within one shifted
region; r=0 is the host's block; save/reload, revert and export are exact."""

from __future__ import annotations

import math

import pytest
import torch

import surgery
from surgery.plugins.token_merge.merge import bipartite_soft_matching
from surgery.toolkit.reduction import dense
from surgery.toolkit.windows import MASKED, WindowGrid

from conftest import assert_export_and_compile_match_eager, images, parts, supported

WINDOWED = [arch for arch in supported("token_merge", options={"unmerge": True}) if arch.startswith("swin")]


REDUCTIONS = [m.name for m in surgery.list_methods() if "token_reduction" in m.provides]


def swin(
    size: str = "demo",
    image_size: int = 32,
    r: int = 6,
    seed: int = 0,
    branches: str = "both",
    plugin: str = "token_merge",
) -> torch.nn.Module:
    """A Swin with a shifted block (demo: depths 2, 2; window 4 on an 8 x 8 map), reduced in every window."""
    from surgery.demo.zoo import build_model

    options = {"r": r, "unmerge": True, "branches": branches}
    return surgery.apply(build_model("swin", size, image_size=image_size, seed=seed), [(plugin, options)])


class Capture:
    def __init__(self, builder):
        self.builder, self.importance, self.region, self.built = builder, builder.importance, builder.region, []
        self.seen = []  # (metric, importance) of every call

    def __call__(self, metric, importance, r, groups=None):
        self.seen.append((metric, importance))
        self.built.append(self.builder(metric, importance, r, groups=groups))
        return self.built[-1]

    def describe(self):
        return self.builder.describe()


def _reference(
    block, hidden: torch.Tensor, dims: tuple[int, int], matrix: torch.Tensor, branches: str = "both"
) -> torch.Tensor:
    """The block in float64 from the host's own window functions: T (B * windows, M, N) reduces every
    window of the block's normed input (s = T 1: diag(1/s) T x), q k^T / sqrt(d) + log(s) + the reduced
    bias and mask (diag(1/s) T (B + mask) T^T diag(1/s)), each branch given back as T^T y, windows
    reversed, the shift undone, the padding cut, the residuals added; the MLP on the same windows. A branch
    that ``branches`` leaves out runs as the host's (T the identity)."""
    from transformers.models.swin import modeling_swin as swin_module

    host = block.module
    height, width = dims
    window, shift = block.window()
    batch, _, channels = hidden.shape
    heads, d = block.attention.heads, block.attention.head_dim
    sizes = matrix.sum(-1, keepdim=True)

    def cut(x):
        x, pad = host.maybe_pad(x.view(batch, height, width, channels), height, width)
        x = torch.roll(x, (-shift, -shift), (1, 2)) if shift else x
        return swin_module.window_partition(x, window).view(-1, window * window, channels), x.shape[1], x.shape[2]

    def paste(y, height_pad, width_pad):
        y = swin_module.window_reverse(y.view(-1, window, window, channels), window, height_pad, width_pad)
        y = torch.roll(y, (shift, shift), (1, 2)) if shift else y
        return y[:, :height, :width].reshape(batch, height * width, channels)

    full = torch.eye(window * window, dtype=torch.float64).expand(matrix.shape[0], -1, -1)
    attention_matrix, mlp_matrix = (matrix if branches in ("both", kind) else full for kind in ("attention", "mlp"))
    x, height_pad, width_pad = cut(block.part("norm1")(hidden))
    bias = block.attention.position_bias(window * window).to(torch.float64)
    mask = host.get_attn_mask(height_pad, width_pad, torch.float64, hidden.device)
    if mask is not None:
        bias = bias + mask.repeat(batch, 1, 1)[:, None]
    matrix, sizes = attention_matrix, attention_matrix.sum(-1, keepdim=True)
    x = matrix @ x / sizes
    q, k, v = (
        block.attention.projection(role)(x).view(x.shape[0], -1, heads, d).transpose(1, 2)
        for role in ("query", "key", "value")
    )
    reduced = (matrix[:, None] @ bias @ matrix.transpose(1, 2)[:, None]) / (sizes @ sizes.transpose(1, 2))[:, None]
    logits = q @ k.transpose(-1, -2) / math.sqrt(d) + sizes.log()[:, None, None, :, 0] + reduced
    context = (logits.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], -1, heads * d)
    h = hidden + paste(matrix.transpose(1, 2) @ block.attention_output(context), height_pad, width_pad)
    x, _, _ = cut(block.part("norm2")(h))
    matrix, sizes = mlp_matrix, mlp_matrix.sum(-1, keepdim=True)
    branch = block.part("mlp_out")(block.part("activation")(block.part("mlp_in")(matrix @ x / sizes)))
    return h + paste(matrix.transpose(1, 2) @ branch, height_pad, width_pad)


CASES = [
    (32, 0, 6, "both"),
    (32, 1, 6, "both"),
    (40, 1, 5, "both"),
    (40, 0, 8, "both"),
    (32, 1, 6, "mlp"),
    (40, 1, 5, "mlp"),
    (40, 1, 5, "attention"),
    (32, 0, 6, "attention"),
]
REFERENCE_CASES = [("token_merge", *case) for case in CASES] + [
    (plugin, *case) for plugin in REDUCTIONS if plugin != "token_merge" for case in CASES[1:4]
]


@pytest.mark.parametrize("plugin, image_size, index, r, branches", REFERENCE_CASES)
def test_a_windowed_block_matches_a_float64_reference(plugin, image_size, index, r, branches):
    """Blocks 0 (no shift) and 1 (shifted); 40 px: a 10 x 10 map padded to whole 4 x 4 windows; each branch
    choice (the one left out runs on every token); every token reduction (the reference takes its matrix)."""
    model = swin(image_size=image_size, r=r, branches=branches, plugin=plugin).double()
    block = parts(model, index)
    capture = Capture(block.module.reduction_builder)
    block.module.reduction_builder = capture
    side = image_size // 4
    hidden = torch.randn(2, side * side, block.width, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        got, weights = block.module(hidden, (side, side))
        (reduction,) = capture.built
        matrix = reduction.matrix(16).to(torch.float64)
        want = _reference(block, hidden, (side, side), matrix, branches)
    assert weights is None and block.window() == (4, 2 * index)
    assert matrix.shape[1] == 16 - r  # every window reduced r of its 16 tokens
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("image_size", [32, 40])
def test_importance_in_a_window_is_the_attention_every_token_of_it_pays(image_size):
    """No prefix token in a window: pruning and Token Transforming score a token by the attention every token of
    its window pays it (softmax over the window's keys with the position bias and the shift mask, averaged over
    heads and queries; float64 from the host's own window functions), padding positions lowest, and the keys
    averaged over heads as the metric."""
    from transformers.models.swin import modeling_swin as swin_module

    block = parts(swin(image_size=image_size, r=5, plugin="token_prune").double(), 1)
    capture = Capture(block.module.reduction_builder)
    block.module.reduction_builder = capture
    side = image_size // 4
    hidden = torch.randn(2, side * side, block.width, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        block.module(hidden, (side, side))
        x, _ = block.module.maybe_pad(block.part("norm1")(hidden).view(2, side, side, -1), side, side)
        height_pad, width_pad = x.shape[1], x.shape[2]
        x = swin_module.window_partition(torch.roll(x, (-2, -2), (1, 2)), 4).view(-1, 16, block.width)
        heads, d = block.attention.heads, block.attention.head_dim
        q, k = (
            block.attention.projection(role)(x).view(x.shape[0], -1, heads, d).transpose(1, 2)
            for role in ("query", "key")
        )
        mask = block.module.get_attn_mask(height_pad, width_pad, torch.float64, None).repeat(2, 1, 1)[:, None]
        bias = block.attention.position_bias(16).to(torch.float64) + mask
        want = (q @ k.transpose(-1, -2) / math.sqrt(d) + bias).softmax(-1).mean(dim=(1, 2))
    ((metric, importance),) = capture.seen
    padding = WindowGrid(side, side, 4, 2).regions().padding.repeat(2, 1)
    torch.testing.assert_close(importance[~padding], want[~padding], rtol=1e-10, atol=1e-12)
    assert bool((importance[padding] == -1.0).all()) and bool(padding.any()) == (image_size == 40)
    torch.testing.assert_close(metric, k.mean(dim=1), rtol=1e-10, atol=1e-12)
    (selection,) = capture.built
    kept = selection.index  # the 11 most important of each window's 16 (ties among the padding either way)
    assert torch.equal(kept, kept.sort(dim=-1).values)  # in window order
    top = importance.topk(11, dim=-1).values.sort(dim=-1).values
    assert torch.equal(importance.gather(1, kept).sort(dim=-1).values, top)


@pytest.mark.parametrize("plugin", REDUCTIONS)
@pytest.mark.parametrize("image_size", [32, 40])
def test_merges_stay_within_one_shifted_region_and_padding_merges_only_with_padding(image_size, plugin):
    """Every reduced token's members lie in one group (a region of the shift, or the padding): a merge's, a
    transformed token's (what it spreads over), a kept one's."""
    model = swin(image_size=image_size, r=4, plugin=plugin).double()
    block = parts(model, 1)
    capture = Capture(block.module.reduction_builder)
    block.module.reduction_builder = capture
    side = image_size // 4
    with torch.no_grad():
        block.module(torch.randn(2, side * side, block.width, dtype=torch.float64), (side, side))
    grid = WindowGrid(side, side, 4, 2)
    groups = grid.regions().groups(2)
    matrix = capture.built[0].matrix(16)  # (B * windows, M, N): the members of every merged token
    members = matrix > 0
    first = groups.gather(1, members.float().argmax(-1))  # each output's first member's group
    assert torch.all(~members | (groups[:, None, :] == first[:, :, None]))
    assert len((groups % 9).unique()) == 9  # the shift's 3 x 3 regions
    assert bool((groups >= 9).any()) == (image_size == 40)  # the padding of a 10 x 10 map: groups of its own


@pytest.mark.parametrize("side, r", [(8, 4), (10, 6), (10, 8)])
def test_the_reduced_shift_mask_is_the_mask_reduced_as_the_tokens_are(side, r):
    """diag(1/s) T mask T^T diag(1/s) from the region one-hots; exactly 0 or MASKED in float32 where merges stay
    within regions (r = 8 of 16 leaves some windows too few same-region pairs: mixed tokens get the mean)."""
    grid = WindowGrid(side, side, 4, 2)
    regions = grid.regions()
    metric = torch.randn(2 * regions.region.shape[0], 16, 8, generator=torch.Generator().manual_seed(side + r))
    groups = regions.groups(2)
    reduction = dense(bipartite_soft_matching(metric, r, 0, groups), 16, torch.float64)
    mask = (regions.region[:, :, None] != regions.region[:, None, :]).to(torch.float64).repeat(2, 1, 1) * MASKED
    want = reduction.mean @ mask @ reduction.mean.transpose(1, 2)
    torch.testing.assert_close(regions.reduced_mask(reduction.mean)[:, 0], want, rtol=1e-12, atol=1e-12)
    single = dense(bipartite_soft_matching(metric, r, 0, groups), 16, torch.float32)
    pure = (single.weights @ torch.nn.functional.one_hot(groups, 18).float()).gt(0).sum(-1).eq(1).all(-1)  # windows
    got = regions.reduced_mask(single.mean)[:, 0][pure]
    assert bool(pure.any()) and bool(((got == 0) | (got == MASKED)).all())
    assert (
        regions.reduced_mask(single.mean).dtype == torch.float32
        and WindowGrid(8, 8, 4, 0).regions().reduced_mask(single.mean) is None
    )


def test_the_matching_never_pairs_two_groups():
    metric = torch.randn(3, 16, 8, generator=torch.Generator().manual_seed(0))
    groups = (torch.arange(16) >= 6).long().expand(3, 16)
    matching = bipartite_soft_matching(metric, 5, 0, groups)
    matrix = matching.matrix(16)
    for b in range(3):
        for row in matrix[b]:
            assert len(groups[b][row > 0].unique()) == 1
    plain = bipartite_soft_matching(metric, 5, 0)  # without groups: the official matching
    assert torch.equal(bipartite_soft_matching(metric, 5, 0, torch.zeros(3, 16, dtype=torch.long)).src, plain.src)


@pytest.mark.parametrize("arch", WINDOWED)
def test_a_swin_keeps_its_feature_maps_and_r_zero_is_the_host(arch):
    from surgery.demo.zoo import build_model

    x = images(2, 40)
    model = build_model(arch, "demo", image_size=40)
    with torch.no_grad():
        before = model(pixel_values=x, output_hidden_states=True)
        same = swin(image_size=40, r=0)(pixel_values=x).logits
        merged = swin(image_size=40, r=8)(pixel_values=x, output_hidden_states=True)
    assert torch.equal(same, before.logits)
    assert [h.shape for h in merged.reshaped_hidden_states] == [h.shape for h in before.reshaped_hidden_states]
    cosine = torch.nn.functional.cosine_similarity(merged.hidden_states[-1], before.hidden_states[-1], dim=-1)
    assert 0.9 < cosine.mean() < 1.0


def test_a_swin_backbone_keeps_its_feature_maps():
    from transformers import SwinBackbone

    from surgery.demo.zoo import model_config

    config = model_config("swin", "demo", image_size=32, out_features=["stage1", "stage2"])
    torch.manual_seed(0)
    backbone, x = SwinBackbone(config).eval(), images()
    with torch.no_grad():
        before = backbone(pixel_values=x).feature_maps
        surgery.apply(backbone, [("token_merge", {"r": 6, "unmerge": True})])
        after = backbone(pixel_values=x).feature_maps
    assert [f.shape for f in after] == [f.shape for f in before]
    cosine = torch.nn.functional.cosine_similarity(after[0], before[0], dim=1)
    assert cosine.mean() > 0.9 and not torch.equal(after[0], before[0])


def test_save_reload_revert_and_the_refusal_of_the_reducing_blocks(tmp_path):
    from surgery.demo.zoo import build_model

    x = images(2)
    model = swin(r=6)
    logits = model(pixel_values=x).logits
    surgery.save(model, tmp_path / "m")
    assert torch.equal(surgery.load(tmp_path / "m")(pixel_values=x).logits, logits)
    surgery.revert(model)
    assert torch.equal(model(pixel_values=x).logits, build_model("swin", "demo")(pixel_values=x).logits)
    assert "within windows" in repr(swin(r=6))
    with pytest.raises(
        surgery.SurgeryError, match=r"token_merge.*windowed.*option 'unmerge' got False; allowed: True"
    ):
        surgery.apply(build_model("swin", "demo"), [("token_merge", {"r": 6, "unmerge": False})])
    unset = surgery.apply(build_model("swin", "demo"), [("token_merge", {"r": 6})])  # left unset: within windows
    assert surgery.history(unset)[0].options["unmerge"] is True and torch.equal(unset(pixel_values=x).logits, logits)
    mlp = swin(r=6, branches="mlp")
    mlp_logits = mlp(pixel_values=x).logits
    surgery.save(mlp, tmp_path / "mlp")
    reloaded = surgery.load(tmp_path / "mlp")
    assert torch.equal(reloaded(pixel_values=x).logits, mlp_logits) and not torch.equal(mlp_logits, logits)
    assert surgery.history(reloaded)[0].options["branches"] == "mlp" and "branches=mlp" in repr(reloaded)


@pytest.mark.parametrize("to, image_size", [("onnx", 40), ("openvino", 32)])
def test_export_matches_pytorch(tmp_path, to, image_size):
    """At 40 px, windows of the padding have fewer pairs within a group than r, so exactly equal (-inf) edge
    scores decide some merges, and their order is left to the runtime's sort (as in ToMe): ONNX Runtime
    sorts them as PyTorch, OpenVINO not always."""
    pytest.importorskip("onnxruntime" if to == "onnx" else "openvino")
    result = surgery.export(
        swin(image_size=image_size, r=6), tmp_path / to, to=to
    )  # raises beyond the float tolerance
    assert result.max_abs_diff < 1e-4


def test_torch_export_and_compile_give_the_eager_logits():
    assert_export_and_compile_match_eager(swin(r=6), images(2))
