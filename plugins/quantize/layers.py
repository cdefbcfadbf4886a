"""An int8 Linear built from torch's fake-quant modules and observers (torch.ao.quantization).

Weights: int8, symmetric, one scale per output channel (``PerChannelMinMaxObserver``, the ONNX int8 range
[-128, 127]). Activations: the input is fake-quantized to uint8 with one scale and zero point per
tensor, observed on calibration data (``HistogramObserver`` or ``MinMaxObserver``). Training and
calibration simulate the arithmetic in float (``torch.fake_quantize_*``, so gradients flow); inference
in PyTorch runs real int8 matrix multiplies on the CPU's int8 kernels (:mod:`.engine`), with the same
codes; exported to ONNX, each fake-quant becomes a QuantizeLinear/DequantizeLinear pair that ONNX
Runtime and OpenVINO execute in int8.
Under ``torch.compile`` / ``torch.export`` a calibrated layer at inference is traced as PyTorch 2's
quantized form (``quantized_decomposed`` quantize/dequantize around a float linear, as pt2e writes it),
which Inductor lowers to the same oneDNN int8 kernels when ``torch._inductor.config.freezing`` is on;
in training it is traced as the functional fake-quants, so gradients flow. Either way, no graph break.
Checkpoints store the weights as int8 with their scales and zero points; the observers' calibration
statistics (a 2048-bin histogram per layer) are left out, and come back empty on reload.
"""

from __future__ import annotations

import torch
from torch import nn

from surgery.plugins.quantize import engine
from surgery.plugins.quantize.observers import (
    input_fake_quant,
    observer_keys,
    per_channel,
    reset_observer,
    weight_fake_quant,
)
from surgery.toolkit.adapters import LatentWeight
from surgery.toolkit.inference import InferenceCache, inference_only, remembered, state_key


