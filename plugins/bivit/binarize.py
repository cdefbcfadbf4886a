"""Binarizers with straight-through estimators, as in ThisisBillhe/BiViT ``utils_quant.py`` (6b34303).

- ``sign_ste``: sign in the forward pass; the gradient passes where |x| < 1 and is zero where
  x >= 1 or x <= -1, as BinaryQuantizer's backward (``input.ge(1)``/``input.le(-1)`` zeroed): the
  boundary matters in W1A1 attention, where integer-valued inputs sit exactly on +-1. Deviation: sign(0) is +1 (the reference's torch.sign gives 0),
  so every value has a 1-bit code.
- ``binary_weight``: alpha * sign(W - mean_row(W)), the STE above on W - mean (BinaryLinear_adapscaling).
- ``softmax_binarize``: softmax-aware binarization (SAB, SoftmaxBinaryQuantizer): 1 where
  P >= ratio * max_row(P), else 0, with no rescaling; the gradient is the softmax's own
  (``B.detach() - P.detach() + P``).
"""

from __future__ import annotations

import torch


def _sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0, else -1, in one pass: copysign(1, x + 0.0) (adding +0.0 turns -0.0 into +0.0,
    which x >= 0 counts as non-negative); a tenth of the time of ``torch.where`` with two filled
    tensors, with the same values. Traced by ``torch.compile``: ``(x >= 0) * 2 - 1``, the same values in ops with
    no constructor (``ones_like``, ``where``'s scalars), so that Inductor's freezing folds a binarized weight into
    a constant and prepacks it for its float linear, as it does fp32 weights (else the signs were computed at every
    call and the linear ran unpacked: bivit W1A32 compiled at 0.90x of fp32 on ViT-B)."""
    if torch.compiler.is_compiling():
        return (x >= 0).to(x.dtype) * 2.0 - 1.0
    return torch.ones_like(x).copysign_(x + 0.0)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() < 1).to(grad.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """+1/-1 with the clipped straight-through gradient."""
    if torch.jit.is_tracing():  # ONNX export: ops every opset has
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
    if not torch.is_grad_enabled():
        return _sign(x)
    return _SignSTE.apply(x)


def weight_signs(weight: torch.Tensor) -> torch.Tensor:
    """sign(W - mean over each output row), +-1, with the straight-through gradient."""
    return sign_ste(weight - weight.mean(dim=1, keepdim=True))


def binary_weight(weight: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """alpha (out, 1) * sign(W - mean over each output row)."""
    return alpha * weight_signs(weight)


def softmax_binarize(probs: torch.Tensor, ratio: float) -> torch.Tensor:
    """{0, 1}: probabilities at or above ``ratio`` times their row maximum; softmax gradient."""
    mask = (probs >= ratio * probs.amax(dim=-1, keepdim=True)).to(probs.dtype)
    return mask.detach() - probs.detach() + probs
