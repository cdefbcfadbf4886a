"""Figures of a saved model: parameters, checkpoint size, FLOPs, latency, accuracy on the digits.

``surgery bench`` and ``surgery eval`` merge them into ``surgery_results.json`` in the model
folder, which ``surgery card`` reads.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

RESULTS_FILE = "surgery_results.json"


def image_side(config) -> int:
    """The (square) input size of a transformers vision config, whose ``image_size`` is an int or a pair."""
    return config.image_size if isinstance(config.image_size, int) else config.image_size[0]


def checkpoint_figures(folder: str | Path) -> dict[str, float]:
    """Parameters (read from the safetensors headers, no loading) and checkpoint size in MB."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return {}
    parameters = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                count = 1
                for dim in handle.get_slice(name).get_shape():
                    count *= dim
                parameters += count
    return {"parameters": parameters, "checkpoint_mb": sum(f.stat().st_size for f in files) / 1e6}


def runtime_figures(model: torch.nn.Module, repeats: int = 10) -> dict[str, Any]:
    """GFLOPs and median latency of one image at the model's image size (CPU, eval mode)."""
    from surgery.flops import count_flops

    config = model.config
    size = image_side(config)
    pixels = torch.randn(1, config.num_channels, size, size)
    model.eval()
    with torch.inference_mode():
        flops = count_flops(lambda: model(pixel_values=pixels))
        model(pixel_values=pixels)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(pixel_values=pixels)
            times.append(time.perf_counter() - start)
    return {
        "gflops": flops / 1e9,
        "latency_ms": statistics.median(times) * 1000,
        "measured_on": f"batch 1, {size}x{size} px, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, median of {repeats}",
    }


def digits_accuracy(folder: str | Path) -> dict[str, Any]:
    """Top-1 accuracy on the built-in digits test split, through the folder's image processor."""
    from surgery.data import digits_for
    from surgery.evaluation import accuracy
    from surgery.loading import load

    pixels, labels = digits_for(folder)
    return {"accuracy": accuracy(load(folder), pixels, labels), "dataset": f"sklearn digits, {len(labels)} test images (stratified 20%, seed 0)"}


def record(folder: str | Path, figures: dict[str, Any]) -> Path:
    """Merge ``figures`` into ``folder/surgery_results.json`` (other keys are kept)."""
    path = Path(folder) / RESULTS_FILE
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(figures)
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return path
