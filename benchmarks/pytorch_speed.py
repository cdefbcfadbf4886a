"""Compression in PyTorch eager: bivit and quantize against fp32 and PyTorch's own dynamic int8.

A ViT-B/16 shape (random weights), 224 px, batch 8, ``torch.inference_mode()``, every variant timed
side by side in one run (medians over repeats after warm-up):
- fp32: the unmodified model;
- bivit W1A32 (binary weights, float activations) and W1A1 (binary weights and activations), on
  every linear and the attention (the plugin's defaults otherwise); in eval mode the +-alpha weights
  are computed once and cached, so W1A32 runs the same float matmuls as fp32;
- quantize: surgery's int8 (static, calibrated W8A8) on oneDNN's int8 kernels, and the same model
  with ``int8_engine = False`` (the fake-quant simulation training uses);
- ``torch.ao.quantization.quantize_dynamic`` int8 on every ``nn.Linear`` (the peer a PyTorch user
  would pick).

    python benchmarks/pytorch_speed.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import copy

import torch

import surgery

from _common import markdown_table, time_side_by_side, timing_arguments, vit_base, write_report



def simulated(model):
    for module in model.modules():
        if hasattr(module, "int8_engine"):
            module.int8_engine = False
    return model


def main() -> None:
    args = timing_arguments()
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    base = vit_base()
    models = {
        "fp32": base,
        "bivit W1A32": surgery.apply(copy.deepcopy(base), [("bivit", {"activations": "full"})]).eval(),
        "bivit W1A1": surgery.apply(copy.deepcopy(base), "bivit").eval(),
        "surgery quantize int8": surgery.apply(copy.deepcopy(base), "quantize", calibration=[x[:4]]).eval(),
        "surgery quantize, simulated": simulated(surgery.apply(copy.deepcopy(base), "quantize", calibration=[x[:4]]).eval()),
        "torch quantize_dynamic int8": torch.ao.quantization.quantize_dynamic(copy.deepcopy(base), {torch.nn.Linear},
                                                                             dtype=torch.qint8),
    }

    def run(model):
        with torch.inference_mode():
            return model(pixel_values=x).logits

    seconds = time_side_by_side({name: (lambda m=m: run(m)) for name, m in models.items()}, repeats=args.repeats)
    rows = [[name, f"{value * 1000:.0f}", f"{seconds['fp32'] / value:.2f}x"] for name, value in seconds.items()]
    body = (
        f"ViT-B/16 shape (random weights), 224 px, batch 8, {args.threads} threads, `torch.inference_mode()`, "
        f"{args.repeats} side-by-side repeats after 2 warm-up rounds (medians).\n\n"
        + markdown_table(["model (PyTorch eager)", "ms / batch", "speed vs fp32"], rows)
    )
    write_report("pytorch_speed", "Compression in PyTorch eager", body)


if __name__ == "__main__":
    main()
