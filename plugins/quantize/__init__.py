"""``quantize``: int8 post-training quantization of the blocks' linear layers.

Per-channel symmetric int8 weights and per-tensor uint8 activations calibrated with torch's
observers (``torch.ao.quantization``); simulated with fake-quant while calibrating and training,
executed in int8 at inference in PyTorch (oneDNN's or fbgemm's int8 kernels, whichever measures
faster on the CPU: ``kernels.py``; PyTorch 2's quantized form under ``torch.compile``/``torch.export``)
and by ONNX Runtime and OpenVINO after export (QuantizeLinear/DequantizeLinear). Checkpoints store int8 weights with
their scales. ``float_blocks`` and ``float_roles`` keep chosen linears float (the per-layer choice of
NNCF's accuracy control, made here by the recipe search's measurements, not by a ranking).
``attention="int8"`` also puts the inputs of the attention matmuls on int8 grids (``attention.py``), and
``patch_embed`` / ``classifier`` "int8" quantize the patch embedding convolution (``conv.py``) and the head,
as NNCF's transformer preset does. Training-free; reversible.
"""

from __future__ import annotations

from surgery.core.searchable import SearchSpace
from surgery.plugins.quantize import rewrite
from surgery.plugins.quantize.config import QuantizeConfig
from surgery.toolkit.register import define_method, registration

METHOD = define_method(
    __name__,
    summary="int8 linears: per-channel int8 weights, calibrated uint8 activations (torch observers)",
    config_class=QuantizeConfig,
    apply=rewrite.apply,
    calibrate=rewrite.calibrate,
    needs_data=rewrite.needs_data,
    roles=("linears",),
    export_exact=False,
    provides=("int8",),
    conflicts={
        "binary_linears": "bivit's binary linears are already below 8 bits; quantize the float model or binarize it, not both"
    },
    paper="https://arxiv.org/abs/1712.05877",
    reference="torch.ao.quantization observers and fake-quant; ONNX QDQ format",
    # which linears stay float is per-layer, as NNCF's accuracy control chooses it: the first or last
    # block, or every block's MLP output linear
    # and whether the attention matmuls are int8 too (pays off in ONNX Runtime and OpenVINO, costs in PyTorch
    # eager: measured, per runtime; the weight-only and linear-attention mixes are refused and recorded so), and
    # the patch embedding (a few per cent of a ViT's time at most). Not the classifier: about 0.1 % of a ViT-B's
    # time, a trial measures nothing there
    search=SearchSpace(
        options={
            "activations": ("int8", "none"),
            "float_blocks": ((), (0,), (-1,)),
            "float_roles": ((), ("mlp_out",)),
            "attention": ("float", "int8"),
            "patch_embed": ("float", "int8"),
        },
        quiet={"float_blocks": (), "float_roles": (), "attention": "float", "patch_embed": "float"},
    ),
)


surgery_register_methods = registration(METHOD)
