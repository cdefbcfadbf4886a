"""Swap in Agent Attention, recover the accuracy by distillation, save, card: the Python API end to end.

    python examples/recover_agent_attention.py [OUTPUT]      # about a minute and a half on 2 CPU cores

Uses the built-in digits ViT (trained and cached on first use). For your own model, replace the
folder with a Hub id or a local checkpoint, and "digits" with an imagefolder or a Hub dataset id.
"""

from __future__ import annotations

import sys

from transformers import AutoImageProcessor

import surgery
from surgery.demo.model import default_model
from surgery.data.imagesets import load_images


def main(output: str = "out/agent-attention-recovered") -> None:
    original = default_model()  # a transformers folder: config, safetensors weights, image processor
    teacher = surgery.load(original)
    model = surgery.apply(surgery.load(original), ["agent_attention"])
    result = surgery.recover(
        model,
        teacher,
        load_images("digits", "train"),
        load_images("digits", "test"),
        processor=AutoImageProcessor.from_pretrained(original, use_fast=False),
        epochs=15,
        warmup_epochs=2,
        shift=0.125,
        checkpoint_dir=f"{output}/checkpoints",
    )
    print(
        f"teacher {result.teacher_accuracy:.2%}, right after surgery {result.accuracy_before:.2%}, "
        f"after recovery {result.accuracy:.2%} ({result.seconds:.0f} s)"
    )
    surgery.save(model, output, processor=AutoImageProcessor.from_pretrained(original, use_fast=False))  # atomic
    surgery.card(
        output, results=result.figures(teacher=str(original), data="digits", dataset="sklearn digits, 360 test images")
    )
    print(f"saved to {output}, with its model card")


if __name__ == "__main__":
    main(*sys.argv[1:])
