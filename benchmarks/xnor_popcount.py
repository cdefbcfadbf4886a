"""Is a bit-packed 1-bit GEMM (XNOR + popcount) worth it here without a compiled kernel?

W1A1's linears as +-1 float matmuls (what bivit runs in PyTorch) against the same product on packed
bits, XORed and popcounted with numpy (``np.bitwise_count``, 64 bits per word), on a ViT-B/16 MLP
shape (1576 x 768 -> 3072), checked to give the same integers; timed side by side (medians).

    python benchmarks/xnor_popcount.py [--repeats 5]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from _common import markdown_table, time_side_by_side, write_report

ROWS, DEPTH, COLUMNS = 8 * 197, 768, 3072


def xnor_popcount(packed_a: np.ndarray, packed_w: np.ndarray, block: int = 64) -> np.ndarray:
    """(rows, columns) integer dot products of +-1 vectors from their packed sign bits."""
    out = np.empty((packed_a.shape[0], packed_w.shape[0]), np.int32)
    for start in range(0, packed_a.shape[0], block):
        differ = np.bitwise_xor(packed_a[start : start + block, None, :], packed_w[None, :, :])
        out[start : start + block] = DEPTH - 2 * np.bitwise_count(differ).sum(-1, dtype=np.int32)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    a, w = rng.standard_normal((ROWS, DEPTH)), rng.standard_normal((COLUMNS, DEPTH))
    packed_a = np.packbits(a >= 0, axis=1).view(np.uint64)
    packed_w = np.packbits(w >= 0, axis=1).view(np.uint64)
    signs_a = torch.from_numpy(np.where(a >= 0, 1.0, -1.0).astype(np.float32))
    signs_w = torch.from_numpy(np.where(w >= 0, 1.0, -1.0).astype(np.float32))
    exact = np.array_equal(
        xnor_popcount(packed_a, packed_w), torch.nn.functional.linear(signs_a, signs_w).numpy().astype(np.int32)
    )
    seconds = time_side_by_side(
        {
            "+-1 float matmul (torch, what bivit runs)": lambda: torch.nn.functional.linear(signs_a, signs_w),
            "XNOR + popcount on packed bits (numpy)": lambda: xnor_popcount(packed_a, packed_w),
        },
        repeats=args.repeats,
    )
    base = seconds["+-1 float matmul (torch, what bivit runs)"]
    rows = [[name, f"{value * 1000:.1f}", f"{base / value:.2f}x"] for name, value in seconds.items()]
    body = (
        f"{ROWS} x {DEPTH} -> {COLUMNS}, {torch.get_num_threads()} threads; same integers: {exact}.\n\n"
        + markdown_table(["1-bit product", "ms", "speed vs the float matmul"], rows)
    )
    write_report("xnor_popcount", "1-bit GEMM: XNOR + popcount without a compiled kernel", body)


if __name__ == "__main__":
    main()
