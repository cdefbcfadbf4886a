"""Token reduction at equal FLOPs, training-free: ToMe vs Token Transforming vs pruning, in one run.

Accuracy: the built-in digits ViT and a digits DeiT-distilled (trained here once, about a minute),
at about 40 % and 50 % fewer FLOPs, no training after the reduction:
- ``token_transform`` and ``token_prune`` with ``flops=0.6`` / ``0.5`` (the schedule solved for it);
- ``token_merge`` (ToMe) with the smallest constant r whose schedule meets the same target under the
  same cost model (ToMe removes at most half of a block's tokens, so a target can be out of its reach);
every model's FLOPs measured with torch's flop counter (batch 1) and shown beside it.
Ablation: Token Transforming's temperature x topk at 0.6 on the *validation* split (288 digits) of
both models, mean of the two; the plugin's defaults are the best cell of this table.
Speed: ViT-B/16 and DeiT-S shapes (random weights), 224 px, batch 8, every method at both targets
timed side by side with the unreduced model in one run (medians after warm-up), with the share of
the time spent building and applying the reduction (torch.profiler region of each plugin).

    python benchmarks/token_reduction.py [--repeats 5] [--threads 2] [--skip-speed]
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools

import torch
from torch.profiler import ProfilerActivity, profile

import surgery
from surgery.data.digits import digits_for
from surgery.demo.model import default_model
from surgery.evaluation.flops import model_flops
from surgery.errors import ConfigError
from surgery.toolkit.reduction_config import ReductionConfig

from _common import markdown_table, time_side_by_side, vit_base, write_report

TARGETS = (0.6, 0.5)
TEMPERATURES = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
TOPKS = (1, 2, 4, 8, 1000)
REGIONS = ("token_merge::merge", "token_transform::transform", "token_prune::prune")


def tome_r(model, target: float) -> int | None:
    """ToMe's constant r for ``target`` under the cost model the other plugins solve with, or None."""
    anatomy = surgery.get_host().anatomy(model.config.model_type)
    blocks, prefix = anatomy.blocks(model), anatomy.prefix_tokens_of(model.config)
    cap = lambda n, r: max(0, min(r, (n - prefix) // 2))  # noqa: E731  (ToMe merges at most half)
    similarity = lambda a, b: 2.0 * (a // 2) ** 2 * blocks[0].attention.head_dim  # noqa: E731
    try:
        return ReductionConfig(flops=target).removals(blocks, prefix, cap, model.config, similarity)[0]
    except ConfigError:
        return None


def variants(model, target: float) -> dict[str, object]:
    """{name: steps} at ``target``; ToMe's entry is a reason string when the target is out of its reach."""
    r = tome_r(model, target)
    return {
        "token_merge (ToMe)": "not reachable (ToMe removes at most half a block's tokens)" if r is None
        else [("token_merge", {"r": r})],
        "token_transform": [("token_transform", {"flops": target})],
        "token_prune": [("token_prune", {"flops": target})],
    }


def accuracy_of(model, pixels, labels) -> float:
    with torch.inference_mode():
        predictions = torch.cat([model(pixel_values=b).logits for b in pixels.split(120)]).argmax(-1)
    return float((predictions == labels).float().mean())


def accuracy_table(folders: dict[str, object]) -> tuple[str, dict]:
    rows, results = [], {}
    for arch, folder in folders.items():
        pixels, labels = digits_for(folder)
        original = surgery.load(folder)
        full = model_flops(original, pixels[:1])
        rows.append([arch, "original", "-", f"{accuracy_of(original, pixels, labels):.2%}", "1.000"])
        for target in TARGETS:
            for name, steps in variants(original, target).items():
                if isinstance(steps, str):
                    rows.append([arch, name, f"{target:.1f}", steps, "-"])
                    continue
                model = surgery.apply(surgery.load(folder), steps)
                acc = accuracy_of(model, pixels, labels)
                results[(arch, name, target)] = acc
                shown = f"r={steps[0][1]['r']}" if "r" in steps[0][1] else f"flops={target}"
                rows.append([arch, f"{name} ({shown})", f"{target:.1f}", f"{acc:.2%}", f"{model_flops(model, pixels[:1]) / full:.3f}"])
    header = ["model", "method", "FLOPs target", "test accuracy (training-free)", "measured FLOPs / original"]
    return markdown_table(header, rows), results


def ablation_table(folders: dict[str, object]) -> str:
    data = {arch: digits_for(folder, "validation") for arch, folder in folders.items()}
    cells = {}
    for temperature, topk in itertools.product(TEMPERATURES, TOPKS):
        scores = []
        for arch, folder in folders.items():
            model = surgery.apply(surgery.load(folder), [("token_transform", {"flops": 0.6, "temperature": temperature, "topk": topk})])
            scores.append(accuracy_of(model, *data[arch]))
        cells[(temperature, topk)] = sum(scores) / len(scores)
    best = max(cells, key=cells.get)
    rows = [[f"{t:g}"] + [("**" if (t, k) == best else "") + f"{cells[(t, k)]:.2%}" + ("**" if (t, k) == best else "")
                          for k in TOPKS] for t in TEMPERATURES]
    header = ["temperature \\ topk"] + [("all" if k >= 1000 else str(k)) for k in TOPKS]
    return (f"Token Transforming at flops=0.6, validation accuracy (288 digits), mean of {' and '.join(folders)}; "
            f"best: temperature {best[0]:g}, topk {'all' if best[1] >= 1000 else best[1]}.\n\n" + markdown_table(header, rows))


def deit_small():
    from transformers import DeiTConfig, DeiTForImageClassification

    torch.manual_seed(0)
    config = DeiTConfig(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                        intermediate_size=1536, num_labels=1000)
    return DeiTForImageClassification(config).eval()


def reduction_share(model, x) -> float:
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(pixel_values=x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.cpu_time_total for e in events if e.key in REGIONS) / total


def speed_table(repeats: int) -> str:
    rows = []
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    for shape, build in (("ViT-B/16", functools.partial(vit_base, 1e-6)), ("DeiT-S", deit_small)):
        base = build()
        models = {"original": base}
        for target in TARGETS:
            for name, steps in variants(base, target).items():
                if not isinstance(steps, str):
                    models[f"{name} @ {target}"] = surgery.apply(copy.deepcopy(base), steps)
        with torch.inference_mode():
            seconds = time_side_by_side({n: (lambda m=m: m(pixel_values=x)) for n, m in models.items()}, repeats=repeats)
        full = model_flops(base, x[:1])
        for name, model in models.items():
            rows.append([shape, name, f"{seconds[name] * 1000:.0f}", f"{8 / seconds[name]:.1f}",
                         f"{seconds['original'] / seconds[name]:.2f}x", f"{model_flops(model, x[:1]) / full:.3f}",
                         "-" if name == "original" else f"{reduction_share(model, x):.1%}"])
    header = ["shape", "model", "ms / batch", "images / s", "throughput vs original", "FLOPs / original", "time in the reduction"]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folders = {"digits ViT": default_model("vit"), "digits DeiT-distilled": default_model("deit-distilled")}
    accuracy, _ = accuracy_table(folders)
    body = ("Training-free, no recovery. 360 test digits (1 digit = 0.28 pt); FLOPs from torch's flop counter at "
            "batch 1 (the reduction's own work included).\n\n" + accuracy + "\n\n## Ablation\n\n" + ablation_table(folders))
    if not args.skip_speed:
        body += (f"\n\n## Speed (PyTorch eager, {args.threads} threads, batch 8, {args.repeats} side-by-side repeats)\n\n"
                 + speed_table(args.repeats))
    write_report("token_reduction", "Token reduction at equal FLOPs: ToMe, Token Transforming, pruning", body)


if __name__ == "__main__":
    main()
