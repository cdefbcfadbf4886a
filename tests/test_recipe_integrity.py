"""No silently wrong model: both load paths (``surgery.load`` and plain ``from_pretrained``) run the
same checks on the recipe, and transformers without surgery refuses a surgery checkpoint loudly."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from conftest import images, tiny
from transformers import AutoModelForImageClassification, ViTForImageClassification

import surgery
from surgery.errors import IncompatibleStepsError, RecipeError
from surgery.checkpoint.marker import BASE_TYPE_KEY, MARKER


@pytest.fixture
def saved(tmp_path):
    model = surgery.apply(tiny("vit"), [("token_merge", {"r": 2}), "ggem"])
    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def edit(folder, change):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def loaders(folder):
    return {
        "surgery.load": lambda: surgery.load(folder),
        "AutoModel.from_pretrained": lambda: AutoModelForImageClassification.from_pretrained(folder),
        "ViTForImageClassification.from_pretrained": lambda: ViTForImageClassification.from_pretrained(folder),
    }


def recipe(config):
    return config["quantization_config"]


TAMPERED = {
    "steps missing": (lambda c: recipe(c).pop("steps"), r"'steps' must be a list, got None"),
    "steps empty": (lambda c: recipe(c).update(steps=[]), "the recipe has no steps"),
    "format_version text": (lambda c: recipe(c).update(format_version="1"), "format_version must be an integer"),
    "format_version bool": (lambda c: recipe(c).update(format_version=True), "format_version must be an integer"),
    "format_version newer": (lambda c: recipe(c).update(format_version=99), "reads up to 1. Upgrade surgery"),
    "step not an object": (lambda c: recipe(c)["steps"].append("ggem"), "recipe step 3 lacks plugin, options"),
    "targets wrong type": (
        lambda c: recipe(c)["steps"][0].update(targets="vit"),
        "'targets' must be a list of strings",
    ),
    "options wrong type": (lambda c: recipe(c)["steps"][0].update(options=[1]), "'options' must be a JSON object"),
    "unknown step field": (lambda c: recipe(c)["steps"][0].update(code="x"), "unknown field 'code'"),
    # a pair: (surgery.load's, the other loaders'): surgery.load compares the digest before it builds
    # anything, from_pretrained replays first
    "step listed twice": (
        lambda c: recipe(c)["steps"].append(recipe(c)["steps"][1]),
        ("not the one these weights were saved with", "ggem is already applied"),
    ),
    "step dropped": (lambda c: recipe(c)["steps"].pop(0), "not the one these weights were saved with"),
    "options changed": (
        lambda c: recipe(c)["steps"][0]["options"].update(r=3),
        "not the one these weights were saved with",
    ),
    "step injected": (
        lambda c: recipe(c)["steps"].insert(0, dict(recipe(c)["steps"][0], options={"r": 1})),
        ("not the one these weights were saved with", "token_merge is already applied"),
    ),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_recipe_is_refused_on_every_load_path(saved, case):
    change, message = TAMPERED[case]
    edit(saved, change)
    for name, load in loaders(saved).items():
        expected = message if isinstance(message, str) else message[name != "surgery.load"]
        with pytest.raises((RecipeError, IncompatibleStepsError), match=expected):
            load()


@pytest.mark.parametrize("value", [{}, [], {"quant_method": "gptq-or-anything"}])
def test_a_replaced_quantization_config_is_refused_by_the_marker(saved, value):
    edit(saved, lambda c: c.update(quantization_config=value))
    for name in ("surgery.load", "AutoModel.from_pretrained"):
        with pytest.raises(RecipeError, match="marked as a surgery checkpoint, but its quantization_config is not"):
            loaders(saved)[name]()


def test_weights_missing_for_an_injected_step_are_an_error_in_plain_from_pretrained(saved):
    edit(saved, lambda c: recipe(c)["steps"].append({"plugin": "bivit", "options": {"parts": "mlp"}}))
    for name, load in loaders(saved).items():  # surgery.load compares the digest before it builds anything
        expected = (
            "not the one these weights were saved with"
            if name == "surgery.load"
            else "lacks weights that its recipe's model needs"
        )
        with pytest.raises(RecipeError, match=expected):
            load()


def test_replay_runs_the_conflict_checks_of_apply(tmp_path):
    model = surgery.apply(tiny("vit"), [("agent_attention", {"agents": 4})])
    model.save_pretrained(tmp_path / "m")
    edit(tmp_path / "m", lambda c: recipe(c)["steps"].append({"plugin": "castling", "options": {}}))
    for name, load in loaders(tmp_path / "m").items():
        if name == "surgery.load":  # it compares the digest before it builds anything
            with pytest.raises(RecipeError, match="not the one these weights were saved with"):
                load()
            continue
        with pytest.raises(
            IncompatibleStepsError, match="castling conflicts with agent_attention|cannot be applied together"
        ):
            load()
    with pytest.raises(
        IncompatibleStepsError, match="castling conflicts with agent_attention|cannot be applied together"
    ):
        _replay_only(tmp_path / "m")


def _replay_only(folder):
    """The recipe's structure replayed on a bare model (what both loaders do before the weights)."""
    from transformers import AutoConfig

    from surgery.checkpoint.recipe import read_steps
    from surgery.checkpoint.replay import replay

    config = AutoConfig.from_pretrained(folder)
    replay(tiny("vit"), read_steps(config))


