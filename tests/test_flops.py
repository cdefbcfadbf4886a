"""FLOPs counting includes the CPU softmax-attention kernel."""

import torch
import torch.nn.functional as F

from surgery.evaluation.flops import count_flops


def test_cpu_sdpa_is_counted_like_two_matmuls():
    q = k = v = torch.randn(1, 2, 16, 8)
    counted = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert counted == 2 * (2 * 2 * 16 * 16 * 8)  # q @ k^T and p @ v, 2 FLOPs per multiply-add


def test_int8_linears_count_as_the_matmuls_they_replace():
    """oneDNN's int8 linear is counted like the float one, and the kernels' one-time self-check is not."""
    import surgery
    from surgery.evaluation.flops import model_flops
    from surgery.plugins.quantize import engine, kernels

    from conftest import images, tiny

    x = images(1)
    fp32 = model_flops(tiny("vit").eval(), x)
    kernels.forget()  # as in a fresh process
    model = surgery.apply(tiny("vit"), "quantize", calibration=[images(4)]).eval()
    linears = [m for m in model.modules() if hasattr(m, "int8_engine")]
    assert linears and model_flops(model, x) == fp32
    with torch.inference_mode():
        model(pixel_values=x)
    assert all(m._inference_cache is not None for m in linears) or not engine.available()
