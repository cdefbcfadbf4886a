"""GGeM against float64 reference formulas, on its own and wired into every architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import surgery
from surgery.errors import ConfigError
from surgery.core.host import get_host
from surgery.plugins.ggem.config import GGeMConfig
from surgery.plugins.ggem.layers import GroupGeM

from conftest import ARCHS, images, tiny


def ggem_reference(tokens: np.ndarray, p: np.ndarray, eps: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Channel by channel, in float64: (mean_i max(x_ic, eps)^p_g) ^ (1/p_g), g = c // (C/G)."""
    batch, _, channels = tokens.shape
    per_group = channels // len(p)
    out = np.empty((batch, channels))
    for c in range(channels):
        pc = p[c // per_group]
        powered = np.maximum(tokens[:, :, c], eps) ** pc
        if weights is None:
            mean = powered.mean(axis=1)
        else:
            mean = (powered * weights).sum(axis=1) / weights.sum(axis=1)
        out[:, c] = mean ** (1.0 / pc)
    return out


def random_tokens(batch=2, n=7, channels=12, seed=0, positive=False):
    x = torch.randn(batch, n, channels, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.abs() + 0.05 if positive else x


@pytest.mark.parametrize("groups", [1, 3, 12])
@pytest.mark.parametrize("weighted", [False, True], ids=["mean", "size-weighted"])
def test_group_gem_matches_reference(groups, weighted):
    x = random_tokens()
    pool = GroupGeM(12, groups, p_init=3.0, eps=1e-6).double()
    with torch.no_grad():
        pool.p.copy_(torch.linspace(1.5, 4.0, groups, dtype=torch.float64))
    weights = (
        torch.tensor([[1, 2, 1, 3, 1, 1, 2], [1, 1, 1, 1, 5, 1, 1]], dtype=torch.float64)[..., None]
        if weighted
        else None
    )
    got = pool(x, weights).detach().numpy()
    want = ggem_reference(
        x.numpy(), pool.p.detach().numpy(), 1e-6, None if weights is None else weights.numpy()[..., 0]
    )
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_one_group_is_gem():
    x = random_tokens(positive=True)
    pool = GroupGeM(12, 1, p_init=3.0).double()
    gem = x.clamp(min=1e-6).pow(3.0).mean(dim=1).pow(1.0 / 3.0)  # GeM (Radenovic et al.)
    torch.testing.assert_close(pool(x), gem, rtol=1e-12, atol=1e-12)


def test_p_one_on_positive_inputs_is_the_mean():
    x = random_tokens(positive=True)
    pool = GroupGeM(12, 4, p_init=1.0).double()
    torch.testing.assert_close(pool(x), x.mean(dim=1), rtol=1e-12, atol=1e-12)


def test_negative_features_are_clamped_to_eps():
    x = -torch.ones(1, 3, 4, dtype=torch.float64)
    pool = GroupGeM(4, 2, p_init=2.0, eps=1e-3).double()
    torch.testing.assert_close(pool(x), torch.full((1, 4), 1e-3, dtype=torch.float64))


def test_gradient_reaches_p_and_learn_p_false_freezes_it():
    pool = GroupGeM(12, 3)
    pool(random_tokens().float()).sum().backward()
    assert pool.p.grad is not None and torch.all(pool.p.grad != 0)
    assert not GroupGeM(12, 3, learn_p=False).p.requires_grad


def _heads_reference(model, pooled: np.ndarray) -> np.ndarray:
    """The model's classifier head(s) in float64; DeiT's distilled model averages its two heads."""
    anatomy = get_host().anatomy(model.config.model_type)
    heads = [m for _, m in anatomy.find(model, "classifier")]
    outs = [pooled @ h.weight.detach().double().numpy().T + h.bias.detach().double().numpy() for h in heads]
    return np.mean(outs, axis=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_ggem_model_matches_reference(arch):
    model = tiny(arch)
    x = images()
    with torch.no_grad():
        features = model.base_model(pixel_values=x).last_hidden_state.double().numpy()  # after the final norm
    anatomy = get_host().anatomy(model.config.model_type)
    pooler_norm = anatomy.one(model, "pooler_norm")[1] if "normed_mean_pool" in anatomy.traits else None
    surgery.apply(model, [("ggem", {"p_init": 2.0})])
    pool = next(m for m in model.modules() if isinstance(m, GroupGeM))
    with torch.no_grad():
        pool.p.copy_(torch.linspace(1.25, 3.5, pool.groups))
        logits = model(pixel_values=x).logits.double().numpy()
    prefix = anatomy.prefix_tokens_of(model.config)
    pooled = ggem_reference(features[:, prefix:], pool.p.detach().double().numpy(), 1e-6)
    if "cls_mean_readout" in anatomy.traits:  # DINOv2: GGeM takes the cls half; the mean half stays
        pooled = np.concatenate([pooled, features[:, prefix:].mean(1)], axis=1)
    if pooler_norm is not None:  # BEiT: the pooler's LayerNorm after GGeM, as after its mean
        norm = pooler_norm
        centred = pooled - pooled.mean(1, keepdims=True)
        pooled = centred / np.sqrt((centred**2).mean(1, keepdims=True) + norm.eps)
        pooled = pooled * norm.weight.detach().double().numpy() + norm.bias.detach().double().numpy()
    np.testing.assert_allclose(logits, _heads_reference(model, pooled), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch, groups", [("vit", 4), ("deit", 4), ("deit-distilled", 4), ("swin", 4)])
def test_default_groups_are_last_stage_heads(arch, groups):
    model = surgery.apply(tiny(arch), "ggem")
    pool = next(m for m in model.modules() if isinstance(m, GroupGeM))
    assert pool.groups == groups


def test_groups_must_divide_width():
    with pytest.raises(ConfigError, match=r"ggem: option 'groups' got 5; allowed: a divisor of the feature width 32"):
        surgery.apply(tiny("vit"), [("ggem", {"groups": 5})])


@pytest.mark.parametrize(
    "options, match",
    [
        ({"groups": 0}, r"ggem: option 'groups' got 0; allowed: a positive integer"),
        ({"p_init": -1.0}, r"ggem: option 'p_init' got -1.0; allowed: a number > 0"),
        ({"eps": 0}, r"ggem: option 'eps' got 0.0; allowed: a number > 0"),
        ({"learn_p": "yes"}, r"ggem: option 'learn_p' got 'yes'; allowed: bool"),
        ({"p_inti": 2.0}, r"ggem: unknown option 'p_inti'.*Did you mean 'p_init'\?"),
    ],
)
def test_invalid_options_name_plugin_field_value_and_allowed(options, match):
    with pytest.raises(ConfigError, match=match):
        GGeMConfig.from_dict(options)


def test_config_json_round_trip():
    config = GGeMConfig(groups=4, p_init=2, eps=1e-5, learn_p=False)
    assert config.p_init == 2.0 and isinstance(config.p_init, float)
    assert GGeMConfig.from_dict(config.to_dict()) == config


def test_print_shows_the_new_pooling():
    text = str(surgery.apply(tiny("vit"), "ggem"))
    assert "GGeMReadout(" in text and "GroupGeM(channels=32, groups=4, eps=1e-06, learn_p=True)" in text
