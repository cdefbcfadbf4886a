"""Exact save and reload: surgery.load and plain from_pretrained, strictness, and refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification

import surgery
from surgery.errors import RecipeError
from surgery.checkpoint.recipe import FORMAT_VERSION

from conftest import images, tiny
from test_apply import CASES, IDS


def _saved(tmp_path, spec, arch):
    model = surgery.apply(tiny(arch), [spec])
    with torch.no_grad():  # make the new parameters differ from their init
        for name, parameter in model.named_parameters():
            if name.endswith((".p", "_bias")) or "dwc" in name or "dconv" in name:
                parameter.add_(torch.linspace(-0.5, 0.5, parameter.numel()).reshape(parameter.shape))
        model(pixel_values=images(2, seed=7))  # state fitted on first use (EcoFormer's hash) is fitted before saving
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("spec, arch", CASES, ids=IDS)
def test_surgery_load_is_exact(tmp_path, spec, arch):
    model = _saved(tmp_path, spec, arch)
    x = images(batch=4)
    reloaded = surgery.load(tmp_path)
    assert type(reloaded) is type(model)
    assert [type(m) for m in reloaded.modules()] == [type(m) for m in model.modules()]
    assert torch.equal(reloaded(pixel_values=x).logits, model(pixel_values=x).logits)
    assert [s.to_dict() for s in surgery.history(reloaded)] == [s.to_dict() for s in surgery.history(model)]


@pytest.mark.parametrize("spec, arch", CASES, ids=IDS)
def test_plain_from_pretrained_replays_the_recipe(tmp_path, spec, arch):
    model = _saved(tmp_path, spec, arch)
    x = images(batch=2)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert torch.equal(reloaded(pixel_values=x).logits, model(pixel_values=x).logits)
    reloaded.float()  # surgery does not mark models as quantized, so casts keep working


def test_recipe_in_config_json(tmp_path):
    _saved(tmp_path, ("ggem", {"groups": 2}), "vit")
    recipe = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert recipe["quant_method"] == "surgery" and recipe["format_version"] == FORMAT_VERSION
    (step,) = recipe["steps"]
    assert step["plugin"] == "ggem" and step["package"] == "vision-surgery" and step["options"]["groups"] == 2
    assert step["targets"] == ["vit.layernorm"]
    assert set(step["versions"]) == {"surgery", "torch", "transformers"}
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))


def test_save_reload_save_again_is_stable(tmp_path):
    model = _saved(tmp_path / "a", ("ggem", {}), "swin")
    surgery.load(tmp_path / "a").save_pretrained(tmp_path / "b")
    again = surgery.load(tmp_path / "b")
    x = images()
    assert torch.equal(again(pixel_values=x).logits, model(pixel_values=x).logits)


def test_revert_after_reload(tmp_path):
    original = tiny("deit-distilled")
    x = images()
    logits = original(pixel_values=x).logits
    surgery.apply(original, "ggem").save_pretrained(tmp_path)
    reloaded = surgery.revert(surgery.load(tmp_path))
    assert torch.equal(reloaded(pixel_values=x).logits, logits)


def test_missing_plugin_names_plugin_and_package(tmp_path):
    _saved(tmp_path, ("ggem", {}), "vit")
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["steps"].append(
        {"plugin": "token_dropout", "plugin_version": "2.0", "package": "surgery-token-dropout", "options": {}}
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        RecipeError,
        match=r"step 2 uses plugin 'token_dropout' 2.0 from package 'surgery-token-dropout', which is not installed: pip install surgery-token-dropout",
    ):
        surgery.load(tmp_path)


def test_newer_recipe_format_is_refused(tmp_path):
    _saved(tmp_path, ("ggem", {}), "vit")
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RecipeError, match=r"format_version 2; this surgery reads up to 1"):
        surgery.load(tmp_path)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    _saved(tmp_path, ("ggem", {}), "vit")
    weights = load_file(tmp_path / "model.safetensors")
    weights.pop("vit.layernorm.pool.p")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        metadata = handle.metadata()  # the recipe's digest kept: only the weight is missing
    save_file(weights, tmp_path / "model.safetensors", metadata=metadata)
    with pytest.raises(RecipeError, match=r"lacks weights that its recipe's model needs \(vit.layernorm.pool.p\)"):
        surgery.load(tmp_path)


def test_pickle_checkpoints_are_never_loaded(tmp_path):
    model = tiny("vit")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle, as older transformers wrote them
    with pytest.raises(RecipeError, match=r"no model.safetensors .* never reads pickled .bin weights"):
        surgery.load(tmp_path)
    with pytest.raises(RecipeError, match=r"never runs checkpoint code"):
        surgery.load(tmp_path, trust_remote_code=True)


def test_load_without_recipe_is_a_plain_strict_load(tmp_path):
    model = tiny("swin")
    model.save_pretrained(tmp_path)
    x = images()
    assert torch.equal(surgery.load(tmp_path)(pixel_values=x).logits, model(pixel_values=x).logits)
