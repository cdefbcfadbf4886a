"""plan / apply / revert / history over plugins x architectures, validation, and atomicity."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch
from transformers import ConvNextConfig, ConvNextForImageClassification

import surgery
from surgery.core.names import renamer
from surgery.errors import (
    ApplyError,
    ConfigError,
    IncompatibleStepsError,
    RevertError,
    UnknownPluginError,
    UnsupportedModelError,
)
from surgery.plugins.ggem.config import GGeMConfig

from conftest import ARCHS, images, module_tree, state_values, supported, tiny

# (spec, architectures): every installed plugin (the registry: a new one is tested here unedited) over the
# architectures its declarations support, with its defaults or the non-default options below (which
# also test that options reach the rewrite)
OPTIONS = {
    "ggem": {"p_init": 2.5},
    "token_merge": {"r": 6},
    "token_transform": {"r": 6, "topk": 3},
    "token_prune": {"r": 6},
    "agent_attention": {"agents": 4, "init": "paper"},
    "castling": {"init": "paper", "kernel_size": 3},
    "bivit": {"softmax_ratio": 0.3},
    "quantize": {"activations": "none"},
    "ecoformer": {"bits": 8, "anchors": 9, "topk": 4},
}
SPECS = [(method.name, OPTIONS.get(method.name, {})) for method in surgery.list_methods()]
CASES = [(spec, arch) for spec in SPECS for arch in supported(spec[0])]
CASES += [(("token_transform", {"flops": 0.6}), "deit-distilled")]
CASES += [(("bivit", {"activations": "full", "pack": False}), arch) for arch in ("vit", "swin")]
IDS = [f"{spec[0]}-{'-'.join(f'{k}={v}' for k, v in spec[1].items())}-{arch}" for spec, arch in CASES]


@pytest.mark.parametrize("spec, arch", CASES, ids=IDS)
def test_plan_changes_nothing_and_lists_targets(spec, arch):
    model = tiny(arch)
    tree, values = module_tree(model), state_values(model)
    plan = surgery.plan(model, [spec])
    assert module_tree(model) == tree
    assert all(torch.equal(values[k], v) for k, v in model.state_dict().items())
    assert not hasattr(model.config, "quantization_config")
    assert plan.steps[0].targets and all(model.get_submodule(t) is not None for t in plan.steps[0].targets)
    assert f"1. {spec[0]} " in str(plan)


@pytest.mark.parametrize("spec, arch", CASES, ids=IDS)
def test_apply_records_history_and_recipe(spec, arch):
    model = tiny(arch)
    targets = surgery.plan(model, [spec]).steps[0].targets
    assert surgery.apply(model, [spec]) is model
    (step,) = surgery.history(model)
    assert (step.plugin, step.targets, step.package) == (spec[0], targets, "vision-surgery")
    assert spec[1].items() <= step.options.items()
    recipe = model.config.to_dict()["quantization_config"]
    # the recipe names the targets in the anatomy's reference layout (transformers 4.57's names)
    forward = renamer(surgery.get_host().anatomy(model.config.model_type), model, to_reference=True)
    reference = [forward.name(t) for t in step.targets] if forward else step.targets
    assert recipe["quant_method"] == "surgery" and recipe["steps"] == [{**step.to_dict(), "targets": reference}]
    assert all(not t.startswith(("vit.layers.", "deit.layers.")) and ".q_proj" not in t for t in reference)


@pytest.mark.parametrize("spec, arch", CASES, ids=IDS)
def test_revert_restores_the_original_exactly(spec, arch):
    model = tiny(arch)
    x = images()
    tree, values, logits = module_tree(model), state_values(model), model(pixel_values=x).logits
    surgery.apply(model, [spec])
    assert module_tree(model) != tree
    surgery.revert(model)
    assert module_tree(model) == tree
    assert all(torch.equal(values[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(pixel_values=x).logits, logits)
    assert surgery.history(model) == [] and not hasattr(model.config, "quantization_config")


@pytest.mark.parametrize("spec, arch", CASES, ids=IDS)
def test_new_modules_follow_the_training_mode(spec, arch):
    model = surgery.apply(tiny(arch).eval(), [spec])
    assert not any(m.training for m in model.modules())
    model = surgery.apply(tiny(arch).train(), [spec])
    assert all(m.training for m in model.modules())


def test_spec_forms_are_equivalent():
    configs = []
    for spec in ["ggem", ("ggem", {}), GGeMConfig(), ["ggem"], [GGeMConfig()]]:
        model = surgery.apply(tiny("vit"), spec)
        configs.append(surgery.history(model)[0].options)
    assert all(c == configs[0] for c in configs)


def test_bad_spec_shape():
    with pytest.raises(ConfigError, match=r"cannot read the step 42"):
        surgery.plan(tiny("vit"), [42])


def test_unknown_plugin_lists_available_and_suggests():
    with pytest.raises(
        UnknownPluginError, match=r"no surgery plugin named 'gem'; available: .*ggem.*Did you mean 'ggem'\?"
    ):
        surgery.apply(tiny("vit"), ["gem"])


def test_unknown_architecture_names_supported_ones():
    model = ConvNextForImageClassification(
        ConvNextConfig(num_labels=3, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])
    )
    with pytest.raises(
        UnsupportedModelError,
        match=r"model_type 'convnext'.*supported: beit, data2vec-vision, deit, dinov2, dinov2_with_registers, swin, swinv2, vit, vit_msn",
    ):
        surgery.plan(model, ["ggem"])


def test_non_transformers_model_is_refused():
    with pytest.raises(UnsupportedModelError, match=r"Linear is not a transformers model"):
        surgery.plan(torch.nn.Linear(2, 2), ["ggem"])


def test_applying_ggem_twice_is_refused():
    model = surgery.apply(tiny("vit"), "ggem")
    with pytest.raises(IncompatibleStepsError, match=r"ggem is already applied"):
        surgery.apply(model, "ggem")
    with pytest.raises(IncompatibleStepsError, match=r"ggem is already applied"):
        surgery.plan(tiny("vit"), ["ggem", "ggem"])


def test_revert_more_steps_than_applied():
    with pytest.raises(RevertError, match=r"cannot revert 2 step\(s\): the model has 1"):
        surgery.revert(surgery.apply(tiny("vit"), "ggem"), 2)


# -- test plugins ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NoOptions(surgery.SurgeryConfig):
    plugin: ClassVar[str] = "test"


def _scale_head_then_fail(model, config, anatomy):
    """Mutates in every way a plugin can (values, modules, classes, config), then fails on real tensors."""
    name, head = (
        anatomy.one(model, "classifier") if model.config.model_type != "deit" else anatomy.find(model, "classifier")[0]
    )
    if head.weight.is_meta:
        return surgery.Rewrite([name])
    with torch.no_grad():
        head.weight.mul_(3.0)
    model.set_submodule(name, torch.nn.Identity())
    first_block = anatomy.find(model, "block")[0][1]
    first_block.__class__ = torch.nn.Module
    model.config.num_labels = 99
    raise RuntimeError("disk full")


def _method(name, apply, model_types=("*",), **kw):
    return surgery.SurgeryMethod(
        name=name, summary=f"test {name}", config_class=NoOptions, model_types=model_types, apply=apply, **kw
    )


class FailingPlugin:
    @surgery.hookimpl
    def surgery_register_methods(self):
        noop = lambda model, config, anatomy: surgery.Rewrite([])  # noqa: E731
        return [
            _method("fails_late", _scale_head_then_fail),
            _method("fails_early", lambda m, c, a: 1 / 0),
            _method("vit_only", noop, model_types=("vit",)),
            _method("left", noop, conflicts={"right": "both rewrite the head"}),
            _method("right", noop),
            _method("one_way", noop),
        ]

    @surgery.hookimpl
    def surgery_veto(self, model, steps, history):
        names = [s.method.name for s in steps]
        if "right" in names and "left" in names and names.index("right") < names.index("left"):
            return ["right must not run before left"]
        return []


@pytest.mark.parametrize("arch", ARCHS)
def test_failed_apply_leaves_model_exactly_as_before(host_with, arch):
    host_with(FailingPlugin())
    model = tiny(arch)
    x = images()
    tree, values, logits = module_tree(model), state_values(model), model(pixel_values=x).logits
    config = model.config.to_dict()
    first = "ggem" if arch in supported("ggem", [arch]) else "bivit"  # a real step that rewrites, then the failure
    with pytest.raises(ApplyError, match=r"fails_late failed while rewriting .*RuntimeError: disk full.*restored"):
        surgery.apply(model, [first, "fails_late"])
    assert module_tree(model) == tree
    assert all(torch.equal(values[k], v) for k, v in model.state_dict().items())
    assert model.config.to_dict() == config and surgery.history(model) == []
    assert torch.equal(model(pixel_values=x).logits, logits)


def test_failure_in_dry_run_changes_nothing(host_with):
    host_with(FailingPlugin())
    model = tiny("vit")
    tree = module_tree(model)
    with pytest.raises(
        ApplyError, match=r"fails_early failed on ViTForImageClassification during the dry run: ZeroDivisionError"
    ):
        surgery.apply(model, ["ggem", "fails_early"])
    assert module_tree(model) == tree


def test_unsupported_architecture_for_a_plugin(host_with):
    host_with(FailingPlugin())
    with pytest.raises(
        UnsupportedModelError, match=r"vit_only does not support model_type 'swin'.*it supports vit only"
    ):
        surgery.plan(tiny("swin"), ["vit_only"])


def test_conflicts_and_vetoes_are_collected_into_one_error(host_with):
    host_with(FailingPlugin())
    with pytest.raises(IncompatibleStepsError) as error:
        surgery.plan(tiny("vit"), ["right", "left"])
    message = str(error.value)
    assert "left conflicts with right: both rewrite the head" in message
    assert "right must not run before left" in message
    surgery.plan(tiny("vit"), ["left", "one_way"])  # no conflict


def test_conflict_with_a_step_already_applied(host_with):
    host_with(FailingPlugin())
    model = surgery.apply(tiny("vit"), "left")
    with pytest.raises(IncompatibleStepsError, match=r"right conflicts with left: both rewrite the head"):
        surgery.apply(model, "right")


def test_one_way_steps_cannot_be_reverted(host_with):
    host_with(FailingPlugin())
    model = surgery.apply(tiny("vit"), ["ggem", "one_way"])
    with pytest.raises(RevertError, match=r"one_way: this step cannot be undone"):
        surgery.revert(model)
    assert [s.plugin for s in surgery.history(model)] == ["ggem", "one_way"]


class Observer:
    def __init__(self):
        self.seen = []

    @surgery.hookimpl
    def surgery_step_applied(self, model, step):
        self.seen.append((type(model).__name__, step.plugin, tuple(step.targets)))


def test_step_applied_hook_observes_each_step(host_with):
    observer = Observer()
    host_with(observer)
    surgery.apply(tiny("vit"), "ggem")
    assert observer.seen == [("ViTForImageClassification", "ggem", ("vit.layernorm",))]


class NormSwapPlugin:
    """A third-party method that replaces the final norm, which ggem also replaces: nothing tells the
    host that the two overlap except the modules each claims."""

    @surgery.hookimpl
    def surgery_register_methods(self):
        import dataclasses
        from typing import ClassVar

        from surgery.toolkit.modules import Changes, undo

        @dataclasses.dataclass(frozen=True)
        class NormSwapConfig(surgery.SurgeryConfig):
            plugin: ClassVar[str] = "norm_swap"

        def apply(model, config, anatomy):
            changes = Changes(model)
            name, _ = anatomy.one(model, "final_norm")
            changes.replace(name, torch.nn.LayerNorm(model.config.hidden_size))
            return changes.rewrite()

        return [
            surgery.SurgeryMethod(
                name="norm_swap",
                summary="a fresh final norm",
                config_class=NormSwapConfig,
                model_types=("vit", "deit"),
                apply=apply,
                revert=undo,
                roles=("final_norm",),
            )
        ]


@pytest.mark.parametrize("order", [["ggem", "norm_swap"], ["norm_swap", "ggem"]])
def test_overlaps_come_from_the_claimed_modules_alone(host_with, order):
    host_with(NormSwapPlugin())
    with pytest.raises(
        IncompatibleStepsError, match=rf"{order[1]} and {order[0]} would both replace the final norm \(vit.layernorm\)"
    ):
        surgery.plan(tiny("vit"), order)
    model = surgery.apply(tiny("vit"), order[0])
    tree = module_tree(model)
    with pytest.raises(IncompatibleStepsError, match=rf"{order[1]} and {order[0]} would both replace the final norm"):
        surgery.apply(model, order[1])
    assert module_tree(model) == tree
    surgery.apply(tiny("vit"), ["norm_swap", "token_merge"])  # disjoint claims compose


@pytest.mark.parametrize("spec", SPECS, ids=[spec[0] for spec in SPECS])
def test_apply_resolves_the_models_layout_once_and_hands_every_step_the_bound_anatomy(spec, monkeypatch):
    from surgery.core.anatomy import Anatomy

    model = tiny(supported(spec[0], ["vit", "swin"])[0])
    resolved, find = [], Anatomy._find_layout
    monkeypatch.setattr(Anatomy, "_find_layout", lambda self, module: resolved.append(module) or find(self, module))
    surgery.apply(model, [spec], calibration=[images(4, seed=s) for s in range(2)])
    assert resolved == [model]  # once, on the model itself; the dry run's meta copy takes the same layout


def test_a_bound_anatomy_answers_for_its_model_only_and_keeps_it_alive_no_longer():
    import gc

    model = tiny("vit")
    bound = surgery.get_host().anatomy_of(model)
    layout = bound.layout_of(model)
    assert bound.layout_of(model) is layout and bound == surgery.get_host().anatomy("vit")
    assert bound.layout_of(model.vit).name == f"{layout.name}, base model"  # another model: its own layout
    assert surgery.get_host().anatomy_of(torch.nn.Linear(2, 2), required=False) is None
    with pytest.raises(UnsupportedModelError, match="Linear has model_type 'None'"):
        surgery.get_host().anatomy_of(torch.nn.Linear(2, 2))
    del model
    gc.collect()
    assert bound.binding[0]() is None
