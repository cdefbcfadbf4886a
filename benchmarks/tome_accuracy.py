"""ToMe on the built-in digits ViT, training-free: accuracy, tokens and FLOPs for several r.

The default model has 4 blocks and 65 tokens (64 patches + cls) at 32x32 px, so r is large
relative to the sequence: r = 8 removes an eighth of the tokens in each block.

    python benchmarks/tome_accuracy.py
"""

from __future__ import annotations

import torch

import surgery
from surgery.data.digits import digits_for
from surgery.demo.model import default_model
from surgery.evaluation.accuracy import accuracy, predict_logits
from surgery.plugins.token_merge.config import ToMeConfig
from surgery.toolkit.tokens import token_sizes

from _common import count_flops, markdown_table, write_report

CONFIGS = [ToMeConfig(r=r) for r in (2, 4, 8, 12, 16, 20, 24)] + [ToMeConfig(r=r, inflect=-1.0) for r in (4, 8)]


def main() -> None:
    folder = default_model("vit")
    pixels, labels = digits_for(folder)
    baseline = surgery.load(folder)
    base_predictions = predict_logits(baseline, pixels).argmax(-1)
    base_accuracy = accuracy(baseline, pixels, labels)
    with torch.inference_mode():
        base_flops = count_flops(lambda: baseline(pixel_values=pixels[:32]))
    rows = [["none", "-", 65, f"{base_accuracy:.2%}", "-", "100.0%", "1.00x"]]
    for config in CONFIGS:
        model = surgery.apply(surgery.load(folder), config)
        predictions = predict_logits(model, pixels).argmax(-1)
        with torch.inference_mode():
            flops = count_flops(lambda: model(pixel_values=pixels[:32]))
        tokens = token_sizes(model).sizes.shape[1]
        acc = float((predictions == labels).float().mean())
        schedule = "decreasing" if config.inflect == -1.0 else "constant"
        rows.append(
            [
                config.r,
                f"{schedule} {config.schedule(4)}",
                tokens,
                f"{acc:.2%}",
                f"{(acc - base_accuracy) * 100:+.2f}",
                f"{float((predictions == base_predictions).float().mean()):.1%}",
                f"{base_flops / flops:.2f}x",
            ]
        )
    header = [
        "r",
        "schedule (r per block)",
        "tokens after last block",
        "test accuracy",
        "change (points)",
        "agreement with baseline",
        "FLOPs reduction",
    ]
    body = (
        f"Built-in digits ViT ({folder}), 360 test digits, no training after merging (prop_attn on).\n\n"
        + markdown_table(header, rows)
    )
    write_report("tome_accuracy", "ToMe on the digits model, training-free", body)


if __name__ == "__main__":
    main()
