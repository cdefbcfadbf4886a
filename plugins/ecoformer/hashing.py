"""EcoFormer's kernelised binary hash (``KernelSH`` in ziplab/EcoFormer, ``pvt/hashing/ksh.py``).

Per head, b bits over m anchors a_j (tokens of the input the hash was learned from)::

    kappa(x)_j = exp(-||x - a_j||^2 / (2 sigma)),  sigma = mean_{n, j} ||x_n - a_j||^2  (per sample, head)
    h(x) = sign(A^T (kappa(x) - mu))

``sigma`` comes from the current input (the official code's choice: not a stored statistic). ``A``
(heads, bits, anchors), ``mu`` and the anchors are buffers: no gradient reaches them; the sign's
straight-through gradient (1 where |y| < 1, else 0, the official ``BinaryQuantizer``) reaches the
input, so the shared q/k projection trains through the codes.

Learning (``train_hashing_weight_woeig``, the one the official attention calls): targets S are +1 for
each token's ``topk`` most cosine-similar tokens and -1 for its ``topk`` least similar, scaled by b.
Bit by bit, the row a of A is fitted to the sigmoid relaxation 2 sigmoid(K a) - 1 of the code by SGD
(lr 5e-4, momentum 0.9, Nesterov, 100 iterations) on the loss -y^T S y / (N b); the fitted row is
kept only if its binary code has a lower loss than the row before, and S loses that code's y y^T.

Distances are computed as |x|^2 - 2 x.a + |a|^2 (one matmul) instead of the official broadcast
difference (equal up to rounding). Kept quirks: ``torch.sign`` gives 0 where A^T(kappa - mu) is exactly 0; the loss averages over samples
and heads while one row a is shared by every sample. Deviations: A and the anchor draw use a seeded
generator (the official code uses the global RNG), and whether the hash was learned is a saved buffer,
so a reloaded model never learns it again (the official flag is a plain attribute).
"""

from __future__ import annotations

import torch
from torch import nn

from surgery.errors import SurgeryError


SMALL_FIT = 2**20  # target-matrix entries below which the hash is fitted on one thread


class _SignSTE(torch.autograd.Function):
    """torch.sign forward; the clipped straight-through gradient of the official ``BinaryQuantizer``."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y)
        return torch.sign(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return grad * (y.abs() < 1).to(grad.dtype)


def sign_ste(y: torch.Tensor) -> torch.Tensor:
    if torch.jit.is_tracing() or not torch.is_grad_enabled():  # export and inference: the sign alone
        return torch.sign(y)
    return _SignSTE.apply(y)


def square_distances(x: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) and (1, H, m, d) to (B, H, N, m) squared Euclidean distances, as
    |x|^2 - 2 x.a + |a|^2 (a matmul: the official broadcast difference builds a (B, H, N, m, d) tensor,
    5x the model's latency on a small ViT; equal up to float rounding, clamped at 0)."""
    cross = torch.einsum("bhnd,ohmd->bhnm", x, anchors)
    return (x.pow(2).sum(-1, keepdim=True) - 2 * cross + anchors.pow(2).sum(-1).unsqueeze(-2)).clamp_min(0)


