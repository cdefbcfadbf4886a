"""Checkpoint size of a BiViT-binarized ViT-B/16 shape against the fp32 checkpoint.

Saves both with ``save_pretrained`` (safetensors) and reports the whole-file ratio and the ratio
for the binarized linears alone (1 bit per weight plus fp32 per-channel scale and bias).

    python benchmarks/bivit_size.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

import surgery

from _common import markdown_table, vit_base, write_report


def tensor_bytes(file: Path, keep) -> int:
    with safe_open(str(file), framework="pt") as handle:
        return sum(_nbytes(handle, k) for k in handle.keys() if keep(k))


def _nbytes(handle, key: str) -> int:
    tensor = handle.get_tensor(key)
    return tensor.numel() * tensor.element_size()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vit_base().save_pretrained(tmp / "fp32")
        binary = surgery.apply(vit_base(), "bivit")
        binary.save_pretrained(tmp / "bivit")
        linears = {name for name, _ in binary.named_modules() if type(_).__name__ == "BinaryLinear"}
        in_linear = lambda key: key.rsplit(".", 1)[0] in linears  # noqa: E731
        rows = []
        for label, keep in [
            ("whole checkpoint file", None),
            ("binarized linears (weights, scales, biases)", in_linear),
        ]:
            if keep is None:
                fp32, packed = (
                    (tmp / "fp32" / "model.safetensors").stat().st_size,
                    (tmp / "bivit" / "model.safetensors").stat().st_size,
                )
            else:
                fp32, packed = (
                    tensor_bytes(tmp / "fp32" / "model.safetensors", keep),
                    tensor_bytes(tmp / "bivit" / "model.safetensors", keep),
                )
            rows.append([label, f"{fp32 / 1e6:.1f} MB", f"{packed / 1e6:.2f} MB", f"{fp32 / packed:.1f}x"])
        x = torch.randn(2, 3, 224, 224)
        exact = torch.equal(surgery.load(tmp / "bivit")(pixel_values=x).logits, binary(pixel_values=x).logits)
    body = (
        "ViT-B/16 shape (random weights), `bivit` with its defaults (all parts, W1A1, packed), saved with "
        f"`save_pretrained`. Patch embedding, position embeddings, norms and classifier stay fp32. "
        f"Reloaded logits identical to the saved model's: {exact}.\n\n"
        + markdown_table(["what", "fp32", "bivit", "ratio"], rows)
    )
    write_report("bivit_size", "BiViT checkpoint size", body)


if __name__ == "__main__":
    main()
