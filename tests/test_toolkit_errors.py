"""Errors of the toolkit, the host and the anatomy that a plugin author or a user meets."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
from conftest import tiny
from safetensors.torch import load_file, save_file

import surgery
from surgery.core.anatomy import Anatomy
from surgery.errors import SurgeryError, UnknownPluginError, UnsupportedModelError
from surgery.toolkit.modules import Changes
from surgery.toolkit.register import define_method, distribution_version


def test_a_roles_only_layout_refuses_methods_that_build_from_parts(host_with):
    host = host_with()
    base = host.anatomy("vit")
    layout = base.layout_of(tiny("vit"))  # this transformers' layout
    roles_only = Anatomy("vit", layout.roles, 1, "cls", base.readout_heads, base.readout_width, name="roles only")
    host.anatomies["vit"] = roles_only
    with pytest.raises(
        UnsupportedModelError, match=r"the anatomy's layout 'roles only' names modules only, not the parts"
    ):
        surgery.plan(tiny("vit"), ["castling"])
    with pytest.raises(UnsupportedModelError, match=r"the layout 'roles only' does not describe its blocks' parts"):
        roles_only.blocks(tiny("vit"))
    surgery.plan(tiny("vit"), ["ggem", "quantize"])  # roles are enough for these


def test_a_capability_nobody_provides():
    with pytest.raises(UnknownPluginError, match=r"no installed surgery plugin provides 'int4'"):
        surgery.get_host().provider("int4")


def test_define_method_needs_a_plugin_name_and_a_known_version():
    @dataclasses.dataclass(frozen=True)
    class Nameless(surgery.SurgeryConfig):
        plugin: ClassVar[str] = ""

    with pytest.raises(SurgeryError, match=r"tests: Nameless sets no `plugin` name"):
        define_method("tests", config_class=Nameless, summary="x", model_types=("vit",), apply=lambda *a: None)
    with pytest.raises(SurgeryError, match=r"no installed distribution provides 'not_a_package_here'.*pass version="):
        distribution_version("not_a_package_here.plugin")
    assert distribution_version("surgery.plugins.ggem") == surgery.__version__


def test_changes_refuse_targets_that_are_not_the_claims():
    model = tiny("vit")
    changes = Changes(model)
    changes.replace("vit.layernorm", type(model.vit.layernorm)(32))
    with pytest.raises(
        ValueError, match=r"rewrite targets \['vit.pooler'\] are not the claimed modules \['vit.layernorm'\]"
    ):
        changes.rewrite(["vit.pooler"])


def test_a_plain_checkpoint_missing_a_weight_is_refused(tmp_path):
    tiny("vit").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights.pop("vit.layernorm.weight")
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        SurgeryError, match=r"the checkpoint lacks weights the model needs \(vit.layernorm.weight\)\.$"
    ):
        surgery.load(tmp_path)