class Int8Layer(InferenceCache):
    """What an int8 layer with a ``weight`` (output channels first) and an optional bias does, whatever
    its operation: int8 weights per output channel, a calibrated uint8 input (unless weight-only),
    calibration, its state, int8 checkpoints, and the choice between the int8 engine, the traced
    form and the fake-quant simulation. A subclass (before its ``nn.Module`` base) says how it
    computes: :meth:`float_op` (the layer's own operation, on given weights) and :meth:`int8_op` (on an
    :class:`.engine.Int8Linear`, or None where the engine cannot compute it exactly)."""

    int8_engine: bool = True
    int8_kernel: str | None = None  # a kernel of .kernels.KERNELS for this layer; None: the process's measured choice

    def setup_quant(self, activations: str, observer: str, activation_bits: int, device) -> None:
        self.activations = activations
        self.activation_bits = activation_bits
        self.weight_quant = weight_fake_quant(self.weight.shape[0]).to(device)
        self.input_quant = input_fake_quant(observer, activation_bits).to(device) if activations == "int8" else None
        self.register_buffer("weight_int8", torch.zeros(self.weight.shape, dtype=torch.int8, device=device))
        if self.input_quant is not None:  # the kernels' self-check and timing (once per process and shape) here,
            rows, columns = self.weight.shape[0], self.weight[0].numel()  # not inside a first forward
            engine.choose(int(self.input_quant.quant_max), columns, rows)

    def take_weights(self, old: nn.Module) -> None:
        """Take ``old``'s weight and bias, moved onto their int8 grid."""
        self.weight, self.bias = old.weight, old.bias
        if not old.weight.is_meta:
            with torch.no_grad():
                self.weight_quant(old.weight.detach())  # observe the weights: per-channel scales
                self.weight_int8.copy_(self.int8_weight(old.weight))
            # The float weight moves onto its int8 grid (a new parameter; the original layer keeps
            # its own for revert). torch rounds w * (1/scale), ONNX's QuantizeLinear w / scale: off the
            # grid the two disagree on a few weights; on it, both give the same codes. The model's
            # outputs do not change, and it equals what its checkpoint reloads.
            self.weight = nn.Parameter(
                self.weight_int8.to(old.weight.dtype) * per_channel(self.weight_quant.scale, old.weight),
                requires_grad=old.weight.requires_grad,
            )
        self.weight_quant.disable_observer()
        if self.input_quant is not None:
            self.input_quant.disable_fake_quant()  # observe only, until calibrated
        self.state()

    def start_calibration(self) -> None:
        if self.input_quant is not None:
            self.input_quant.enable_observer()
            self.input_quant.disable_fake_quant()
        self.state()

    def finish_calibration(self) -> None:
        if self.input_quant is not None:
            self.input_quant.disable_observer()
            self.input_quant.enable_fake_quant()
        self.state()

    def state(self) -> str | None:
        """The layer's state: "weight-only", "calibrated" (W8A8 with fixed scales), "observing" (before or
        during calibration) or "other" (fake-quants switched some other way), from the fake-quants' flags;
        while compiling, the state last read (:func:`surgery.toolkit.inference.remembered`); None on the
        meta device."""

        def read() -> str | None:
            weight = self.weight_quant
            if weight.fake_quant_enabled.is_meta:  # a dry run on the meta device: nothing to read
                return None
            if not bool(weight.fake_quant_enabled[0]) or bool(weight.observer_enabled[0]):
                return "other"
            if self.input_quant is None:
                return "weight-only"
            quant = self.input_quant
            if bool(quant.fake_quant_enabled[0]):
                return "other" if bool(quant.observer_enabled[0]) else "calibrated"
            return "observing" if bool(quant.observer_enabled[0]) else "other"

        return remembered(self, "state", read)

    def float_op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def int8_op(self, layer: engine.Int8Linear, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            state = self.state()
            if state in ("weight-only", "calibrated"):
                return self._traced_forward(x, state)
        elif self._inferring(x):
            out = self._inference_forward(x)
            if out is not None:
                return out
        if self.input_quant is not None:
            x = self.input_quant(x)
        return self.float_op(x, self.weight_quant(self.weight))

    def _traced_forward(self, x: torch.Tensor, state: str) -> torch.Tensor:
        """The layer as ``torch.compile`` / ``torch.export`` trace it: the same codes as the fake-quant
        modules, with no buffer read that steers the graph."""
        weight, quant = self.weight_quant, self.input_quant
        w = torch.fake_quantize_per_channel_affine(
            self.weight, weight.scale, weight.zero_point, weight.ch_axis, weight.quant_min, weight.quant_max
        )
        if state == "calibrated":
            x = torch.fake_quantize_per_tensor_affine(
                x, quant.scale, quant.zero_point, quant.quant_min, quant.quant_max
            )
        return self.float_op(x, w)

    # -- inference ----------------------------------------------------------------------------------------
    def _inferring(self, x: torch.Tensor) -> bool:
        state = self.state()  # read on every eager call, so that a later trace knows it
        if not inference_only(self, x, self.weight, self.bias):
            self.clear_inference_cache()
            return False
        if self.input_quant is None:
            return state == "weight-only"
        quant = self.input_quant
        return (
            state == "calibrated"
            and self.int8_engine
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and self.weight.dtype == torch.float32
            and engine.exact_for(int(quant.quant_max))
        )

    def _inference_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        bias = None if self.bias is None else self.bias.detach()
        quant = self.input_quant
        if quant is None:  # weight-only: the dequantized weight, computed once
            weight = self.cached(
                state_key(self.weight, self.weight_quant.scale), lambda: self.weight_quant(self.weight.detach())
            )
            return self.float_op(x, weight)
        layer = self.cached(
            state_key(self.weight, self.weight_quant.scale, quant.scale, quant.zero_point) + (self.int8_kernel,),
            lambda: engine.Int8Linear.build(
                self.int8_weight(self.weight).reshape(self.weight.shape[0], -1),
                self.weight_quant.scale,
                quant.scale,
                quant.zero_point,
                int(quant.quant_min),
                int(quant.quant_max),
                self.int8_kernel,
            ),
        )
        return self.int8_op(layer, x, bias)

    # -- int8 checkpoints (see surgery.toolkit.packing) -----------------------------------------------------
    def int8_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The int8 codes of ``weight``, taken from torch's own fake-quant so that rounding ties
        go the same way as in ``forward``."""
        scale = per_channel(self.weight_quant.scale.to(weight.device), weight)
        with torch.no_grad():
            on_grid = self.weight_quant(weight.detach())
        return torch.clamp(torch.round(on_grid / scale), -128, 127).to(torch.int8)

    def surgery_pack(self, prefix: str, state: dict[str, torch.Tensor]) -> None:
        state[prefix + "weight_int8"] = self.int8_weight(state.pop(prefix + "weight"))
        for key in observer_keys(self):  # calibration-only statistics; scales and zero points stay
            state.pop(prefix + key, None)

    def surgery_packed_away(self, prefix: str) -> list[str]:
        return [prefix + "weight"] + [prefix + key for key in observer_keys(self)]

    def surgery_unpack(self) -> None:
        scale = self.weight_quant.scale  # the checkpoint never holds the float weight: rebuild it from the codes
        self.weight = nn.Parameter(self.weight_int8.to(scale.dtype) * per_channel(scale, self.weight_int8))
        for quant in (self.weight_quant, self.input_quant):
            if quant is not None:
                reset_observer(quant.activation_post_process, scale.device)
        self.state()

    def quant_repr(self) -> str:
        return (
            f"W8A8 (static, {self.activation_bits}-bit range)" if self.input_quant is not None else "W8 (weight-only)"
        )


class QuantLinear(LatentWeight, Int8Layer, nn.Linear):
    """A Linear whose weight (and, unless weight-only, input) is quantized to int8.

    At inference (eval mode, no gradient recorded, not tracing) a calibrated W8A8 layer runs on
    :mod:`.engine`'s int8 kernels where they are exact on this CPU, on the kernel measured fastest
    here (``int8_kernel = "onednn"`` or ``"fbgemm"`` picks one; ``int8_engine = False`` forces the
    float simulation), and a weight-only layer multiplies by its dequantized weight, computed
    once. Both are cached as :mod:`surgery.toolkit.inference` describes (rebuilt when a weight, a
    scale or a zero point changes; not saved).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activations: str = "int8",
        observer: str = "histogram",
        device=None,
        dtype=None,
        activation_bits: int = 8,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.setup_quant(activations, observer, activation_bits, device)

    @classmethod
    def from_linear(cls, linear: nn.Linear, activations: str, observer: str, activation_bits: int = 8) -> QuantLinear:
        new = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            activations,
            observer,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            activation_bits=activation_bits,
        )
        new.take_weights(linear)
        return new.train(linear.training)

    def float_op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, weight, self.bias)

    def int8_op(self, layer: engine.Int8Linear, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return layer(x, bias)

    def _traced_forward(self, x: torch.Tensor, state: str) -> torch.Tensor:
        """Calibrated, at inference: PyTorch 2's quantized form (:func:`.engine.decomposed_linear`), which
        Inductor lowers to oneDNN's int8 linear; otherwise the functional fake-quants."""
        weight, quant = self.weight_quant, self.input_quant
        recording = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if state == "calibrated" and not (self.training or recording) and x.dtype == torch.float32:
            return engine.decomposed_linear(
                x,
                self.weight,
                weight.scale,
                weight.zero_point,
                quant.scale,
                quant.zero_point,
                int(quant.quant_min),
                int(quant.quant_max),
                self.bias,
            )
        return super()._traced_forward(x, state)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.quant_repr()}"
