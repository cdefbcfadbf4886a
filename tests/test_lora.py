"""LoRA recovery through PEFT: every plugin x {merged, adapter} reloads exactly, binary/int8 layers
merge exactly (their update trains inside the layer), targets come from the anatomy, PEFT's names are
seen through, resume works with adapters, and a failed run leaves no adapter behind."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import data_for, images, tiny
from peft import LoraConfig, get_peft_model
from test_recover import as_if_trained, noisy_data

import surgery
from surgery.core.anatomy import ROLE_GROUPS
from surgery.errors import ConfigError, SurgeryError
from surgery.recovery import LoraOptions, recover
from surgery.recovery.hooks import step_hooks
from surgery.recovery.lora import canonical, finish, fully_trained, target_modules, wrap
from surgery.recovery.schedule import new_parameter_names
from surgery.toolkit.adapters import is_latent, is_peft_model

OPTIONS = {
    "token_merge": {"r": 2},
    "token_transform": {"r": 2},
    "token_prune": {"r": 2},
    "agent_attention": {"agents": 4},
}
# every installed plugin (the registry: a new one is tested here unedited), plus variants
PLUGINS = {method.name: [(method.name, OPTIONS.get(method.name, {}))] for method in surgery.list_methods()}
PLUGINS.update(
    {"bivit-w1a32": [("bivit", {"activations": "full"})], "quantize-weights": [("quantize", {"activations": "none"})]}
)


def rewritten(name: str, arch: str = "vit"):
    teacher = as_if_trained(tiny(arch, num_labels=10).eval())
    student = copy.deepcopy(teacher)
    surgery.apply(student, PLUGINS[name], **data_for(PLUGINS[name]))
    return student, teacher


def logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(pixel_values=x).logits


def expected_adapter_size(model, r: int, targets=("attention",)) -> int:
    anatomy = surgery.get_host().anatomy(model.config.model_type)
    return sum(
        r * (m.in_features + m.out_features)
        for n in target_modules(model, anatomy, targets)
        for m in [model.get_submodule(n)]
    )


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "adapter"])
@pytest.mark.parametrize("name", list(PLUGINS))
def test_lora_recovery_trains_the_adapters_and_new_parameters_and_reloads_exactly(name, merge, tmp_path):
    student, teacher = rewritten(name)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    new = set(new_parameter_names(student, teacher))
    new |= fully_trained(student, surgery.get_host().anatomy("vit"), LoraOptions())  # the head and the norms
    adapter_size = expected_adapter_size(student, 4)
    result = recover(
        student,
        teacher,
        noisy_data(16),
        epochs=1,
        batch_size=8,
        lr=1e-2,
        progress=False,
        lora={"r": 4, "alpha": 8, "merge": merge},
    )
    assert result.lora["adapter_parameters"] == adapter_size and result.lora["outcome"] == (
        "merged" if merge else "adapter"
    )
    assert result.trainable_parameters == adapter_size + sum(before[n].numel() for n in new)
    assert result.parameters == sum(p.numel() for p in before.values())
    trained = result.adapter if not merge else student
    assert (result.adapter is None) == merge
    targets = set(target_modules(teacher, surgery.get_host().anatomy("vit"), ("attention",)))
    moved = []
    for n, p in student.named_parameters():  # PEFT's layers are in the model (adapter) or gone (merged)
        n = canonical(n)
        if "lora_" in n:
            assert not merge
            continue
        if n in new:
            assert p.requires_grad, n  # trained fully (added by the surgery, the head, the norms)
            moved.append(not torch.equal(p, before[n]))
        elif merge and n.rsplit(".", 1)[0] in targets and n.endswith("weight"):
            assert not torch.equal(p, before[n]), n  # the update is in the weight
        else:
            torch.testing.assert_close(p, before[n], rtol=0, atol=0, msg=n)  # frozen
    assert any(moved)
    x = images(2)
    expected = logits(trained, x)
    surgery.save(trained, tmp_path)
    reloaded = surgery.load(tmp_path)
    if not merge:
        assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
        assert is_peft_model(reloaded)  # surgery.load returns the PeftModel that was saved, adapter checked
        assert not is_peft_model(surgery.load(tmp_path, adapter=False))
    else:
        assert not (tmp_path / "adapter").exists()
    if not merge:  # the model under the PeftModel holds PEFT's layers: saving it alone would lose the adapter
        with pytest.raises(SurgeryError, match="PEFT's adapter layers are inside it"):
            surgery.save(student, tmp_path / "inner")
    torch.testing.assert_close(logits(reloaded, x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["bivit", "bivit-w1a32", "quantize", "quantize-weights", "ggem"])
def test_a_merge_gives_the_model_that_was_trained(name):
    """Binary/int8 layers train their update inside the layer, so merging changes nothing. PEFT's
    own LoRA beside such a layer (the adapter outcome's) is not mergeable: merged, it is binarized or
    quantized with the rest and the model changes (the reason the merged outcome trains it inside)."""
    student, teacher = rewritten(name)
    anatomy = surgery.get_host().anatomy("vit")
    x = images(3)
    for merge in (True, False):
        model = copy.deepcopy(student)
        peft_model = wrap(model, LoraOptions(r=4, merge=merge, targets=("attention", "mlp")), anatomy, set())
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
        unmerged = logits(peft_model, x)
        merged = logits(finish(peft_model, LoraOptions(merge=True)), x)
        latent = any(is_latent(m) for m in model.modules())
        if merge or not latent:
            torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
        else:
            assert (merged - unmerged).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ["vit", "deit-distilled", "swin"])
def test_targets_come_from_the_anatomy(arch):
    model = tiny(arch)
    anatomy = surgery.get_host().anatomy(model.config.model_type)
    attention = [
        n
        for role in ROLE_GROUPS["attention_linears"]
        if role in anatomy.layout_of(model).roles
        for n, _ in anatomy.find(model, role)
    ]
    mlp = [n for role in ("mlp_in", "mlp_out") for n, _ in anatomy.find(model, role)]
    blocks = len(anatomy.blocks(model))
    assert sorted(target_modules(model, anatomy, ("attention",))) == sorted(attention) and len(attention) == 4 * blocks
    assert sorted(target_modules(model, anatomy, ("attention", "mlp"))) == sorted(attention + mlp)
    if "query" in anatomy.layout_of(model).roles:
        query_value = [n for role in ("query", "value") for n, _ in anatomy.find(model, role)]
        assert (
            sorted(target_modules(model, anatomy, ("query", "value"))) == sorted(query_value)
            and len(query_value) == 2 * blocks
        )
    result = recover(
        model, None, noisy_data(8), epochs=1, batch_size=8, distill_weight=0, progress=False, lora={"r": 2}
    )
    assert result.lora["modules"] == 4 * blocks


@pytest.mark.parametrize(
    "lora,field",
    [
        ({"r": 0}, "'r'"),
        ({"alpha": -1}, "'alpha'"),
        ({"dropout": 1.0}, "'dropout'"),
        ({"targets": ["atention"]}, "'targets'"),
        ({"targets": []}, "'targets'"),
        ({"train": ["head"]}, "'train'"),
        ({"rank": 8}, "unknown option 'rank'"),
        ("r=8,alpha", "not key=value"),
    ],
)
def test_bad_lora_options_name_the_field(lora, field):
    model, teacher = rewritten("ggem")
    with pytest.raises(ConfigError, match=field) as error:
        recover(model, teacher, noisy_data(8), epochs=1, progress=False, lora=lora)
    assert "recover lora" in str(error.value)
    if lora == {"targets": ["atention"]}:
        assert "attention" in str(error.value).split("allowed")[-1]
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_command_line_form_parses():
    options = LoraOptions.parse("r=4,alpha=8,targets=attention+mlp,merge=false,dropout=0.1,train=classifier")
    assert options == LoraOptions(
        r=4, alpha=8.0, dropout=0.1, targets=("attention", "mlp"), merge=False, train=("classifier",)
    )
    assert LoraOptions.parse("train=").train == ()
    assert LoraOptions.parse(True) == LoraOptions() and LoraOptions.parse(None) is None


def test_dropout_cannot_be_merged_into_binary_layers():
    model, teacher = rewritten("bivit")
    with pytest.raises(ConfigError, match="dropout.*0 when merging into binary/int8"):
        recover(model, teacher, noisy_data(8), epochs=1, progress=False, lora={"dropout": 0.1})
    recover(
        model, teacher, noisy_data(8), epochs=1, batch_size=8, progress=False, lora={"dropout": 0.1, "merge": False}
    )


def test_a_model_wrapped_by_the_user_is_seen_through():
    """PEFT prefixes every name with base_model.model. and wraps targets in base_layer; new-parameter
    detection compares the names without them, so the warm-up stage trains only what surgery added."""
    model, teacher = rewritten("ggem")
    plain = new_parameter_names(model, teacher)
    names = target_modules(model, surgery.get_host().anatomy("vit"), ("query", "value"))  # 4.57's or 5.x's names
    user = get_peft_model(model, LoraConfig(r=4, target_modules=names))
    new = new_parameter_names(user, teacher)
    assert sorted(canonical(n) for n in new) == sorted(plain) and all(n.startswith("base_model.model.") for n in new)
    with pytest.raises(SurgeryError, match="trainable parameters the surgery added"):  # PEFT froze them
        recover(user, teacher, noisy_data(8), epochs=0, warmup_epochs=1, progress=False)
    for n, p in user.named_parameters():
        if n in new:
            p.requires_grad_(True)
    before = {n: p.detach().clone() for n, p in user.named_parameters()}
    recover(user, teacher, noisy_data(16), epochs=0, warmup_epochs=1, batch_size=8, progress=False)
    for n, p in user.named_parameters():
        assert torch.equal(p, before[n]) != (n in new), n  # only the new parameters moved
    with pytest.raises(SurgeryError, match="already a PeftModel"):
        recover(user, teacher, noisy_data(8), epochs=1, progress=False, lora={"r": 2})


def test_resume_with_adapters_continues_like_an_uninterrupted_run(tmp_path):
    model, teacher = rewritten("agent_attention")
    start = copy.deepcopy(model)
    options = dict(epochs=3, batch_size=8, lr=1e-2, progress=False, keep_checkpoints=3, lora={"r": 4, "merge": False})
    full = recover(model, teacher, noisy_data(), checkpoint_dir=tmp_path / "a", **options)
    resumed = recover(
        start, teacher, noisy_data(), resume=tmp_path / "a" / "epoch-1", checkpoint_dir=tmp_path / "b", **options
    )
    assert [r["epoch"] for r in resumed.history] == [2, 3]
    for (name, a), b in zip(full.adapter.named_parameters(), resumed.adapter.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    x = images(2)
    torch.testing.assert_close(logits(resumed.adapter, x), logits(full.adapter, x), rtol=0, atol=1e-6)


def test_a_failed_lora_run_leaves_no_adapter_behind():
    """A run that fails after some steps: PEFT's layers are taken out again (not merged), the flags
    are as they were, the weights under the adapters untouched (what trained fully keeps what it
    learned, as without LoRA)."""
    model, teacher = rewritten("ggem")
    new = set(new_parameter_names(model, teacher)) | fully_trained(
        model, surgery.get_host().anatomy("vit"), LoraOptions()
    )
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    modules = [(n, type(m)) for n, m in model.named_modules()]

    class Failing(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, index):
            if index >= 12:
                raise RuntimeError("disk gone")
            return {"pixel_values": images(1, seed=index)[0], "labels": torch.tensor(index)}

    with pytest.raises(RuntimeError, match="disk gone"):
        recover(
            model,
            teacher,
            torch.utils.data.DataLoader(Failing(), batch_size=4),
            epochs=1,
            progress=False,
            lora={"r": 2},
        )
    after = dict(model.named_parameters())
    assert [(n, type(m)) for n, m in model.named_modules()] == modules and sorted(after) == sorted(before)
    for n, (value, flag) in before.items():
        assert after[n].requires_grad == flag, n
        assert torch.equal(after[n], value) != (n in new), n  # steps were taken: what trains fully moved


def test_bivit_stages_find_binary_layers_under_adapters():
    model, teacher = rewritten("bivit")
    wrapped = wrap(model, LoraOptions(targets=("mlp",)), surgery.get_host().anatomy("vit"), set())
    (stages,) = step_hooks(wrapped.get_base_model())
    assert len(stages.mlp_linears) == 2 * len(surgery.get_host().anatomy("vit").blocks(model))


def test_targets_must_be_linears_whose_update_can_be_merged():
    model, teacher = rewritten("ggem")
    anatomy = surgery.get_host().anatomy("vit")
    with pytest.raises(SurgeryError, match=r"targets \['qkv'\] name no Linear in this vit model; its roles are"):
        target_modules(model, anatomy, ("qkv",))  # ViT's projections are separate

    class Scaled(torch.nn.Linear):  # computes something other than x W^T and does not say how to merge
        def forward(self, x):
            return 2 * super().forward(x)

    name, query = anatomy.find(model, "query")[0]
    scaled = Scaled(query.in_features, query.out_features)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, scaled)
    with pytest.raises(SurgeryError, match=rf"{name} \(query\) is a Scaled, not a Linear whose update can be merged"):
        recover(model, teacher, noisy_data(8), epochs=1, progress=False, lora={"r": 2})


def test_an_option_given_twice_is_refused():
    with pytest.raises(ConfigError, match="recover lora: option 'r' is given twice"):
        LoraOptions.parse("r=4,r=8")
