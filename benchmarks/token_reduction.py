"""Token reduction at equal measured FLOPs, training-free: ToMe vs Token Transforming vs pruning, in one run.

Accuracy, on a built-in task's test split (``--task shapes``, the default: the proving ground's
5,000 images; ``--task digits``: the digits ViT and a digits DeiT-distilled, 360 digits):
- each method's accuracy against its *measured* FLOPs (torch's flop counter, batch 1, the
  reduction's own work included) as a curve over r, no training after the reduction;
- each method at 0.7 / 0.5 / 0.35 of the FLOPs, interpolated on its curve, against the original on
  the same images (accuracy difference with a bootstrap 95 % interval; exact McNemar at the nearest
  measured point), and every pair of methods compared the same way at equal measured FLOPs.
Ablation: Token Transforming's temperature x topk at flops=0.5 on the *validation* split; the
plugin's defaults are checked against its best cell.
Speed: ViT-B/16 and DeiT-S shapes (random weights), 224 px, batch 8, every method at two targets
timed side by side with the unreduced model in one run (medians after warm-up), with the share of
the time spent building and applying the reduction (torch.profiler region of each plugin).

    python benchmarks/token_reduction.py [--task shapes|digits] [--repeats 5] [--threads 2] [--skip-speed]
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json

import torch
from torch.profiler import ProfilerActivity, profile

import surgery
from surgery.data.tasks import task_tensors
from surgery.demo.model import default_model
from surgery.evaluation.accuracy import predict_logits
from surgery.evaluation.flops import model_flops
from surgery.evaluation.paired import correct_of
from surgery.errors import ConfigError
from surgery.toolkit.reduction_config import ReductionConfig

from _common import RESULTS, markdown_table, time_side_by_side, vit_base, write_report
from _curves import curve_records, pairs_table, plot, sweep, targets_table

TARGETS = (0.7, 0.5, 0.35)
SPEED_TARGETS = (0.6, 0.5)
R_GRID = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 18, 20, 24, 28, 32)
METHODS = {"ToMe (token_merge)": "token_merge", "token_transform": "token_transform", "token_prune": "token_prune"}
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
    """{name: steps} at ``target`` (the speed table); ToMe's entry is a reason string when out of its reach."""
    r = tome_r(model, target)
    return {
        "token_merge (ToMe)": "not reachable (ToMe removes at most half a block's tokens)"
        if r is None
        else [("token_merge", {"r": r})],
        "token_transform": [("token_transform", {"flops": target})],
        "token_prune": [("token_prune", {"flops": target})],
    }


def accuracy_section(task: str, folders: dict[str, object]) -> tuple[str, dict]:
    body, saved = [], {}
    for arch, folder in folders.items():
        pixels, labels = task_tensors(folder, "test", task)
        original = surgery.load(folder)
        full = model_flops(original, pixels[:1])
        reference = correct_of(predict_logits(original, pixels), labels)
        print(f"{arch}: original {reference.mean():.2%} on {len(labels)} test images", flush=True)
        curves = [
            sweep(
                name,
                lambda r, p=plugin: surgery.apply(surgery.load(folder), [(p, {"r": r})]),
                R_GRID,
                pixels,
                labels,
                full,
            )
            for name, plugin in METHODS.items()
        ]
        image = RESULTS / f"token_reduction_{task}_{arch.split()[-1].lower()}.png"
        plot(
            curves,
            float(reference.mean()),
            image,
            f"{arch}: training-free accuracy vs measured FLOPs ({len(labels)} test images)",
            TARGETS,
        )
        pairs, records = pairs_table(curves, TARGETS)
        body.append(
            f"### {arch}\n\nOriginal: {reference.mean():.2%} on {len(labels)} test images "
            f"(1 image = {100 / len(labels):.2g} pt).\n\n![curves]({image.name})\n\n"
            + targets_table(reference, curves, TARGETS)
            + "\n\nMethods against each other at equal measured FLOPs "
            "(interpolated accuracies; McNemar between each curve's nearest measured points):\n\n" + pairs
        )
        saved[arch] = {
            "original": float(reference.mean()),
            "images": len(labels),
            "curves": curve_records(curves),
            "pairs": records,
        }
    return "\n\n".join(body), saved


