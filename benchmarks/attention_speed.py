"""Softmax (SDPA) vs Agent Attention vs Castling linear-angular attention vs EcoFormer on a ViT-B/16 shape.

Random weights, batch 1, fp32, at 224, 448 and 896 px (196, 784 and 3136 patch tokens). Times one
attention layer (core + output projection) and the whole model, side by side in one run (medians
over repeats after warm-up), beside the FLOPs ratio from torch.utils.flop_counter. Every block gets
the new attention (agents: 81, the paper's DeiT-B number; EcoFormer's hashes are learned on one
random batch at 224 px first, then fixed). EcoFormer's FLOPs count its +-1 code products as
multiplications (torch's counter knows no accumulations); the table also gives how many of them there
are per layer, beside the q k^T and P v multiplications of softmax attention.

    python benchmarks/attention_speed.py [--sizes 224 448 896] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch

import surgery

from _common import count_flops, markdown_table, time_side_by_side, vit_base, write_report

VARIANTS = {
    "softmax (SDPA)": None,
    "agent": ("agent_attention", {"layers": "all"}),
    "castling": ("castling", {"layers": "all"}),
    "ecoformer": ("ecoformer", {"layers": "all"}),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 896])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    models = {}
    for name, spec in VARIANTS.items():
        model = vit_base(layer_norm_eps=1e-6)
        calibration = [torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))]
        models[name] = surgery.apply(model, [spec], calibration=calibration) if spec else model
    rows = []
    for size in args.sizes:
        pixels = torch.randn(1, 3, size, size)
        tokens = 1 + (size // 16) ** 2
        hidden = torch.randn(1, tokens, 768)
        with torch.inference_mode():
            layer_runs = {n: (lambda m=m: m.vit.encoder.layer[0].attention(hidden)) for n, m in models.items()}
            model_runs = {
                n: (lambda m=m: m(pixel_values=pixels, interpolate_pos_encoding=True)) for n, m in models.items()
            }
            layer_time = time_side_by_side(layer_runs, repeats=max(args.repeats, 5))
            model_time = time_side_by_side(model_runs, repeats=args.repeats, warmup=1)
            layer_flops = {n: count_flops(run) for n, run in layer_runs.items()}
            model_flops = {n: count_flops(run) for n, run in model_runs.items()}
        base = "softmax (SDPA)"
        for name in models:
            rows.append(
                [
                    size,
                    tokens,
                    name,
                    f"{layer_time[name] * 1000:.2f}",
                    f"{layer_time[base] / layer_time[name]:.2f}x",
                    f"{layer_flops[base] / layer_flops[name]:.2f}x",
                    f"{model_time[name] * 1000:.0f}",
                    f"{model_time[base] / model_time[name]:.2f}x",
                    f"{model_flops[base] / model_flops[name]:.2f}x",
                ]
            )
        eco = models["ecoformer"].vit.encoder.layer[0].attention.attention
        rows[-1].append(
            f"{eco.code_products(tokens) / 1e6:.1f} M (softmax: {2 * 12 * tokens * tokens * 64 / 1e6:.1f} M)"
        )
        print(
            markdown_table(["px", "tokens", "attention", "layer ms"], [r[:4] for r in rows[-len(models) :]]),
            flush=True,
        )
    header = [
        "px",
        "tokens",
        "attention",
        "layer ms",
        "layer speed-up",
        "layer FLOPs ratio",
        "model ms",
        "model speed-up",
        "model FLOPs ratio",
        "+-1 code products per layer",
    ]
    rows = [row + [""] * (len(header) - len(row)) for row in rows]
    body = (
        "ViT-B/16 shape (random weights), batch 1, fp32, every block swapped; speed-up and FLOPs ratio are "
        "softmax / variant (higher is better). Layer = attention core + output projection of block 0. "
        f"Medians over {max(args.repeats, 5)} (layer) and {args.repeats} (model) side-by-side repeats after warm-up.\n\n"
        + markdown_table(header, rows)
    )
    write_report("attention_speed", "Linear attention vs softmax attention on CPU", body)


if __name__ == "__main__":
    main()
