"""EcoFormer attention (Liu, Pan, He, Cai, Zhuang; NeurIPS 2022, arXiv 2209.09004).

Follows ``EcoformerSelfAttention`` / ``EcoformerFastAttention`` in ziplab/EcoFormer
(``pvt/performer.py``): one shared projection ``to_qk`` (here the host's query projection, so it
starts from W_q; W_k is dropped) and ``to_v`` (the host's value projection); per head, qk is
L2-normalised and hashed to b-bit codes h = h(qk) (:mod:`.hashing`), and the attention is linear in
the tokens with c = b + 1::

    out_i = (h_i^T sum_j h_j v_j^T + c v_i) / (h_i^T sum_j h_j + N c)

computed right to left (h^T v first), so the N x N map never exists; with +-1 codes every h_i^T h_j
is b - 2 Hamming(h_i, h_j): accumulations, no multiplications. The output projection is the host's.

Kept quirks: the numerator's bias is ``c v_i`` (the token's own value), where c sum_j v_j would
match the denominator's N c; the attention-probability dropout is defined in the official module
and never applied (so none here). Deviations: the normalisation divides by max(||qk||, 1e-6)
(identical above 1e-6, finite gradient at 0; the official plain division is NaN there); the hash is
learned on the first batch the module sees (the official behaviour) unless calibration data or a
recovery run learned it first, and an export of a module whose hash was never learned is refused.
"""

from __future__ import annotations

import logging

import torch

from surgery.core.parts import AttentionParts
from surgery.errors import SurgeryError
from surgery.plugins.ecoformer.hashing import KernelHash
from surgery.toolkit.attention import AttentionCore, unit
from surgery.toolkit.inference import remembered

logger = logging.getLogger(__name__)


def hashed_attention(codes: torch.Tensor, v: torch.Tensor, bias: float) -> torch.Tensor:
    """(B, H, N, b) codes and (B, H, N, d) values to (B, H, N, d), linear in N (q = k = codes)."""
    tokens = codes.shape[2]
    context = torch.einsum("bhnk,bhne->bhke", codes, v)
    numerator = torch.einsum("bhnk,bhke->bhne", codes, context) + bias * v
    denominator = torch.einsum("bhnk,bhk->bhn", codes, codes.sum(dim=2)) + tokens * bias
    return numerator / denominator.unsqueeze(-1)


class EcoFormerAttention(AttentionCore):
    """Drop-in replacement for a self-attention core, built from its parts (query -> to_qk, value -> to_v)."""

    def __init__(
        self,
        parts: AttentionParts,
        bits: int = 16,
        anchors: int = 25,
        topk: int = 10,
        lr: float = 5e-4,
        momentum: float = 0.9,
        iterations: int = 100,
        seed: int = 0,
    ):
        super().__init__(parts)
        del self._modules[self.surgery_projections.pop("key")]  # to_qk = W_q: the key projection is discarded
        reference = self.projection("query").weight
        self.bits, self.bias = bits, float(bits + 1)
        self.hash = KernelHash(
            parts.heads,
            parts.head_dim,
            bits,
            anchors,
            topk,
            lr,
            momentum,
            iterations,
            seed,
            device=reference.device,
            dtype=reference.dtype,
        )
        self.learn_next = False  # set by recovery: learn the hash again on the next batch

    def shared_qk(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised shared projection per head, (B, H, N, d)."""
        return unit(self.split_heads(self.project("query", x)))

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """h(qk) for hidden states ``x`` (B, N, C): (B, H, N, b); learns the hash first where it must."""
        qk = self.shared_qk(x)
        if self.learn_next or not self.hash_learned():
            if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
                raise SurgeryError(
                    "ecoformer: this block's hash was never learned (or never read outside a trace), so "
                    "the graph would learn it from the trace's inputs; apply with calibration data, run a "
                    "batch, or recover first."
                )
            self.hash.learn(qk)
            self.learn_next = not self.hash_learned()  # read again, for later traces
            logger.info("ecoformer: learned the %d-bit hash of a block on a batch of %d", self.bits, qk.shape[0])
        return self.hash(qk)

    def hash_learned(self) -> bool:
        """Whether the hash is fitted; while compiling, as last read outside the trace (loading, saving
        and every eager call read it), since the flag is a buffer."""
        return bool(remembered(self, "hash_learned", lambda: bool(self.hash.learned)))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        v = self.split_heads(self.project("value", x))
        codes = self.codes(x)
        with torch.autocast(device_type=x.device.type, enabled=False):  # sums over N tokens: float32 at least,
            wide = torch.promote_types(v.dtype, torch.float32)  # as the official code upcasts
            out = hashed_attention(codes.to(wide), v.to(wide), self.bias)
        return out.to(v.dtype).transpose(1, 2).reshape(batch, tokens, channels)

    def surgery_incomplete(self) -> str | None:
        """Why this module cannot be saved or exported as it is (:mod:`surgery.toolkit.completeness`)."""
        if self.hash_learned():
            return None
        return (
            "ecoformer: a block's hash was never learned, so every reload would learn it from whichever batch "
            "comes first; apply with calibration data, run a batch through the model, or recover first"
        )

    def code_products(self, tokens: int) -> int:
        """Products with a +-1 code in one call on ``tokens`` tokens (h^T v, h (h^T v) and h . sum h, per
        head): multiplications in float arithmetic, sign flips and additions on hardware that
        accumulates codes; the multiplications the hashed attention removes."""
        return self.num_heads * tokens * self.bits * (2 * self.head_dim + 1)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, bits={self.bits}, c={self.bias:g}, to_qk=query, to_v=value"
