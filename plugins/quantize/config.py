"""Options of int8 quantization."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from surgery.core.options import SurgeryConfig


@dataclasses.dataclass(frozen=True)
class QuantizeConfig(SurgeryConfig):
    """Int8 quantization of the blocks' linear layers.

    Attributes:
        activations: "int8" (static: the input of every quantized linear gets a per-tensor uint8
            scale and zero point calibrated on real data) or "none" (weight-only int8).
        observer: torch observer for activations: "histogram" (HistogramObserver, minimises the
            quantization error; default) or "minmax" (MinMaxObserver).
        calibration_batches: at most this many batches of the calibration data are observed.
        activation_bits: range of the uint8 activation codes: 7 ([0, 127], the default) is computed
            exactly by every x86 int8 kernel; 8 ([0, 255]) saturates in the u8 x s8 instruction of
            CPUs without VNNI (AVX2, AVX-512 without VNNI), so ONNX Runtime's results drift there.
            Recipes saved before this option existed used 8 and reload with 8.
        float_blocks: blocks whose linears stay float (indices into the model's blocks in model
            order, negative from the end: ``(0, -1)`` keeps the first and last block float).
        float_roles: linear roles that stay float in every block (``("mlp_out",)``: the MLP's
            second linear, whose GELU-output input has the widest range). Together these are the
            per-layer choice NNCF's accuracy control makes by ranking layers; the recipe search
            measures them (``search``). Names a role the model's layout lacks: an error at apply.
        attention: "int8" also puts the inputs of every block's attention matmuls (q k^T and P v) on
            int8 grids (q, k, v calibrated, the probabilities on a fixed grid: ``attention.py``), as
            NNCF's transformer preset does, so ONNX Runtime and OpenVINO run them in int8; "float"
            (the default) leaves the attention in float. Needs the host's softmax attention (not a
            linear attention swap, not Swinv2's cosine attention) and ``activations="int8"``.
        attention_bits: range of the symmetric int8 codes of q, k and v when ``attention="int8"``: 7
            ([-64, 63], the default) keeps every pair of products of q k^T and P v inside the int16 sums
            of CPUs without VNNI (measured on an AVX2-only AMD EPYC: with 8, OpenVINO's int8 attention
            changed 1.7 % of the digits predictions; with 7, none), as ``activation_bits`` does for the
            linears; 8 ([-128, 127]). Recipes saved before this option existed used 8 and reload with 8.
        patch_embed: "int8" also quantizes the patch embedding convolution (int8 weights per output
            channel; its input, the normalised pixels, calibrated like the linears' unless weight-only),
            as NNCF does; "float" (the default) keeps it float.
        classifier: "int8" also quantizes the classification head's linear(s) (both heads of a distilled
            DeiT), as NNCF does; "float" (the default) keeps them float.
    """

    plugin: ClassVar[str] = "quantize"
    legacy_defaults: ClassVar[dict] = {
        "activation_bits": 8,
        "attention": "float",
        "patch_embed": "float",
        "classifier": "float",
        "attention_bits": 8,
    }

    activations: Literal["int8", "none"] = "int8"
    observer: Literal["histogram", "minmax"] = "histogram"
    calibration_batches: int = 8
    activation_bits: Literal[7, 8] = 7
    float_blocks: tuple[int, ...] = ()
    float_roles: tuple[Literal["query", "key", "value", "qkv", "attn_output", "mlp_in", "mlp_out"], ...] = ()
    attention: Literal["float", "int8"] = "float"
    attention_bits: Literal[7, 8] = 7
    patch_embed: Literal["float", "int8"] = "float"
    classifier: Literal["float", "int8"] = "float"

    def validate(self) -> None:
        if self.calibration_batches < 1:
            raise self.invalid("calibration_batches", self.calibration_batches, "an integer >= 1")
        if self.attention == "int8" and self.activations != "int8":
            raise self.invalid(
                "attention", self.attention, '"float" with weight-only quantization (activations="none")'
            )
