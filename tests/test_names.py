"""Names across layouts (surgery.core.names): one-to-one translation, the reference names a checkpoint
holds, and Swin's recomputed position index, on whichever transformers runs the suite."""

from __future__ import annotations

import pytest
import torch

import surgery
from surgery.core.anatomy import Anatomy, Layout
from surgery.core.families import swin_position_index
from surgery.core.names import Renamer, derived_buffers, reference_to_model, renamer, to_reference_state
from surgery.errors import UnsupportedModelError

from conftest import ARCHS, tiny


def anatomy_of(model) -> Anatomy:
    return surgery.get_host().anatomy(model.config.model_type)


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_names_go_back_to_the_model_names(arch):
    model = tiny(arch)
    anatomy = anatomy_of(model)
    state = model.state_dict()
    reference = to_reference_state(anatomy, model, state)
    back = reference_to_model(anatomy, model, reference)
    assert {back[name] for name in reference if back[name] in state} == set(state)
    # the reference names are 4.57's, whatever this transformers calls them
    assert all(".layers." not in k or k.startswith(("swin.", "swinv2.")) for k in reference)  # Swin stages are layers
    later = ("q_proj.weight", "o_proj.weight") + (("mlp.fc1.weight",) if anatomy.block.mlp_in != "mlp.fc1" else ())
    assert not any(k.endswith(later) for k in reference)
    for name, value in reference.items():
        if back[name] in state:
            assert value is state[back[name]]


@pytest.mark.parametrize("arch", ARCHS)
def test_a_rewritten_model_saves_every_added_tensor_under_its_role(arch):
    model = surgery.apply(tiny(arch), [("agent_attention", {"agents": 4})])
    anatomy = anatomy_of(model)
    reference = to_reference_state(anatomy, model, model.state_dict())
    core = anatomy.block.attention  # the reference layout's (4.57's) names, whatever this transformers has
    block = anatomy.roles["block"][0].replace("*", "0")
    assert block.endswith((".layer.0", ".blocks.0")) and core in ("attention.attention", "attention.self")
    assert f"{block}.{core}.an_bias" in reference and f"{block}.{core}.query.weight" in reference


def test_swin_position_index_formula_equals_the_models_own_buffer():
    model = tiny("swin")
    tables = {n: t for n, t in model.state_dict().items() if n.endswith("relative_position_bias_table")}
    indices = {n: b for n, b in model.named_buffers() if n.endswith("relative_position_index")}
    assert len(tables) == len(indices) > 0
    for (_, table), (_, index) in zip(sorted(tables.items()), sorted(indices.items())):
        formula = swin_position_index({"attention.self.relative_position_bias_table": table})
        assert torch.equal(formula, index.reshape(formula.shape))
    reference = to_reference_state(anatomy_of(model), model, model.state_dict())
    assert derived_buffers(anatomy_of(model), reference).keys() <= reference.keys()


def test_a_translation_that_is_not_one_to_one_is_an_error():
    one = Layout("one", {"block": ("m.a.*",), "attention": ("m.a.*.x",), "mlp_in": ("m.a.*.y",)})
    two = Layout("two", {"block": ("m.b.*",), "attention": ("m.b.*.z",), "mlp_in": ("m.b.*.z",)})
    anatomy = Anatomy("toy", one.roles, 0, "cls", lambda c: 1, lambda c: 1, layouts=(two,), name="one")
    forward = Renamer(anatomy, anatomy.all_layouts()[0], two)
    assert forward.name("m.a.3.x.weight") == "m.b.3.z.weight" and forward.name("m.other") == "m.other"
    with pytest.raises(UnsupportedModelError, match=r"do not name 'm.a.3.y.weight' one-to-one"):
        forward.names(["m.a.3.x.weight", "m.a.3.y.weight"])


def test_the_reference_layout_needs_no_translation():
    model = tiny("vit")
    layout = anatomy_of(model).layout_of(model)
    expected_none = layout.name == anatomy_of(model).all_layouts()[0].name
    assert (renamer(anatomy_of(model), model, to_reference=True) is None) == expected_none


def test_a_tampered_recomputed_buffer_is_refused(tmp_path):
    """Where this transformers recomputes Swin's position index (>= 5.9), the saved one is checked
    against its formula; where it loads the saved one (4.57), it is an ordinary weight."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageClassification

    model = surgery.apply(tiny("swin"), [("bivit", {"activations": "full"})])  # keeps the bias table
    surgery.save(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.endswith("relative_position_index"))
    with safe_open(str(weights), "pt") as handle:  # keep the metadata (the recipe digest)
        metadata = handle.metadata()
    tensors[key] = tensors[key].flip(0).contiguous()
    save_file(tensors, str(weights), metadata=metadata)
    if renamer(anatomy_of(model), model, to_reference=True) is None:
        pytest.skip("this transformers loads the saved index as a buffer of the model")
    with pytest.raises(surgery.RecipeError, match=r"relative_position_index is not what its formula gives"):
        AutoModelForImageClassification.from_pretrained(tmp_path / "m")


def test_a_role_the_other_layout_lacks_is_an_error():
    one = Layout("one", {"block": ("m.a.*",), "mlp_in": ("m.a.*.y",)})
    two = Layout("two", {"block": ("m.b.*",)})
    anatomy = Anatomy("toy", one.roles, 0, "cls", lambda c: 1, lambda c: 1, layouts=(two,), name="one")
    with pytest.raises(
        UnsupportedModelError,
        match=r"'m.a.0.y.weight' \(mlp_in in the toy layout 'one'\) has no counterpart "
        r"in the layout 'two'",
    ):
        Renamer(anatomy, anatomy.all_layouts()[0], two).name("m.a.0.y.weight")


def test_pickled_weights_of_a_surgery_checkpoint_are_refused_where_the_files_are_checked(tmp_path):
    """transformers 5.x hands the quantizer the checkpoint files, and a surgery checkpoint whose weights
    are a pickle is refused there (4.57 does not name the files; surgery.load refuses pickles on both)."""
    import transformers
    from packaging.version import Version
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    surgery.save(surgery.apply(tiny("vit"), "ggem"), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    torch.save(load_file(str(weights)), tmp_path / "m" / "pytorch_model.bin")
    weights.unlink()
    if Version(transformers.__version__) < Version("5"):
        pytest.skip("transformers 4.57 does not hand the quantizer the checkpoint files")
    with pytest.raises(
        surgery.RecipeError, match=r"a surgery checkpoint loads from safetensors only, not pytorch_model.bin"
    ):
        AutoModelForImageClassification.from_pretrained(tmp_path / "m")
