"""Figures of a saved model: parameters, checkpoint size, FLOPs, latency, accuracy on a dataset.

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

from surgery.core.history import portable_source

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
    from surgery.checkpoint.files import check_readable

    parameters = 0
    for file in files:
        check_readable(file)
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                count = 1
                for dim in handle.get_slice(name).get_shape():
                    count *= dim
                parameters += count
    return {"parameters": parameters, "checkpoint_mb": sum(f.stat().st_size for f in files) / 1e6}


def runtime_figures(model: torch.nn.Module, repeats: int = 10) -> dict[str, Any]:
    """GFLOPs and median latency of one image at the model's image size (CPU, eval mode)."""
    from surgery.evaluation.flops import model_flops

    config = model.config
    size = image_side(config)
    pixels = torch.randn(1, config.num_channels, size, size)
    model.eval()
    flops = model_flops(model, pixels)
    with torch.no_grad():  # not inference_mode: see surgery.evaluation.accuracy
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


DIGITS_DESCRIPTION = "sklearn digits, 360 test images (stratified 20%, seed 0)"
DIGITS_VALIDATION = "sklearn digits, 288 validation images (stratified, seed 0)"


def describe_data(source: str, split: str, count: int) -> str:
    """How the accuracy figure was measured, for the card."""
    if source == "digits" and split in ("test", "validation"):
        return DIGITS_DESCRIPTION if split == "test" else DIGITS_VALIDATION
    if source == "shapes":
        return f"surgery's shapes task (count the plus signs, generated with seed 0), {count} {split} images"
    return f"{portable_source(source)}, split '{split}', {count} images"  # a local folder by its name, never its path


def dataset_accuracy(
    folder: str | Path, source: str = "digits", split: str = "test", batch_size: int = 256
) -> dict[str, Any]:
    """Top-1 accuracy of the saved model on ``split`` of ``source`` ("digits", an imagefolder or a Hub
    dataset id), through the folder's image processor and the ``evaluate`` accuracy metric."""
    from surgery.checkpoint.loading import load
    from surgery.data.imagesets import batches, load_images
    from surgery.data.processor import load_processor
    from surgery.evaluation.accuracy import loader_accuracy

    model = load(folder)
    data = load_images(source, split)
    processor = load_processor(folder)
    accuracy = loader_accuracy(model, batches(data, model.config, processor, batch_size))
    return {"accuracy": accuracy, "dataset": describe_data(source, split, len(data))}


def record(folder: str | Path, figures: dict[str, Any]) -> Path:
    """Merge ``figures`` into ``folder/surgery_results.json`` (other keys are kept)."""
    path = Path(folder) / RESULTS_FILE
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(figures)
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return path