def gaussian_features(x: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """kappa(x): exp(-d^2 / (2 sigma)) with sigma the mean squared distance per (sample, head)."""
    distances = square_distances(x, anchors)
    sigma = distances.mean(dim=(-1, -2), keepdim=True)
    return torch.exp(-distances / (2 * sigma))


def similarity_targets(x: torch.Tensor, topk: int) -> torch.Tensor:
    """S: +1 at each row's ``topk`` largest cosine similarities, -1 at its ``topk`` smallest, else 0
    (``x`` is L2-normalised, so x x^T are the cosines; the largest include the token itself)."""
    similarity = x @ x.transpose(-1, -2)
    targets = torch.zeros_like(similarity)
    targets.scatter_(-1, similarity.topk(topk, dim=-1).indices, 1.0)
    targets.scatter_(-1, similarity.topk(topk, dim=-1, largest=False).indices, -1.0)
    return targets


def code_loss(y: torch.Tensor, targets: torch.Tensor, bits: int) -> torch.Tensor:
    """-mean over (sample, head) of y^T S y / (N b): the official ``compute_loss``."""
    tokens = y.shape[-1]
    return -(torch.einsum("bhn,bhnl->bhl", y, targets) * y).sum(-1).div(tokens * bits).mean()


def relaxed_gradient(
    kernel: torch.Tensor, symmetric_targets: torch.Tensor, row: torch.Tensor, bits: int
) -> torch.Tensor:
    """d/d row of ``code_loss(2 sigmoid(kernel row) - 1, S, bits)``, with ``symmetric_targets`` = S + S^T:
    the loss is -y^T S y / (B H N b), so dL/dy = -(S + S^T) y / (B H N b) and dy/dz = 2 s (1 - s)."""
    batch, heads, tokens, _ = kernel.shape
    sigmoid = torch.sigmoid(torch.einsum("bhnm,hm->bhn", kernel, row))
    y = 2 * sigmoid - 1
    d_y = -torch.einsum("bhnl,bhl->bhn", symmetric_targets, y) / (batch * heads * tokens * bits)
    return torch.einsum("bhnm,bhn->hm", kernel, d_y * 2 * sigmoid * (1 - sigmoid))


def check_learnable(x: torch.Tensor, anchors: int, topk: int) -> None:
    """Raise unless ``x`` (B, H, N, d) can teach the hash: N >= anchors and topk, and every value finite."""
    tokens = x.shape[2]
    if tokens < max(anchors, topk):
        raise SurgeryError(
            f"ecoformer: the hash learns from the tokens of one image, and this batch has {tokens} per "
            f"image, fewer than anchors={anchors} or topk={topk}: learn it from images of the model's "
            "size (calibration data), or apply with smaller anchors and topk."
        )
    if not bool(torch.isfinite(x).all()):
        raise SurgeryError(
            "ecoformer: the batch the hash would learn from holds NaN or inf values (in the images, or "
            "produced by the blocks before); the hash was not learned. Learn it from finite data."
        )


class KernelHash(nn.Module):
    """b-bit kernelised hash per head, learned from one batch of (B, H, N, d) normalised tokens."""

    def __init__(
        self,
        heads: int,
        head_dim: int,
        bits: int = 16,
        anchors: int = 25,
        topk: int = 10,
        lr: float = 5e-4,
        momentum: float = 0.9,
        iterations: int = 100,
        seed: int = 0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.heads, self.head_dim, self.bits, self.num_anchors, self.topk = heads, head_dim, bits, anchors, topk
        self.lr, self.momentum, self.iterations, self.seed = lr, momentum, iterations, seed
        generator = torch.Generator().manual_seed(seed)
        weights = torch.randn(heads, bits, anchors, generator=generator, dtype=torch.float32)
        self.register_buffer("A", weights.to(device=device, dtype=dtype))
        self.register_buffer("mvec", torch.zeros(1, heads, 1, anchors, device=device, dtype=dtype))
        self.register_buffer("anchor", torch.zeros(1, heads, anchors, head_dim, device=device, dtype=dtype))
        self.register_buffer("learned", torch.zeros((), dtype=torch.bool, device=device))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """kappa(x) - mu, (B, H, N, m)."""
        return gaussian_features(x, self.anchor) - self.mvec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """h(x): (B, H, N, d) to (B, H, N, b) codes in {-1, +1} (0 where the projection is exactly 0)."""
        return sign_ste(torch.einsum("bhnm,hkm->bhnk", self.features(x), self.A.detach()))

    @torch.no_grad()
    def pick_anchors(self, x: torch.Tensor) -> torch.Tensor:
        """m random tokens of the first sample, per head: (1, H, m, d)."""
        generator = torch.Generator().manual_seed(self.seed + 1)
        order = torch.randperm(x.shape[2], generator=generator)[: self.num_anchors].to(x.device)
        return x[:1].index_select(2, order)

    def learn(self, x: torch.Tensor) -> list[float]:
        """Fit anchors, mu and A to ``x`` (B, H, N, d); returns each bit's kept binary loss. Works under
        no_grad and inference_mode too. A batch with fewer tokens than anchors or topk, or with a value
        that is not finite (which would zero every code), is refused: the hash stays unlearned."""
        check_learnable(x, self.num_anchors, self.topk)
        threads = torch.get_num_threads()
        small = x.shape[0] * x.shape[1] * x.shape[2] ** 2 < SMALL_FIT  # 1600 sequential steps of tiny ops:
        try:  # threads only add their overhead (20x slower on a busy 2-core machine)
            if small:
                torch.set_num_threads(1)
            with torch.inference_mode(False):
                return self._learn(x.detach().clone())
        finally:
            torch.set_num_threads(threads)

    @torch.no_grad()
    def _learn(self, x: torch.Tensor) -> list[float]:
        targets = similarity_targets(x, self.topk) * self.bits
        self.anchor.copy_(self.pick_anchors(x))
        kernel = gaussian_features(x, self.anchor)
        self.mvec.copy_(kernel.mean(dim=2, keepdim=True).mean(dim=0, keepdim=True))
        kernel = kernel - self.mvec
        kept = []
        for bit in range(self.bits):
            before = self.A[:, bit, :].clone()
            fitted = self._fit_row(kernel, targets, before)
            codes = [
                torch.where(torch.einsum("bhnm,hm->bhn", kernel, row) > 0, 1.0, -1.0).to(x.dtype)
                for row in (before, fitted)
            ]
            losses = [float(code_loss(y, targets, self.bits)) for y in codes]
            better = losses[1] < losses[0]
            self.A[:, bit, :].copy_(fitted if better else before)
            y = codes[1] if better else codes[0]
            kept.append(losses[1] if better else losses[0])
            targets = targets - y.unsqueeze(-1) * y.unsqueeze(-2)
        self.learned.fill_(True)
        return kept

    def _fit_row(self, kernel: torch.Tensor, targets: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """The official per-bit fit: SGD with Nesterov momentum on the relaxed loss, from ``start``; the
        gradient in closed form (:func:`relaxed_gradient`, equal to autograd's) and the update as
        ``torch.optim.SGD(lr, momentum, nesterov=True)`` makes it, without an autograd graph per step."""
        row, buffer = start.clone(), None
        symmetric = targets + targets.transpose(-1, -2)
        for _ in range(self.iterations):
            grad = relaxed_gradient(kernel, symmetric, row, self.bits)
            buffer = grad.clone() if buffer is None else buffer.mul_(self.momentum).add_(grad)
            row = row - self.lr * (grad + self.momentum * buffer)
        return row

    def extra_repr(self) -> str:
        learned = "?" if self.learned.is_meta else bool(self.learned)
        return f"heads={self.heads}, bits={self.bits}, anchors={self.num_anchors}, topk={self.topk}, learned={learned}"
