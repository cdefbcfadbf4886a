"""ToMe speed on a ViT-B/16-shaped model (random weights) at 224 px, batch 8, r = 0..16.

Throughput of the token-merged model against the unmodified one, measured side by side in one run
(medians over repeats after warm-up), beside the FLOPs ratio (torch.utils.flop_counter), and the
share of the run spent in matching and merging (torch.profiler, region ``token_merge::merge``).

    python benchmarks/tome_speed.py [--repeats 9] [--r 0 4 8 12 16]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import surgery
from surgery.plugins.token_merge.layers import MERGE_REGION
from surgery.toolkit.tokens import token_sizes

from _common import count_flops, markdown_table, time_side_by_side, vit_base, write_report


def merge_share(model, x) -> float:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(pixel_values=x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    merge = sum(e.cpu_time_total for e in events if e.key == MERGE_REGION)
    return merge / total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--r", type=int, nargs="+", default=[0, 4, 8, 12, 16])
    args = parser.parse_args()

    x = torch.randn(args.batch, 3, 224, 224)
    baseline = vit_base(layer_norm_eps=1e-6)
    merged = {r: surgery.apply(vit_base(layer_norm_eps=1e-6), [("token_merge", {"r": r})]) for r in args.r}
    with torch.inference_mode():
        runs = {"baseline": lambda: baseline(pixel_values=x)}
        runs.update({f"r={r}": (lambda m=m: m(pixel_values=x)) for r, m in merged.items()})
        seconds = time_side_by_side(runs, repeats=args.repeats)
        flops = {name: count_flops(run) for name, run in runs.items()}
        rows = []
        for r, model in merged.items():
            name = f"r={r}"
            model(pixel_values=x)
            tokens = token_sizes(model).sizes
            final_tokens = 197 if tokens is None else tokens.shape[1]
            rows.append(
                [
                    r,
                    final_tokens,
                    f"{seconds[name] * 1000:.0f}",
                    f"{args.batch / seconds[name]:.2f}",
                    f"{seconds['baseline'] / seconds[name]:.2f}x",
                    f"{flops['baseline'] / flops[name]:.2f}x",
                    f"{merge_share(model, x):.1%}" if r else "-",
                ]
            )
    header = [
        "r",
        "tokens after last block",
        "ms / batch",
        "images / s",
        "throughput vs baseline",
        "FLOPs ratio (baseline / ToMe)",
        "time in matching+merging",
    ]
    body = (
        f"ViT-B/16 shape (86.6M params, random weights), 224 px, batch {args.batch}, fp32, torch SDPA attention.\n"
        f"Baseline (unmodified): {seconds['baseline'] * 1000:.0f} ms / batch, {flops['baseline'] / 1e9:.1f} GFLOPs.\n"
        f"Medians of {args.repeats} side-by-side repeats after 2 warm-up rounds.\n\n" + markdown_table(header, rows)
    )
    write_report("tome_speed", "ToMe throughput on CPU", body)


if __name__ == "__main__":
    main()
