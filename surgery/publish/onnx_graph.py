"""The ONNX graph of a live model: Optimum's ``onnx_export_from_model`` where it is installed and knows
the model type, else ``torch.onnx.export`` (TorchScript) with the same input/output names and dynamic
batch axis; and what each needs on the families surgery supports (a processor for Optimum's DINOv2
dummy inputs, a symbolic for DINOv2-with-registers' antialiased resize)."""

from __future__ import annotations

import contextlib
import importlib
import tempfile
import warnings
from pathlib import Path

import torch

from surgery._version import DISTRIBUTION
from surgery.errors import ExportError
from surgery.evaluation.measure import image_side

TORCH_OPSET = 18  # the opset Optimum's exporter uses for these models


def needs(module: str):
    """Import an export dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ExportError(
            f'export needs {module.split(".")[0]}, which is not installed: pip install "{DISTRIBUTION}[export]"'
        ) from error


def write_onnx(model, folder: Path, exporter: str) -> tuple[str, list[str]]:
    """Write ``folder/model.onnx``; returns the exporter that ran ("optimum" or "torch") and where the
    tracer said a Python value became a constant (``file:line``). Those are shapes: the graph fixes
    every input dimension but the batch, which the export's parity check varies; so they are kept for
    the report instead of printed (other warnings are printed as they come)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exporter = _write_onnx(model, folder, exporter)
    traced = sorted(
        {f"{Path(w.filename).name}:{w.lineno}" for w in caught if issubclass(w.category, torch.jit.TracerWarning)}
    )
    for warning in caught:
        if not issubclass(warning.category, torch.jit.TracerWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return exporter, traced


def _write_onnx(model, folder: Path, exporter: str) -> str:
    if (
        exporter == "auto"
    ):  # optimum-onnx installs only next to transformers 4.57; elsewhere torch.onnx writes the graph
        exporter = "optimum" if _optimum_knows(model.config.model_type) is True else "torch"
    if exporter == "optimum":
        optimum = needs("optimum.exporters.onnx")
        if _optimum_knows(model.config.model_type) is False:
            raise ExportError(
                f"export: Optimum's ONNX exporter has no config for model type '{model.config.model_type}'; "
                "use exporter='torch' (or 'auto', which does)."
            )
        with _processor_for_dummy_inputs(model):
            optimum.onnx_export_from_model(model, output=folder, task="image-classification", do_validation=False)
        return exporter
    folder.mkdir(parents=True, exist_ok=True)
    pixels = inputs(model, 2, 0)
    _register_antialiased_resize()
    with torch.no_grad():
        wrapper = _Logits(model).train(model.training)  # torch.onnx restores the wrapper's mode on the whole tree
        torch.onnx.export(
            wrapper,
            (pixels,),
            str(folder / "model.onnx"),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch_size"}, "logits": {0: "batch_size"}},
            opset_version=TORCH_OPSET,
            dynamo=False,
        )
    return exporter


def _optimum_knows(model_type: str) -> bool | None:
    """Whether Optimum's ONNX exporter has an image-classification config for ``model_type`` (None:
    optimum-onnx is not installed)."""
    try:
        importlib.import_module("optimum.exporters.onnx.model_configs")  # registers the configs
        from optimum.exporters.tasks import TasksManager
    except ImportError:
        return None
    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(model_type, "onnx", library_name="transformers")
    except KeyError:
        return False
    return "image-classification" in tasks


def _register_antialiased_resize() -> None:
    """``aten::_upsample_bicubic2d_aa`` (DINOv2 with registers resizes its position embeddings with an
    antialiased bicubic, which transformers always traces) as torch's own bicubic Resize with ONNX
    Resize-18's ``antialias=1`` added. The graph is traced at the config's image size, where that resize
    is the identity in PyTorch and in the runtimes, so parity holds exactly there (checked by every export)."""
    from torch.onnx import register_custom_op_symbolic, symbolic_helper

    bicubic = symbolic_helper._interpolate_helper("upsample_bicubic2d", 4, "cubic")

    def resize(g, *args):
        out = bicubic(g, *args)
        out.node().i_("antialias", 1)
        return out

    register_custom_op_symbolic("aten::_upsample_bicubic2d_aa", resize, TORCH_OPSET)


@contextlib.contextmanager
def _processor_for_dummy_inputs(model):
    """Optimum's DINOv2 dummy inputs take their size from the processor saved at the config's
    ``_name_or_path`` (and fail with an IndexError where there is none, as for a model built in
    memory): for the trace, that path names a folder holding a processor whose crop is the config's
    image size, the size transformers traces the position embeddings at."""
    from transformers import BitImageProcessor

    side = image_side(model.config)
    original = model.config._name_or_path
    with tempfile.TemporaryDirectory() as folder:
        BitImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(
            folder
        )
        model.config._name_or_path = folder
        try:
            yield
        finally:
            model.config._name_or_path = original


class _Logits(torch.nn.Module):
    """``pixel_values -> logits``: the graph Optimum's image-classification export has."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def inputs(model, batch: int, seed: int) -> torch.Tensor:
    size = image_side(model.config)
    return torch.randn(batch, model.config.num_channels, size, size, generator=torch.Generator().manual_seed(seed))
