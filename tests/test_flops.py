"""FLOPs counting includes the CPU softmax-attention kernel."""

import torch
import torch.nn.functional as F

from surgery.evaluation.flops import count_flops


def test_cpu_sdpa_is_counted_like_two_matmuls():
    q = k = v = torch.randn(1, 2, 16, 8)
    counted = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert counted == 2 * (2 * 2 * 16 * 16 * 8)  # q @ k^T and p @ v, 2 FLOPs per multiply-add