def test_saved_config_is_marked_and_both_paths_give_the_saved_model(saved):
    data = json.loads((saved / "config.json").read_text())
    assert (data["model_type"], data[BASE_TYPE_KEY]) == (MARKER, "vit")
    expected = surgery.load(saved)(pixel_values=images()).logits
    for load in loaders(saved).values():
        model = load()
        assert model.config.model_type == "vit" and BASE_TYPE_KEY not in vars(model.config)
        assert torch.equal(model(pixel_values=images()).logits, expected)
    surgery.revert(model)
    model.save_pretrained(saved.parent / "plain")  # no recipe left: an ordinary transformers folder
    assert json.loads((saved.parent / "plain" / "config.json").read_text())["model_type"] == "vit"


def test_plugin_versions_newer_major_refused_newer_minor_warned(saved):
    edit(saved, lambda c: recipe(c)["steps"][1].update(plugin_version="9.0.0"))
    with pytest.raises(
        RecipeError,
        match=r"saved by ggem 9.0.0, and vision-surgery installs ggem .*upgrade it \(pip install -U vision-surgery\)",
    ):
        surgery.load(saved)
    installed = surgery.get_host().method("ggem").version
    major, minor = installed.split(".")[:2]
    edit(saved, lambda c: recipe(c)["steps"][1].update(plugin_version=f"{major}.{int(minor) + 1}.0"))
    for load in loaders(saved).values():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load()
        assert any("newer than the installed" in str(w.message) for w in caught)
    edit(saved, lambda c: recipe(c)["steps"][1].update(plugin_version="not-a-version"))
    with pytest.raises(RecipeError, match="is not a version number"):
        surgery.load(saved)


