"""``quantize``: int8 post-training quantization of the blocks' linear layers.

Per-channel symmetric int8 weights and per-tensor uint8 activations calibrated with torch's
observers (``torch.ao.quantization``); simulated with fake-quant in PyTorch, executed in int8 by
ONNX Runtime and OpenVINO after export (QuantizeLinear/DequantizeLinear). Checkpoints store int8
weights with their scales. Training-free; reversible.
"""

from __future__ import annotations

from pathlib import Path

from surgery.hookspecs import hookimpl
from surgery.method import SurgeryMethod
from surgery.plugins.quantize import rewrite
from surgery.plugins.quantize.config import QuantizeConfig

METHOD = SurgeryMethod(
    name="quantize",
    summary="int8 linears: per-channel int8 weights, calibrated uint8 activations (torch observers)",
    config_class=QuantizeConfig,
    model_types=("vit", "deit", "swin"),
    apply=rewrite.apply,
    revert=rewrite.revert,
    calibrate=rewrite.calibrate,
    needs_data=rewrite.needs_data,
    roles=rewrite.LINEAR_ROLES,
    conflicts={"bivit": "bivit's binary linears are already below 8 bits; quantize the float model or binarize it, not both"},
    version="0.1.0",
    paper="https://arxiv.org/abs/1712.05877",
    reference="torch.ao.quantization observers and fake-quant; ONNX QDQ format",
    card_template=str(Path(__file__).with_name("card.md.j2")),
)


@hookimpl
def surgery_register_methods() -> list[SurgeryMethod]:
    return [METHOD]
