"""Merge, compute, unmerge (``token_merge(unmerge=True)``): what the token map costs and keeps.

Quality, on the built-in shapes ViT (trained; 64 px, 64 patches + cls, 6 blocks), training-free, on the test
split: for each r, the measured FLOPs ratio (torch's counter), the accuracy, and the cosine similarity of every
token's final features (``last_hidden_state`` after the final norm, cls and patches) to the unreduced model's,
averaged over tokens and images: what a dense head reading the token map would see. ToMe's reducing blocks at
the same r stand beside for accuracy and FLOPs (they return fewer tokens, so they have no map to compare).

Speed, on ViT-B/16 and DINOv2-B/14 shapes (random weights; speed does not depend on them), 224 px, batch 8,
PyTorch eager (``torch.inference_mode()``), every variant timed side by side with fp32 in one run (medians over
repeats after warm-up); DINOv2-B through ``Dinov2Backbone`` (feature maps out), as a dense-prediction user runs it.

    python benchmarks/unmerge.py [--repeats 5] [--threads 2] [--images 2000]
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

import surgery
from surgery.data.tasks import task_tensors
from surgery.demo.model import default_model

from surgery.evaluation.flops import model_flops

from _common import RESULTS, markdown_table, time_side_by_side, vit_base, write_report

QUALITY_R = (4, 8, 12, 16, 20, 24, 32)
SPEED_R = {"ViT-B/16": (32, 48, 64, 98), "DINOv2-B/14 backbone": (32, 64, 96, 128)}


def quality(images: int) -> list[list[object]]:
    folder = default_model("vit", task_name="shapes")
    x, y = task_tensors(folder, "test", "shapes", limit=images)
    original = surgery.load(folder).eval()
    with torch.inference_mode():
        reference = torch.cat([original.vit(pixel_values=b).last_hidden_state for b in x.split(250)])
        base_accuracy = float(
            torch.cat([original(pixel_values=b).logits for b in x.split(250)]).argmax(-1).eq(y).float().mean()
        )
    base_flops = model_flops(original, x[:1])
    rows = [["original", "1.00", f"{base_accuracy:.2%}", "1.0000", "1.00", f"{base_accuracy:.2%}"]]
    for r in QUALITY_R:
        row = [f"r={r}"]
        for unmerge in (True, False):
            model = surgery.apply(copy.deepcopy(original), [("token_merge", {"r": r, "unmerge": unmerge})]).eval()
            with torch.inference_mode():
                logits = torch.cat([model(pixel_values=b).logits for b in x.split(250)])
                accuracy = float(logits.argmax(-1).eq(y).float().mean())
                flops = model_flops(model, x[:1]) / base_flops
                if unmerge:
                    features = torch.cat([model.vit(pixel_values=b).last_hidden_state for b in x.split(250)])
                    cosine = float(torch.nn.functional.cosine_similarity(features, reference, dim=-1).mean())
                    row += [f"{flops:.2f}", f"{accuracy:.2%}", f"{cosine:.4f}"]
                else:
                    row += [f"{flops:.2f}", f"{accuracy:.2%}"]
        rows.append(row)
    return rows


def dinov2_backbone():
    from transformers import Dinov2Backbone, Dinov2Config

    torch.manual_seed(0)
    config = Dinov2Config(
        image_size=224,
        patch_size=14,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        out_features=["stage4", "stage8", "stage12"],
    )
    return Dinov2Backbone(config).eval()


def speed(repeats: int) -> list[list[object]]:
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    rows = []
    for shape, build in (("ViT-B/16", vit_base), ("DINOv2-B/14 backbone", dinov2_backbone)):
        models = {"fp32": build()}
        for r in SPEED_R[shape]:
            models[f"unmerge r={r}"] = surgery.apply(build(), [("token_merge", {"r": r, "unmerge": True})])
        if shape == "ViT-B/16":
            models["reducing r=16 (ToMe, no map)"] = surgery.apply(build(), [("token_merge", {"r": 16})])
        with torch.inference_mode():
            seconds = time_side_by_side(
                {n: (lambda m=m: m(pixel_values=x)) for n, m in models.items()}, repeats=repeats
            )
        for name in models:
            rows.append([shape, name, f"{seconds[name] * 1000:.0f}", f"{seconds['fp32'] / seconds[name]:.2f}x"])
        models.clear()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quality_rows = quality(args.images)
    speed_rows = speed(args.repeats)
    (RESULTS / "unmerge.json").write_text(json.dumps({"quality": quality_rows, "speed": speed_rows}, indent=1) + "\n")
    body = (
        f"Quality: the built-in shapes ViT, {args.images} test images, training-free. 'cosine' is every token's final "
        "features against the unreduced model's (cls and patches, averaged).\n\n"
        + markdown_table(
            [
                "r per block",
                "FLOPs (unmerge)",
                "accuracy (unmerge)",
                "cosine (unmerge)",
                "FLOPs (reducing)",
                "accuracy (reducing)",
            ],
            quality_rows,
        )
        + f"\n\nSpeed: random weights, 224 px, batch 8, PyTorch eager, {args.threads} threads, {args.repeats} side-by-side "
        "repeats after 2 warm-up rounds (medians).\n\n"
        + markdown_table(["shape", "model", "ms / batch", "speed vs fp32"], speed_rows)
    )
    write_report("unmerge", "Merge, compute, unmerge: the token map's cost and what it keeps", body)


if __name__ == "__main__":
    main()
