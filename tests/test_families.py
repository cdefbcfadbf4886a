"""Every plugin on every family either works or is refused up front with the reason, as the
declarations say; the README's table is the generated one; a family the built-ins do not cover
(I-JEPA: no cls token, the head on the mean) gets the built-in methods through a third-party
``surgery_register_anatomies`` hook, and the ones that cannot handle it refuse it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import IJepaConfig, IJepaForImageClassification

import surgery
from surgery.core.anatomy import TRAITS, Anatomy, Layout
from surgery.core.hookspecs import hookimpl
from surgery.core.layout import BlockLayout
from surgery.core.support import BEGIN, END, support, support_table
from surgery.errors import UnsupportedModelError
from surgery.toolkit.tokens import token_sizes

from conftest import ARCHS, images, state_values, tiny

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {
    "quantize": {"activations": "none"},
    "token_merge": {"r": 4},
    "token_prune": {"r": 4},
    "token_transform": {"r": 4},
    "agent_attention": {"agents": 4},
}
PAIRS = [(m.name, arch) for m in surgery.list_methods() for arch in ARCHS]


@pytest.mark.parametrize("plugin, arch", PAIRS, ids=[f"{p}-{a}" for p, a in PAIRS])
def test_each_plugin_works_or_is_refused_up_front_as_declared(plugin, arch):
    model = tiny(arch)
    host = surgery.get_host()
    verdict = support(host.method(plugin), host.anatomy(model.config.model_type))
    before = state_values(model)
    spec = (plugin, OPTIONS.get(plugin, {}))
    if verdict.supported and verdict.requires:  # supported with the option values the family needs, refused without
        # them: left unset, an auto option takes them (so the wrong value is the one it takes elsewhere)
        elsewhere = {k: host.method(plugin).auto_options[k] for k, _ in verdict.requires} if verdict.automatic else {}
        with pytest.raises(UnsupportedModelError, match=", ".join(f"option '{k}' got" for k, _ in verdict.requires)):
            surgery.plan(model, [(plugin, {**spec[1], **elsewhere})])
        spec = spec if verdict.automatic else (plugin, {**spec[1], **dict(verdict.requires)})
    if verdict.supported:
        surgery.apply(model, [spec])
        assert dict(verdict.requires).items() <= surgery.history(model)[0].options.items()  # what ran is recorded
        with torch.no_grad():
            assert torch.isfinite(model(pixel_values=images()).logits).all()
        surgery.revert(model)
    else:
        with pytest.raises(UnsupportedModelError) as error:
            surgery.plan(model, [spec])
        for _, reason in verdict.notes:
            assert reason in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_readme_table_is_the_generated_one():
    text = (ROOT / "README.md").read_text()
    assert BEGIN in text and END in text, "README.md lacks the support table markers"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    methods = [m for m in surgery.list_methods() if m.package == "vision-surgery"]
    assert table == support_table(methods, list(surgery.get_host().anatomies.values())), (
        "README.md's support table is stale: paste the output of `surgery families` between its markers"
    )


def test_anatomies_declare_only_known_traits_and_layouts_agree_with_them():
    for anatomy in surgery.get_host().anatomies.values():
        assert set(anatomy.traits) <= set(TRAITS)
        for layout in anatomy.all_layouts():
            block = layout.block
            assert ("windowed" in anatomy.traits) == (block.window_size is not None), anatomy.model_type
            assert ("layer_scale" in anatomy.traits) == (block.layer_scale1 is not None), anatomy.model_type
            assert ("post_norm" in anatomy.traits) == (block.residual == "post_norm"), anatomy.model_type
    with pytest.raises(
        UnsupportedModelError, match=r"anatomy 'x': unknown trait\(s\) registerz; .*Did you mean 'registers'"
    ):
        Anatomy("x", {}, 0, "cls", len, len, traits=frozenset({"registerz"}))


# -- a family the built-ins do not cover, from a third-party plugin -----------------------------------
IJEPA_457 = BlockLayout(  # the ViT block of transformers 4.57, as a plugin author writes it
    norm1="layernorm_before",
    attention="attention.attention",
    projections={"query": "query", "key": "key", "value": "value"},
    heads="num_attention_heads",
    head_dim="attention_head_size",
    dropout="dropout_prob",
    output="attention.output.dense",
    output_dropout="attention.output.dropout",
    norm2="layernorm_after",
    mlp_in="intermediate.dense",
    activation="intermediate.intermediate_act_fn",
    mlp_out="output.dense",
    mlp_dropout="output.dropout",
)
IJEPA_5 = BlockLayout(  # and of transformers >= 5.9
    norm1="layernorm_before",
    attention="attention",
    projections={"query": "q_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj"},
    heads="num_attention_heads",
    head_dim="head_dim",
    dropout="attention_dropout",
    output_dropout="dropout",
    norm2="layernorm_after",
    mlp_in="mlp.fc1",
    activation="mlp.activation_fn",
    mlp_out="mlp.fc2",
    mlp_dropout="dropout",
    mask_argument="none",
)


def _roles(encoder: str, blocks: str, layout: BlockLayout) -> dict:
    return {
        "encoder": (encoder,),
        **layout.roles(blocks),
        "final_norm": ("ijepa.layernorm",),
        "classifier": ("classifier",),
        "patch_embed": ("ijepa.embeddings.patch_embeddings.projection",),
    }


class IJepaPlugin:
    """What a third-party package registers under the ``surgery`` entry-point group."""

    @hookimpl
    def surgery_register_anatomies(self):
        return [
            Anatomy(
                "ijepa",
                _roles("ijepa.encoder", "ijepa.encoder.layer.*", IJEPA_457),
                prefix_tokens=0,
                readout="cls",
                readout_heads=lambda c: c.num_attention_heads,
                readout_width=lambda c: c.hidden_size,
                block=IJEPA_457,
                layouts=(Layout("transformers >= 5.9", _roles("ijepa", "ijepa.layers.*", IJEPA_5), IJEPA_5),),
                traits=frozenset({"no_prefix", "mean_readout"}),
                family="I-JEPA",
            )
        ]


def _ijepa():
    torch.manual_seed(0)
    config = IJepaConfig(
        image_size=32,
        patch_size=4,
        num_labels=10,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    return IJepaForImageClassification(config).eval()


def test_a_third_party_family_gets_the_builtin_methods_it_can_take(host_with, tmp_path):
    host = host_with(IJepaPlugin())
    assert "ijepa" in host.anatomies
    table = support_table(surgery.list_methods(), [host.anatomy("ijepa")])
    assert "| quantize | yes |" in table and "| ggem | **no** [" in table
    assert "| token_prune | yes (unmerge=True) [" in table  # no cls token: scored by every token's attention
    with pytest.raises(UnsupportedModelError, match=r"ggem does not support model_type 'ijepa'"):
        surgery.plan(_ijepa(), ["ggem"])
    for plugin in ("token_prune", "token_transform"):  # the reducing blocks score by the cls token's attention
        with pytest.raises(UnsupportedModelError, match=rf"{plugin} does not support model_type 'ijepa'.*no_prefix"):
            surgery.plan(_ijepa(), [(plugin, {"unmerge": False})])
        assert surgery.plan(_ijepa(), [plugin]).steps[0].config.unmerge is True
    x = images()
    for spec in [
        ("quantize", {"activations": "none"}),
        ("token_merge", {"r": 4}),
        ("token_prune", {"r": 4}),
        ("token_transform", {"r": 4}),
        ("castling", {"init": "paper"}),
        ("agent_attention", {"agents": 4}),
        ("bivit", {}),
    ]:
        model = _ijepa()
        with torch.no_grad():
            reference = model(pixel_values=x).logits
        surgery.apply(model, [spec])
        with torch.no_grad():
            ours = model(pixel_values=x).logits
        assert torch.isfinite(ours).all() and not torch.equal(ours, reference)
        surgery.save(model, tmp_path / spec[0])
        with torch.no_grad():
            torch.testing.assert_close(surgery.load(tmp_path / spec[0])(pixel_values=x).logits, ours, rtol=0, atol=0)
    # token_merge with nothing in front: 4 merges in each of 2 blocks, every patch counted once
    model = surgery.apply(_ijepa(), [("token_merge", {"r": 4})])
    model(pixel_values=x)
    sizes = token_sizes(model).sizes
    assert sizes.shape == (3, 56, 1) and torch.all(sizes.sum(1) == 64)


def test_a_method_naming_an_unknown_trait_is_refused_when_defined():
    from surgery.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"method 'x': refused_traits names unknown trait\(s\) windows; .*Did you mean 'windowed'"
    ):
        surgery.SurgeryMethod(name="x", summary="x", config_class=object, apply=len, refused_traits={"windows": "no"})
    surgery.SurgeryMethod(name="x", summary="x", config_class=object, apply=len)  # no auto options: any config class
    config = surgery.get_host().method("token_merge").config_class
    with pytest.raises(
        ConfigError,
        match=r"method 'x': auto_options names 'unmerg', which is not an option of ToMeConfig "
        r"whose default is None\..*Did you mean 'unmerge'",
    ):
        surgery.SurgeryMethod(name="x", summary="x", config_class=config, apply=len, auto_options={"unmerg": False})
    with pytest.raises(
        ConfigError, match=r"auto_options names 'prop_attn', which is not an option of ToMeConfig whose"
    ):
        surgery.SurgeryMethod(name="x", summary="x", config_class=config, apply=len, auto_options={"prop_attn": True})


# -- BEiT / data2vec-vision: where the position bias lives ----------------------------------------


@pytest.mark.parametrize("arch", ["beit", "data2vec-vision"])
@pytest.mark.parametrize("plugin", ["agent_attention", "castling"])
def test_an_attention_swap_takes_the_position_bias_with_the_core_and_revert_puts_it_back(arch, plugin):
    """4.57 (and data2vec-vision in 5.x) keeps the bias table in the core; BEiT >= 5 in the block, which
    hands it to the core as the mask: either way no table is left behind to train, save or compute."""
    model = tiny(arch)
    x = images()
    keys, logits = list(model.state_dict()), model(pixel_values=x).logits
    tables = [k for k in keys if k.endswith("relative_position_bias_table")]
    assert len(tables) == model.config.num_hidden_layers
    surgery.apply(model, [(plugin, {"layers": "all", **OPTIONS.get(plugin, {})})])
    assert not [k for k in model.state_dict() if "relative_position_bias" in k]
    surgery.revert(model)
    assert list(model.state_dict()) == keys
    assert torch.equal(model(pixel_values=x).logits, logits)


def test_a_bias_shared_by_all_blocks_is_refused_by_the_methods_built_from_parts():
    model = tiny("beit", use_relative_position_bias=False, use_shared_relative_position_bias=True)
    before = state_values(model)
    for plugin in ("bivit", "agent_attention", "castling"):
        with pytest.raises(
            UnsupportedModelError,
            match=r"BeitForImageClassification \(beit\): "
            r"use_shared_relative_position_bias=True .* not described by the parts",
        ):
            surgery.apply(model, [plugin])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    surgery.apply(model, [("quantize", {"activations": "none"}), "ggem"])  # linears and the pooler: no parts needed
    assert torch.isfinite(model(pixel_values=images()).logits).all()


def test_a_beit_evaluated_by_surgery_still_trains():
    """BEiT caches its position index per module: one made under inference_mode would break every later
    backward, so surgery evaluates (accuracy, FLOPs, the export's parity run) under no_grad."""
    from surgery.evaluation.accuracy import predict_logits
    from surgery.evaluation.flops import model_flops

    model = tiny("beit")
    x = images()
    predict_logits(model, x)
    model_flops(model, x[:1])
    model.train()
    model(pixel_values=x).logits.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.endswith("relative_position_bias_table"))
