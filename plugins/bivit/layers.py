"""BiViT layers: a binary Linear, and a binary attention core swapped in by class."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from surgery.core.parts import AttentionParts
from surgery.plugins.bivit.binarize import binary_weight, sign_ste, softmax_binarize, weight_signs
from surgery.toolkit.adapters import LatentWeight
from surgery.toolkit.inference import InferenceCache, inference_only, state_key
from surgery.toolkit.packing import pack_bits, unpack_bits
from surgery.toolkit.tracing import refuse_trace_by


OPENVINO_W1A1 = (
    "1-bit activations (sign of every linear input) flip on the small rounding differences of OpenVINO's "
    "float CPU kernels, so outputs drift far beyond the 1e-3 check; surgery's own export runs the W1A1 "
    "linears as OpenVINO BinaryConvolution instead (exact), or use activations='full' (W1A32)"
)


class BinaryLinear(LatentWeight, InferenceCache, nn.Linear):
    """``alpha * sign(W - mean)`` weights (BinaryLinear_adapscaling), optional sign(x) inputs.

    Reuses the original Linear's weight and bias parameters (the float weight is the latent weight
    of quantization-aware training). ``alpha`` (out, 1) starts at mean|W| per output row, from the
    uncentred W as in the reference code. The bias stays full precision and is added after the
    binary product. With ``pack``, checkpoints store one bit per weight (``weight_bits``) plus
    ``alpha`` and the bias; a packed checkpoint reloads the signs only (W = +-1), which gives the
    same outputs but no latent weights to train further.

    Inference does not re-binarize: in eval mode, when no gradient is recorded for the weight or the
    scale (``torch.no_grad()``/``inference_mode()``, or frozen parameters), the +-alpha weight is
    computed once and kept (not saved; one more copy of the weight in memory), rebuilt as
    :mod:`surgery.toolkit.inference` describes. Tracing (ONNX export) always computes it from the
    latent weight.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        binarize_input: bool = True,
        learnable_alpha: bool = True,
        pack: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.binarize_input, self.pack, self.learnable_alpha = binarize_input, pack, learnable_alpha
        self.binarize = True  # training-time switch for staged recovery (plugins/bivit/training.py); never saved
        self.from_packed = False  # rebuilt from 1-bit signs: no latent weights, the saved alpha is the scale
        self.alpha = nn.Parameter(
            torch.ones(out_features, 1, device=device, dtype=dtype), requires_grad=learnable_alpha
        )
        self.register_buffer(
            "weight_bits",
            torch.zeros(out_features, -(-in_features // 8), dtype=torch.uint8, device=device),
            persistent=pack,
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear, binarize_input: bool, learnable_alpha: bool, pack: bool) -> BinaryLinear:
        new = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            binarize_input=binarize_input,
            learnable_alpha=learnable_alpha,
            pack=pack,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        new.weight, new.bias = linear.weight, linear.bias
        with torch.no_grad():
            new.alpha.copy_(linear.weight.abs().mean(dim=1, keepdim=True))
        return new.train(linear.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.binarize:
            return F.linear(x, self.weight, self.bias)
        weight, scale = self.binarized()
        if scale is None:  # W1A32
            return F.linear(x, weight, self.bias)
        # W1A1: the +-1 x +-1 products are summed exactly (integers) and scaled after. With alpha inside
        # the sum, its rounding follows the summation order, so an exact tie (a sum of 0, common at
        # widths like 768 with zero biases) comes out as +-tiny and the next sign() flips differently
        # in every runtime, thread count and batch size (measured: ONNX Runtime off by 2.4 on ViT-B).
        if torch.jit.is_tracing():  # OpenVINO's own frontend (optimum-intel export=True) drifts on 1-bit inputs
            refuse_trace_by("openvino", "bivit", OPENVINO_W1A1)
        out = F.linear(sign_ste(x), weight) * scale.reshape(-1)
        return out if self.bias is None else out + self.bias

    def binarized(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(alpha * sign(W - mean), None) for W1A32, (sign(W - mean), alpha) for W1A1; cached where
        nothing needs their gradient."""
        # the scale is configuration (learnable_alpha), never a gradient flag: a frozen model
        # (requires_grad_(False), PEFT) computes exactly what it computed while training
        fixed = not self.learnable_alpha and not self.from_packed
        if not inference_only(self, self.weight, None if fixed else self.alpha):
            self.clear_inference_cache()
            return self._binarized(fixed)
        return self.cached(
            state_key(self.weight, self.alpha) + (fixed, self.binarize_input), lambda: self._binarized(fixed)
        )

    def _binarized(self, fixed: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        scale = self.weight.abs().mean(dim=1, keepdim=True).detach() if fixed else self.alpha
        if self.binarize_input:
            return weight_signs(self.weight), scale
        return binary_weight(self.weight, scale), None

    # -- packed checkpoints (see surgery.toolkit.packing) --------------------------------------------------
    def surgery_pack(self, prefix: str, state: dict[str, torch.Tensor]) -> None:
        if not self.pack:
            return
        weight = state.pop(prefix + "weight")
        state[prefix + "weight_bits"] = pack_bits(weight - weight.mean(dim=1, keepdim=True) >= 0)
        if not self.learnable_alpha and not self.from_packed:  # the scale in use is mean|W|, which the signs lose
            state[prefix + "alpha"] = weight.abs().mean(dim=1, keepdim=True).to(state[prefix + "alpha"].dtype)

    def surgery_packed_away(self, prefix: str) -> list[str]:
        return [prefix + "weight"] if self.pack else []

    def surgery_unpack(self) -> None:
        if self.pack:  # a packed checkpoint never holds the latent weight: rebuild it from the signs
            bits = unpack_bits(self.weight_bits, self.in_features)
            signs = torch.where(bits, 1.0, -1.0).to(device=self.weight_bits.device, dtype=self.alpha.dtype)
            self.weight = nn.Parameter(signs)
            self.from_packed = True

    def extra_repr(self) -> str:
        kind = "W1A1" if self.binarize_input else "W1A32"
        return f"{super().extra_repr()}, {kind}, learnable_alpha={self.learnable_alpha}, packed={self.pack}"


class BinaryAttention:
    """Self-attention with sign(q), sign(k), sign(v) and softmax-aware binary probabilities (SAB).

    Mixed into the host's attention core, whose parameters stay in place; it computes from the
    core's parts (``bivit_parts``), so a windowed core keeps its relative position bias and
    shifted-window mask.
    """

    bivit_ratio: float = 0.25
    bivit_parts: AttentionParts

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        parts = self.bivit_parts
        attention_mask = parts.window_mask(args, kwargs)  # a head mask (ViT) is not a window mask: ignored
        batch, tokens, _ = hidden_states.shape
        heads, dim = parts.heads, parts.head_dim
        q, k, v = parts.qkv(hidden_states, transform=sign_ste)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dim)
        for bias in (
            parts.position_bias(tokens, args, kwargs),
            parts.host_bias(args, kwargs),
        ):  # the core's own, the block's (BEiT 5)
            if bias is not None:
                scores = scores + bias
        if attention_mask is not None:
            windows = attention_mask.shape[0]
            scores = scores.view(batch // windows, windows, heads, tokens, tokens) + attention_mask[None, :, None]
            scores = scores.view(batch, heads, tokens, tokens)
        probs = softmax_binarize(scores.softmax(dim=-1), self.bivit_ratio)
        context = torch.matmul(probs, v).transpose(1, 2).reshape(batch, tokens, heads * dim)
        return parts.host_output(context)

    def extra_repr(self) -> str:
        return f"binary q/k/v, SAB ratio={self.bivit_ratio}"