def ablation_table(task: str, folders: dict[str, object], target: float = 0.5) -> str:
    data = {arch: task_tensors(folder, "validation", task) for arch, folder in folders.items()}
    cells = {}
    for temperature, topk in itertools.product(TEMPERATURES, TOPKS):
        scores = []
        for arch, folder in folders.items():
            model = surgery.apply(
                surgery.load(folder),
                [("token_transform", {"flops": target, "temperature": temperature, "topk": topk})],
            )
            scores.append(float(correct_of(predict_logits(model, data[arch][0]), data[arch][1]).mean()))
        cells[(temperature, topk)] = sum(scores) / len(scores)
    best = max(cells, key=cells.get)
    from surgery.plugins.token_transform.config import TokenTransformConfig

    default = (TokenTransformConfig().temperature, TokenTransformConfig().topk)
    mark = lambda key: (
        ("**" if key == best else "")
        + f"{cells[key]:.2%}"
        + ("**" if key == best else "")
        + (" (default)" if key == default else "")
    )  # noqa: E731
    rows = [[f"{t:g}"] + [mark((t, k)) for k in TOPKS] for t in TEMPERATURES]
    header = ["temperature \\ topk"] + [("all" if k >= 1000 else str(k)) for k in TOPKS]
    images = len(next(iter(data.values()))[1])
    return (
        f"Token Transforming at flops={target}, validation accuracy ({images} images), mean of {' and '.join(folders)}; "
        f"best: temperature {best[0]:g}, topk {'all' if best[1] >= 1000 else best[1]} ({cells[best]:.2%}); the plugin's "
        f"defaults (temperature {default[0]:g}, topk {default[1]}): {cells.get(default, float('nan')):.2%}.\n\n"
        + markdown_table(header, rows)
    )


def deit_small():
    from transformers import DeiTConfig, DeiTForImageClassification

    torch.manual_seed(0)
    config = DeiTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        num_labels=1000,
    )
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
        for target in SPEED_TARGETS:
            for name, steps in variants(base, target).items():
                if not isinstance(steps, str):
                    models[f"{name} @ {target}"] = surgery.apply(copy.deepcopy(base), steps)
        with torch.inference_mode():
            seconds = time_side_by_side(
                {n: (lambda m=m: m(pixel_values=x)) for n, m in models.items()}, repeats=repeats
            )
        full = model_flops(base, x[:1])
        for name, model in models.items():
            rows.append(
                [
                    shape,
                    name,
                    f"{seconds[name] * 1000:.0f}",
                    f"{8 / seconds[name]:.1f}",
                    f"{seconds['original'] / seconds[name]:.2f}x",
                    f"{model_flops(model, x[:1]) / full:.3f}",
                    "-" if name == "original" else f"{reduction_share(model, x):.1%}",
                ]
            )
    header = [
        "shape",
        "model",
        "ms / batch",
        "images / s",
        "throughput vs original",
        "FLOPs / original",
        "time in the reduction",
    ]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="shapes", choices=("shapes", "digits"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-ablation", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.task == "shapes":
        folders = {"shapes ViT": default_model("vit", task_name="shapes")}
    else:
        folders = {"digits ViT": default_model("vit"), "digits DeiT-distilled": default_model("deit-distilled")}
    accuracy, saved = accuracy_section(args.task, folders)
    body = (
        "Training-free, no recovery: accuracy against measured FLOPs over r (1, 2, 3, ...), and at equal "
        "measured FLOPs by interpolation, all on the same test images.\n\n" + accuracy
    )
    if not args.skip_ablation:
        body += "\n\n## Ablation\n\n" + ablation_table(args.task, folders)
    if not args.skip_speed:
        body += (
            f"\n\n## Speed (PyTorch eager, {args.threads} threads, batch 8, {args.repeats} side-by-side repeats)\n\n"
            + speed_table(args.repeats)
        )
    name = "token_reduction" if args.task == "shapes" else f"token_reduction_{args.task}"
    (RESULTS / f"{name}.json").write_text(json.dumps(saved, indent=2) + "\n")
    write_report(
        name, f"Token reduction at equal measured FLOPs ({args.task}): ToMe, Token Transforming, pruning", body
    )


if __name__ == "__main__":
    main()