def test_text_quoted_from_a_recipe_cannot_forge_output_lines(saved, capsys):
    from surgery.cli import main

    def forge(config):
        recipe(config)["steps"][0].update(plugin="gone", package="evil\nsurgery: ok: all good")

    edit(saved, forge)
    assert main(["apply", str(saved), "-p", "ggem", "-o", str(saved.parent / "x")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("surgery: error:") and all(line.startswith("  - ") for line in lines[1:])
    assert "pip install evil" not in lines[-1]  # recipe text is never quoted as a command
    assert lines[-1].endswith(
        "'evil surgery: ok: all good' is not a valid distribution name, which is not installed: "
        "install the distribution that provides it"
    )  # the newline became a space


WITHOUT_SURGERY = textwrap.dedent("""
    import sys
    from transformers import AutoConfig, AutoModelForImageClassification, pipeline
    for name, call in (("AutoConfig", lambda: AutoConfig.from_pretrained(sys.argv[1])),
                       ("AutoModel", lambda: AutoModelForImageClassification.from_pretrained(sys.argv[1])),
                       ("pipeline", lambda: pipeline("image-classification", model=sys.argv[1]))):
        try:
            call()
            print(name, "LOADED")
        except Exception as error:
            print(name, type(error).__name__, str(error).splitlines()[0])
    assert "surgery" not in sys.modules
""")


def test_transformers_without_surgery_refuses_a_surgery_checkpoint_and_names_the_package(saved, tmp_path):
    from surgery.demo.zoo import image_processor

    image_processor(32).save_pretrained(saved)
    script = tmp_path / "plain.py"
    script.write_text(WITHOUT_SURGERY)
    result = subprocess.run(
        [sys.executable, str(script), str(saved)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and not any("LOADED" in line for line in lines), lines
    assert all("pip install vision-surgery" in line for line in lines), lines


def test_a_marked_config_with_an_unknown_base_type_or_the_wrong_class_is_refused(saved):
    from transformers import DeiTForImageClassification

    with pytest.raises(RecipeError, match=r"this surgery checkpoint is a 'vit' model; it cannot load into DeiTConfig"):
        DeiTForImageClassification.from_pretrained(saved)
    edit(saved, lambda c: c.update({BASE_TYPE_KEY: "no-such-type"}))
    with pytest.raises(RecipeError, match=r"its surgery_base_model_type is 'no-such-type', not a model type"):
        AutoModelForImageClassification.from_pretrained(saved)


CONCRETE_CLASS_WITHOUT_SURGERY = textwrap.dedent("""
    import json, sys
    import transformers
    results = {}
    for folder in sys.argv[1:]:
        model_class = getattr(transformers, json.load(open(folder + "/config.json"))["architectures"][0])
        try:
            model_class.from_pretrained(folder)
            results[folder] = "LOADED"
        except Exception as error:
            results[folder] = type(error).__name__ + ": " + " ".join(str(error).split())[:300]
    assert "surgery" not in sys.modules
    print(json.dumps(results))
""")


def _every_plugin_saved(tmp_path, arch):
    """One folder per installed plugin (the registry's, third-party ones included), on ``arch``."""
    host = surgery.get_host()
    folders = {}
    for name in host.methods:
        anatomy = host.anatomy(tiny(arch).config.model_type)
        if host.method(name).refusal(anatomy) is not None:
            continue
        options = host.method(name).options_required(anatomy)  # what the family needs (Swin: unmerge=True)
        model = surgery.apply(tiny(arch), [(name, options)], calibration=[images(4, seed=1)])
        model(pixel_values=images(2, seed=7))  # state fitted on first use is fitted before saving
        model.save_pretrained(tmp_path / arch / name)
        folders[name] = tmp_path / arch / name
    return folders


def test_the_concrete_model_class_without_surgery_refuses_every_plugin_and_with_it_gives_the_same_logits(tmp_path):
    """ViT, Swin and DINOv2, every plugin each: one process without surgery loads them all."""
    folders = {
        (arch, name): folder
        for arch in ("vit", "swin", "dinov2")
        for name, folder in _every_plugin_saved(tmp_path, arch).items()
    }
    # the patch embedding as int8 codes: its float weight is not in the file, so the bias carries the guard
    outer = surgery.apply(tiny("swin"), [("quantize", {"patch_embed": "int8"})], calibration=[images(4, seed=1)])
    outer.save_pretrained(tmp_path / "swin-patch-embed-int8")
    folders[("swin", "quantize patch_embed=int8")] = tmp_path / "swin-patch-embed-int8"
    assert all(sum(a == arch for a, _ in folders) >= 4 for arch in ("vit", "swin", "dinov2"))
    result = subprocess.run(
        [sys.executable, "-c", CONCRETE_CLASS_WITHOUT_SURGERY, *map(str, folders.values())],
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    for name, folder in folders.items():  # a shape it cannot take: transformers' own error, never a model
        outcome = outcomes[str(folder)]
        assert outcome.startswith("RuntimeError") and ("size mismatch" in outcome or "ignore_mismatched" in outcome), (
            name,
            outcome,
        )
        model_class = type(surgery.load(folder))
        expected = surgery.load(folder)(pixel_values=images()).logits
        assert torch.equal(model_class.from_pretrained(folder)(pixel_values=images()).logits, expected), name


def test_a_guarded_tensor_of_another_shape_is_refused(saved):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from surgery.checkpoint.guard import GUARD_KEY

    path = saved / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}
    key = metadata[GUARD_KEY]
    assert tensors[key].shape[0] == 1 and key.endswith("patch_embeddings.projection.weight")
    tensors[key] = tensors[key].squeeze(0)  # saved as the plain model holds it: no longer what the metadata says
    save_file(tensors, str(path), metadata=metadata)
    for load in loaders(saved).values():
        with pytest.raises(RecipeError, match="guarded tensor has shape"):
            load()


def test_a_recipe_from_before_the_rename_names_the_new_distribution(saved):
    """Recipes written before the distribution was renamed record package 'surgery' (another tool on the
    index) and the old marker: they load, and a missing plugin's hint names vision-surgery."""
    from surgery.checkpoint.marker import MARKERS

    edit(saved, lambda c: c.update(model_type=MARKERS[1]))
    edit(saved, lambda c: [step.update(package="surgery") for step in recipe(c)["steps"]])
    expected = surgery.load(saved)(pixel_values=images()).logits  # the package is not part of the digest
    assert torch.equal(ViTForImageClassification.from_pretrained(saved)(pixel_values=images()).logits, expected)
    edit(saved, lambda c: recipe(c)["steps"][0].update(plugin="gone"))
    with pytest.raises(
        RecipeError,
        match=r"plugin 'gone' .*from package 'vision-surgery', which is not installed: "
        r"pip install vision-surgery$",
    ):
        surgery.load(saved)
