"""Every installed plugin on ViT, DeiT, Swin and DINOv2 (where it supports the family) under PyTorch 2's
deployment paths: ``torch.export.export`` and ``torch.compile`` with ``fullgraph=True`` (Dynamo's trace; a
graph break anywhere fails the test), each giving the eager logits. The default run takes the two attention
layouts, ViT's global tokens and Swin's windows, and AOTAutograd on compiled int8 training; DeiT (two prefix
tokens) and DINOv2 are marked slow, as is Inductor itself (AOTAutograd and code generation, seconds per model):
the whole matrix, and the int8 case, where it must lower to oneDNN's int8 kernels (about 50 s of the suite's
time on 2 cores; ``pytest -m slow tests/test_compile.py``)."""

from __future__ import annotations

import pytest
import torch

import surgery
from surgery.errors import SurgeryError

from conftest import images, supported, tiny, untie

FAMILIES = ["vit", "deit-distilled", "swin", "dinov2"]
IN_THE_SUITE = ("vit", "swin")  # the others in `pytest -m slow` (about 90 s of the suite's time on 2 cores)
PAIRS = [
    pytest.param(m.name, arch, marks=() if arch in IN_THE_SUITE else pytest.mark.slow, id=f"{m.name}-{arch}")
    for m in surgery.list_methods()
    for arch in supported(m.name, FAMILIES)
]
ATOL = {torch.float32: 1e-5}


def rewritten(plugin: str, arch: str) -> torch.nn.Module:
    """The plugin with its defaults, calibrated where it takes data (quantize's W8A8 scales, EcoFormer's hash)."""
    model = untie(tiny(arch))
    return surgery.apply(model, [plugin], calibration=[images(4, seed=s) for s in range(2)]).eval()


def eager(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x).logits


@pytest.mark.parametrize("plugin, arch", PAIRS)
def test_torch_export_gives_the_eager_logits(plugin, arch):
    model, x = rewritten(plugin, arch), images()
    expected = eager(model, x)
    program = torch.export.export(model, (), {"pixel_values": x})
    with torch.no_grad():
        got = program.module()(pixel_values=x).logits
    torch.testing.assert_close(got, expected, atol=ATOL[got.dtype], rtol=0)


@pytest.mark.parametrize("plugin, arch", PAIRS)
def test_torch_compile_traces_one_graph_with_the_eager_logits(plugin, arch):
    torch._dynamo.reset()
    model, x = rewritten(plugin, arch), images()
    expected = eager(model, x)
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # Dynamo alone; a graph break raises
    got = eager(compiled, x)
    torch.testing.assert_close(got, expected, atol=ATOL[got.dtype], rtol=0)


@pytest.mark.slow
def test_inductor_lowers_calibrated_int8_to_onednn_int8_kernels():
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    model, x = rewritten("quantize", "vit"), images()
    expected = eager(model, x)
    with torch.no_grad(), config.patch(freezing=True):
        got, code = run_and_get_code(torch.compile(model), pixel_values=x)
    assert "qlinear_pointwise" in "\n".join(code), "Inductor did not lower the int8 linears to oneDNN's int8 kernels"
    # eager runs the same oneDNN int8 products; only the float epilogues differ
    torch.testing.assert_close(got.logits, expected, atol=1e-4, rtol=0)


def test_inductor_folds_binary_weights_into_constants_it_prepacks():
    """bivit W1A32 under torch.compile with freezing: the signs of the weights are computed once, at compile time,
    and the linear runs on the prepacked constant as an fp32 one does (no kernel computes signs at each call)."""
    import re

    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    from surgery.plugins.bivit.layers import BinaryLinear

    torch._dynamo.reset()
    model = surgery.apply(untie(tiny("vit")), [("bivit", {"activations": "full"})]).eval()
    layer = next(m for m in model.modules() if isinstance(m, BinaryLinear))
    x = torch.randn(2, 5, layer.in_features)
    with torch.no_grad():
        expected = layer(x)
        with config.patch(freezing=True):
            got, code = run_and_get_code(torch.compile(layer), x)
    fused = set(re.findall(r"cpp_fused_(\w+?)_\d+\b", "\n".join(code)))
    assert not any(op in name for name in fused for op in ("where", "copysign", "ge", "sub", "mean")), fused
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_a_compiled_int8_model_trains_with_the_eager_gradients():
    torch._dynamo.reset()
    model, x = rewritten("quantize", "vit"), images()
    labels = torch.tensor([0, 1, 2])

    def gradients(module):
        module.train().zero_grad()
        torch.nn.functional.cross_entropy(module(pixel_values=x).logits, labels).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    expected = gradients(model)
    got = gradients(torch.compile(model, backend="aot_eager", fullgraph=True))
    assert got.keys() == expected.keys() and len(got) > 10
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("plugin", ["quantize", "ecoformer"])
def test_a_reloaded_model_exports_without_an_eager_call_first(plugin, tmp_path):
    """State held in buffers (int8 calibration, the fitted hash) is read when loading, so a reload
    exports straight away."""
    model = rewritten(plugin, "vit")
    surgery.save(model, tmp_path / "m")
    loaded = surgery.load(tmp_path / "m").eval()
    program = torch.export.export(loaded, (), {"pixel_values": images()})
    with torch.no_grad():
        got = program.module()(pixel_values=images()).logits
    torch.testing.assert_close(got, eager(model, images()), atol=1e-5, rtol=0)


def test_an_unfitted_hash_is_refused_by_torch_export_instead_of_learned_from_the_trace():
    model = surgery.apply(tiny("vit"), ["ecoformer"]).eval()  # no calibration: the hash learns on the first batch
    with pytest.raises(SurgeryError, match="hash was never learned"):
        torch.export.export(model, (), {"pixel_values": images()})
    eager(model, images())  # one eager batch fits it; then the export goes through
    program = torch.export.export(model, (), {"pixel_values": images()})
    with torch.no_grad():
        torch.testing.assert_close(
            program.module()(pixel_values=images()).logits, eager(model, images()), atol=1e-5, rtol=0
        )


@pytest.mark.slow
@pytest.mark.parametrize("plugin, arch", PAIRS)
def test_inductor_gives_the_eager_logits(plugin, arch):
    from torch._inductor import config

    torch._dynamo.reset()
    model, x = rewritten(plugin, arch), images()
    expected = eager(model, x)
    with config.patch(freezing=True):
        got = eager(torch.compile(model, fullgraph=True), x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
