"""EcoFormer: the kernelised hash and the hashed linear attention against float64 references, the
identities the math allows, the hash learning's guarantees, when the hash is (re)learned, and what is
saved."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import surgery
from surgery.errors import ConfigError, ExportError, SurgeryError
from surgery.plugins.ecoformer.hashing import KernelHash, code_loss, sign_ste, similarity_targets
from surgery.plugins.ecoformer.layers import EcoFormerAttention, hashed_attention
from surgery.publish.export import export

from conftest import ARCHS, images, supported, tiny

SMALL = {"bits": 8, "anchors": 9, "topk": 4}


def _normalised(batch=2, heads=3, tokens=20, dim=5, seed=0):
    x = torch.randn(batch, heads, tokens, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=-1, keepdim=True)


def _hash_reference(x, anchors, mu, weights):
    """h(x) = sign(A^T (kappa(x) - mu)) in numpy float64, sigma the mean squared distance per (sample, head)."""
    d = ((x[:, :, :, None, :] - anchors[:, :, None, :, :]) ** 2).sum(-1)  # B H N m
    sigma = d.mean(axis=(2, 3), keepdims=True)
    kernel = np.exp(-d / (2 * sigma)) - mu
    return np.sign(np.einsum("bhnm,hkm->bhnk", kernel, weights))


def _attention_reference(codes, v, c):
    """The quadratic form: out_i = (sum_j (h_i.h_j) v_j + c v_i) / (sum_j h_i.h_j + N c)."""
    n = codes.shape[2]
    similarity = np.einsum("bhik,bhjk->bhij", codes, codes)
    return (similarity @ v + c * v) / (similarity.sum(-1, keepdims=True) + n * c)


def test_the_hash_matches_the_float64_reference():
    x = _normalised()
    ksh = KernelHash(3, 5, bits=6, anchors=4, seed=3, dtype=torch.float64)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        ksh.anchor.copy_(_normalised(1, 3, 4, 5, seed=1))
        ksh.mvec.uniform_(0.2, 0.6, generator=g)
    got = ksh(x).numpy()
    want = _hash_reference(x.numpy(), ksh.anchor.numpy(), ksh.mvec.numpy(), ksh.A.numpy())
    np.testing.assert_array_equal(got, want)
    assert set(np.unique(got)) <= {-1.0, 1.0}


def test_the_linear_attention_matches_the_quadratic_form():
    g = torch.Generator().manual_seed(4)
    codes = torch.randint(0, 2, (2, 3, 17, 8), generator=g).double() * 2 - 1
    v = torch.randn(2, 3, 17, 5, dtype=torch.float64, generator=g)
    got = hashed_attention(codes, v, 9.0).numpy()
    np.testing.assert_allclose(got, _attention_reference(codes.numpy(), v.numpy(), 9.0), rtol=1e-12, atol=1e-12)
    hamming = (codes[..., :, None, :] != codes[..., None, :, :]).sum(-1)  # h_i.h_j = b - 2 Hamming: no multiplies
    torch.testing.assert_close(codes @ codes.transpose(-1, -2), (8 - 2 * hamming).double())


def test_with_every_code_equal_the_output_is_the_mean_of_the_values_plus_the_self_term():
    bits, n = 16, 12
    v = torch.randn(2, 4, n, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    code = torch.where(torch.arange(bits) % 3 == 0, 1.0, -1.0).double()
    codes = code.expand(2, 4, n, bits)
    c = bits + 1.0
    expected = bits / (bits + c) * v.mean(2, keepdim=True) + c / (n * (bits + c)) * v  # official c v_i term
    torch.testing.assert_close(hashed_attention(codes, v, c), expected, rtol=1e-12, atol=1e-12)


def test_targets_mark_the_most_and_least_similar_tokens():
    x = _normalised(tokens=15)
    targets = similarity_targets(x, 4)
    assert torch.equal((targets == 1).sum(-1), torch.full((2, 3, 15), 4))
    assert torch.equal((targets == -1).sum(-1), torch.full((2, 3, 15), 4))
    assert torch.all(torch.diagonal(targets, dim1=-2, dim2=-1) == 1)  # a token is its own most similar


def test_learning_fits_mu_and_anchors_from_the_batch_and_never_worsens_a_bit():
    x = _normalised(tokens=30, seed=2)
    ksh = KernelHash(3, 5, bits=6, anchors=7, topk=4, iterations=100, seed=0, dtype=torch.float64)
    start = ksh.A.clone()
    kept = ksh.learn(x)
    assert bool(ksh.learned) and len(kept) == 6
    for h in range(3):  # every anchor is a token of the first sample
        distances = torch.cdist(ksh.anchor[0, h], x[0, h], compute_mode="donot_use_mm_for_euclid_dist")
        assert torch.all(distances.min(dim=1).values < 1e-12)
    d = ((x[:, :, :, None] - ksh.anchor[:, :, None]) ** 2).sum(-1)
    kernel = torch.exp(-d / (2 * d.mean(dim=(2, 3), keepdim=True)))
    torch.testing.assert_close(ksh.mvec, kernel.mean(dim=(0, 2), keepdim=True), rtol=1e-12, atol=1e-12)
    # the greedy rule: each bit keeps the better binary code of its old and fitted rows, on the residual targets
    targets, features = similarity_targets(x, 4) * 6, kernel - ksh.mvec
    for bit in range(6):
        codes = [
            torch.where(torch.einsum("bhnm,hm->bhn", features, row) > 0, 1.0, -1.0).double()
            for row in (start[:, bit], ksh.A[:, bit])
        ]
        losses = [float(code_loss(y, targets, 6)) for y in codes]
        assert kept[bit] == pytest.approx(losses[1]) and losses[1] <= losses[0] + 1e-12
        targets = targets - codes[1].unsqueeze(-1) * codes[1].unsqueeze(-2)


def test_the_sign_has_the_clipped_straight_through_gradient():
    y = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.0, 4.0], requires_grad=True)
    out = sign_ste(y)
    out.sum().backward()
    assert out.tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0, 1.0]  # torch.sign, as the official BinaryQuantizer
    assert y.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("arch", supported("ecoformer"))
def test_the_model_matches_the_float64_reference(arch):
    model = tiny(arch).double()
    query = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith(("query", "q_proj"))}
    surgery.apply(model, [("ecoformer", SMALL)])
    names = [n for n, m in model.named_modules() if isinstance(m, EcoFormerAttention)]
    cores = [model.get_submodule(n) for n in names]
    assert cores and not [
        k
        for k in model.state_dict()
        for n in names  # W_k is discarded
        if k.startswith(n + ".") and k.endswith(("key.weight", "k_proj.weight"))
    ]
    x = torch.randn(
        3, 65, cores[0].num_heads * cores[0].head_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(6)
    )
    core = cores[0]
    assert any(torch.equal(core.projection("query").weight, w) for w in query.values())  # to_qk starts from W_q
    with torch.no_grad():
        core.hash.learn(core.shared_qk(x))
        got = core.attend(x).numpy()
    wq, bq = core.projection("query").weight.detach().numpy(), core.projection("query").bias.detach().numpy()
    wv, bv = core.projection("value").weight.detach().numpy(), core.projection("value").bias.detach().numpy()
    heads, dim = core.num_heads, core.head_dim
    split = lambda t: t.reshape(3, 65, heads, dim).transpose(0, 2, 1, 3)  # noqa: E731
    qk, v = split(x.numpy() @ wq.T + bq), split(x.numpy() @ wv.T + bv)
    qk = qk / np.linalg.norm(qk, axis=-1, keepdims=True)
    codes = _hash_reference(qk, core.hash.anchor.numpy(), core.hash.mvec.numpy(), core.hash.A.numpy())
    want = _attention_reference(codes, v, SMALL["bits"] + 1.0).transpose(0, 2, 1, 3).reshape(3, 65, heads * dim)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_default_layers_keep_the_last_stage_or_quarter_in_softmax():
    def replaced(model):
        return [n for n, m in model.named_modules() if isinstance(m, EcoFormerAttention)]

    assert len(replaced(surgery.apply(tiny("vit", num_hidden_layers=8), ["ecoformer"]))) == 6
    assert len(replaced(surgery.apply(tiny("vit"), ["ecoformer"]))) == 1
    assert all(".layers.0." in n for n in replaced(surgery.apply(tiny("swin"), [("ecoformer", SMALL)])))
    with pytest.raises(
        ConfigError, match=r"ecoformer: option 'anchors' got 25; allowed: at most the 16 tokens block 1"
    ):
        surgery.apply(tiny("swin"), [("ecoformer", {"layers": "all"})])


def test_the_hash_is_learned_once_saved_and_never_relearned_on_reload(tmp_path):
    model = surgery.apply(tiny("vit"), [("ecoformer", SMALL)], calibration=[images(4, seed=1)])
    core = next(m for m in model.modules() if isinstance(m, EcoFormerAttention))
    assert bool(core.hash.learned)
    anchors = core.hash.anchor.clone()
    x = images(3, seed=2)
    logits = model(pixel_values=x).logits
    assert torch.equal(core.hash.anchor, anchors)  # a learned hash stays
    model.save_pretrained(tmp_path)
    reloaded = surgery.load(tmp_path)
    assert torch.equal(reloaded(pixel_values=x).logits, logits)
    again = next(m for m in reloaded.modules() if isinstance(m, EcoFormerAttention))
    assert torch.equal(again.hash.anchor, anchors) and torch.equal(again.hash.A, core.hash.A)


def test_without_calibration_the_first_batch_learns_the_hash_and_export_refuses_an_unlearned_one(tmp_path):
    model = surgery.apply(tiny("vit"), [("ecoformer", SMALL)])
    with pytest.raises((ExportError, SurgeryError), match=r"hash was never learned"):
        export(model, tmp_path / "onnx", to="onnx")
    core = next(m for m in model.modules() if isinstance(m, EcoFormerAttention))
    with torch.no_grad():
        model(pixel_values=images(2, seed=3))
    assert bool(core.hash.learned)
    fresh = surgery.apply(tiny("vit"), [("ecoformer", SMALL)])
    with torch.inference_mode():  # learning works in inference mode too (it fits with autograd inside)
        fresh(pixel_values=images(2))
    assert all(bool(m.hash.learned) for m in fresh.modules() if isinstance(m, EcoFormerAttention))


@pytest.mark.parametrize("relearn", [True, False])
def test_recovery_relearns_the_hash_on_its_first_batch_when_asked(relearn):
    from surgery.recovery import recover

    teacher = tiny("vit")
    student = surgery.apply(
        tiny("vit"), [("ecoformer", {**SMALL, "relearn_on_recover": relearn})], calibration=[images(4, seed=1)]
    )
    core = next(m for m in student.modules() if isinstance(m, EcoFormerAttention))
    before = core.hash.anchor.clone()
    data = (torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.randint(0, 10, (16,)))
    recover(student, teacher, data, epochs=1, batch_size=8, progress=False)
    assert torch.equal(core.hash.anchor, before) != relearn
    assert not core.learn_next and bool(core.hash.learned)


@pytest.mark.parametrize("field, value", [("bits", 0), ("anchors", 0), ("topk", 0), ("lr", 0.0), ("momentum", 1.0)])
def test_bad_options_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"ecoformer: option '{field}' got {value}"):
        surgery.apply(tiny("vit"), [("ecoformer", {field: value})])


def test_every_family_is_covered():
    assert supported("ecoformer") == list(ARCHS)


def test_the_closed_form_fit_is_autograd_and_torch_sgd_with_nesterov():
    """The per-bit fit writes the gradient and the optimiser step out; they equal autograd's gradient and
    torch.optim.SGD(lr, momentum=0.9, nesterov=True), the official optimiser, step for step."""
    from surgery.plugins.ecoformer.hashing import relaxed_gradient

    g = torch.Generator().manual_seed(7)
    kernel = torch.randn(2, 3, 11, 5, dtype=torch.float64, generator=g)
    targets = torch.randint(-1, 2, (2, 3, 11, 11), generator=g).double() * 6
    start = torch.randn(3, 5, dtype=torch.float64, generator=g)
    row = start.clone().requires_grad_(True)
    code_loss(2 * torch.sigmoid(torch.einsum("bhnm,hm->bhn", kernel, row)) - 1, targets, 6).backward()
    torch.testing.assert_close(
        relaxed_gradient(kernel, targets + targets.transpose(-1, -2), start, 6), row.grad, rtol=1e-12, atol=1e-15
    )
    ksh = KernelHash(3, 4, bits=6, anchors=5, lr=0.05, iterations=7, dtype=torch.float64)
    reference = start.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([reference], lr=0.05, momentum=0.9, nesterov=True)
    for _ in range(7):
        optimizer.zero_grad()
        code_loss(2 * torch.sigmoid(torch.einsum("bhnm,hm->bhn", kernel, reference)) - 1, targets, 6).backward()
        optimizer.step()
    torch.testing.assert_close(ksh._fit_row(kernel, targets, start), reference.detach(), rtol=1e-10, atol=1e-12)


def test_iterations_may_be_zero_but_not_negative_and_calibration_must_hold_a_batch():
    with pytest.raises(
        ConfigError, match=r"ecoformer: option 'iterations' got -1; allowed: an integer in \[0, 10000\]"
    ):
        surgery.apply(tiny("vit"), [("ecoformer", {"iterations": -1})])
    model = surgery.apply(tiny("vit"), [("ecoformer", {**SMALL, "iterations": 0})], calibration=[images(2)])
    assert all(bool(m.hash.learned) for m in model.modules() if isinstance(m, EcoFormerAttention))
    fresh = tiny("vit")
    with pytest.raises(
        ConfigError,
        match=r"ecoformer: option 'calibration' got 'an empty iterable'; allowed: at least one batch of pixel_values",
    ):
        surgery.apply(fresh, [("ecoformer", SMALL)], calibration=[])
    assert surgery.history(fresh) == [] and not any(
        isinstance(m, EcoFormerAttention) for m in fresh.modules()
    )  # atomic


def test_a_fused_qkv_projection_is_refused_with_the_reason():
    import dataclasses

    from surgery.errors import UnsupportedModelError
    from surgery.plugins.ecoformer import rewrite
    from surgery.plugins.ecoformer.config import EcoFormerConfig

    model = tiny("vit")
    anatomy = surgery.get_host().anatomy("vit")

    class Fused:  # the ViT's blocks as a layout with one qkv projection would describe them
        def blocks(self, model):
            return [
                dataclasses.replace(b, attention=dataclasses.replace(b.attention, projections={"qkv": "query"}))
                for b in anatomy.blocks(model)
            ]

        def prefix_tokens_of(self, config):
            return 1

    with pytest.raises(
        UnsupportedModelError, match=r"ecoformer: block 0 has a fused qkv projection; .* query and value ones separate"
    ):
        rewrite.apply(model, EcoFormerConfig(), Fused())


@pytest.mark.parametrize(
    "field, value", [("bits", 65), ("bits", 10**6), ("anchors", 1025), ("topk", 2000), ("iterations", 10**9)]
)
def test_options_that_would_run_for_hours_are_refused(field, value):
    with pytest.raises(ConfigError, match=rf"ecoformer: option '{field}' got {value}; allowed: an integer in \["):
        surgery.apply(tiny("vit"), [("ecoformer", {field: value})])


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_non_finite_learning_batch_is_refused_and_the_hash_stays_unlearned(poison):
    model = surgery.apply(tiny("vit"), [("ecoformer", SMALL)])
    batch = images(2, seed=1)
    batch[0, 0, 3, 3] = poison
    with pytest.raises(SurgeryError, match="holds NaN or inf values .* the hash was not learned"):
        surgery.apply(tiny("vit"), [("ecoformer", SMALL)], calibration=[batch])
    with pytest.raises(SurgeryError, match="holds NaN or inf values"):
        model(pixel_values=batch)
    assert not any(bool(m.hash.learned) for m in model.modules() if isinstance(m, EcoFormerAttention))


def test_a_batch_with_fewer_tokens_than_anchors_is_refused_with_the_reason():
    model = surgery.apply(tiny("vit"), [("ecoformer", {**SMALL, "anchors": 25})])  # 32 px, patch 4: 65 tokens
    small = torch.randn(2, 3, 16, 16)  # 17 tokens
    with pytest.raises(SurgeryError, match=r"this batch has 17 per image, fewer than anchors=25 or topk=4"):
        model(pixel_values=small, interpolate_pos_encoding=True)


def test_an_unlearned_hash_is_never_saved_and_never_loaded(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    model = surgery.apply(tiny("vit"), [("ecoformer", SMALL)])
    with pytest.raises(SurgeryError, match="cannot save this model: ecoformer: a block's hash was never learned"):
        model.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists()
    model(pixel_values=images(2))  # the first batch learns it
    model.save_pretrained(tmp_path / "m")
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))  # a checkpoint an older surgery wrote unlearned
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    save_file(
        {k: (torch.zeros_like(v) if k.endswith("hash.learned") else v) for k, v in weights.items()},
        str(tmp_path / "m" / "model.safetensors"),
        metadata=metadata,
    )
    assert json.loads((tmp_path / "m" / "config.json").read_text())["quantization_config"]
    from transformers import AutoModelForImageClassification

    for load in (surgery.load, AutoModelForImageClassification.from_pretrained):
        with pytest.raises(SurgeryError, match="cannot load this model: ecoformer: a block's hash was never learned"):
            load(tmp_path / "m")


def test_the_linear_attention_runs_in_float32_under_autocast():
    model = surgery.apply(tiny("vit"), [("ecoformer", SMALL)], calibration=[images(2)]).eval()
    x = images(2, seed=4)
    seen = []
    import surgery.plugins.ecoformer.layers as layers

    original = layers.hashed_attention
    try:
        layers.hashed_attention = lambda codes, v, bias: (
            seen.append((codes.dtype, v.dtype)) or original(codes, v, bias)
        )
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(pixel_values=x).logits
    finally:
        layers.hashed_attention = original
    assert seen and all(dtypes == (torch.float32, torch.float32) for dtypes in seen)
    assert torch.isfinite(out).all()
