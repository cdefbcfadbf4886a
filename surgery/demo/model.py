"""The built-in models: a classifier per built-in task (:mod:`surgery.data.tasks`), built once and cached.

``build_task_model`` trains any architecture of :mod:`surgery.demo.zoo` on a task's train split and
saves a normal transformers folder with its image processor and ``eval_results.json`` (test
accuracy). ``default_model`` returns the cached folder, copying the shipped weights or building it on
first use. The tasks:

- ``digits`` (the default): scikit-learn's digits, 8x8 upsampled to 32x32 RGB, patch 4 (64 patch
  tokens plus cls), a ViT of 4 blocks and width 64; about a minute on 2 CPU cores.
- ``shapes`` (the proving ground, :mod:`surgery.data.shapes`): count the plus signs in the left half
  among decoys and look-alikes at 64x64, patch 8 (64 patch tokens plus cls), a ViT of 6 blocks and
  width 128 (DeiT-Tiny-like); about 20 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from surgery.checkpoint.saving import save
from surgery.data.digits import encode
from surgery.data.tasks import DEFAULT_TASK, task
from surgery.demo.zoo import build_model, image_processor
from surgery.evaluation.accuracy import accuracy

EVAL_FILE = "eval_results.json"
SHIPPED = Path(__file__).parent / "assets"
SHIPPED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", EVAL_FILE)
DEFAULT_ARCH = "vit"
# how each task's model is built and trained (train_classifier's options); chosen on the validation split
RECIPES = {
    "digits": {"size": "demo", "patch_size": 4, "epochs": 30, "batch_size": 32, "lr": 3e-3, "warmup": 0.3},
    "shapes": {"size": "proving", "patch_size": 8, "epochs": 6, "batch_size": 64, "lr": 1e-3, "warmup": 0.05},
}


def cache_dir() -> Path:
    """``$SURGERY_HOME`` or ``~/.cache/surgery``."""
    return Path(os.environ.get("SURGERY_HOME") or Path.home() / ".cache" / "surgery")


def default_model(
    arch: str = DEFAULT_ARCH, rebuild: bool = False, progress: bool = True, task_name: str = DEFAULT_TASK
) -> Path:
    """The folder of the cached ``task_name`` model for ``arch``.

    The ViTs ship with the package (``surgery/demo/assets/<task>-vit``, trained by
    :func:`build_task_model` with the task's recipe), so every machine starts from the same weights:
    training results differ between CPUs (AVX2, AVX-512, AMX round differently). Other
    architectures, and ``rebuild=True``, train here.
    """
    task(task_name)  # a clear error for an unknown task
    folder = cache_dir() / "models" / f"{task_name}-{arch}"
    shipped = SHIPPED / f"{task_name}-{arch}"
    if (folder / EVAL_FILE).exists() and _stale(folder):
        shutil.rmtree(folder)
    if not rebuild and not (folder / EVAL_FILE).exists() and (shipped / EVAL_FILE).exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        for name in SHIPPED_FILES:
            shutil.copyfile(shipped / name, staging / name)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    elif rebuild or not (folder / EVAL_FILE).exists():
        build_task_model(folder, task_name, arch=arch, progress=progress)
    return folder


def _stale(folder: Path) -> bool:
    """A cached model trained before the train/validation/test split (on the 1437 digits that now
    include the validation split) is replaced."""
    try:
        cached = json.loads((folder / EVAL_FILE).read_text())
    except (OSError, ValueError):
        return True
    return "validation" not in str(cached.get("split", "validation"))


def build_digits_model(
    out_dir: str | Path,
    arch: str = DEFAULT_ARCH,
    size: str = "demo",
    epochs: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train an ``arch`` classifier on the digits, save it to ``out_dir``, return its eval results."""
    return build_task_model(out_dir, "digits", arch, size=size, epochs=epochs, seed=seed, progress=progress)


def build_task_model(
    out_dir: str | Path,
    task_name: str = DEFAULT_TASK,
    arch: str = DEFAULT_ARCH,
    size: str | None = None,
    epochs: int | None = None,
    seed: int = 0,
    progress: bool = True,
    limit: int | None = None,
    **config: Any,
) -> dict[str, Any]:
    """Train an ``arch`` classifier on ``task_name``'s train split (its first ``limit`` images when
    given) with the task's recipe, save it to ``out_dir``, return its eval results (test accuracy).
    ``config``: model config values over the recipe's (``patch_size=4, window_size=8``)."""
    out_dir = Path(out_dir)
    chosen = task(task_name)
    recipe = {**RECIPES[task_name], **({"size": size} if size else {}), **({"epochs": epochs} if epochs else {})}
    processor = image_processor(chosen.image_size)
    splits = {name: chosen.split(name, limit if name == "train" else None) for name in ("train", "validation", "test")}
    x_train, y_train = encode(splits["train"], processor)
    x_test, y_test = encode(splits["test"], processor)
    model = build_model(
        arch,
        recipe["size"],
        image_size=chosen.image_size,
        seed=seed,
        labels=chosen.labels,
        **{"patch_size": recipe["patch_size"], **config},
    )
    started = time.perf_counter()
    train_classifier(
        model,
        x_train,
        y_train,
        epochs=recipe["epochs"],
        batch_size=recipe["batch_size"],
        lr=recipe["lr"],
        warmup=recipe["warmup"],
        seed=seed,
        progress=progress,
        description=f"training {task_name} model",
    )
    seconds = round(time.perf_counter() - started, 1)
    sizes = f"{len(y_train)} train / {len(splits['validation'])} validation / {len(y_test)} test"
    results = {
        "accuracy": accuracy(model, x_test, y_test),
        "validation_accuracy": accuracy(model, *encode(splits["validation"], processor)),
        "task": task_name,
        "dataset": chosen.description,
        "split": ("stratified, seed 0: " if task_name == "digits" else "generated, seed 0: ") + sizes,
        "architecture": arch,
        "epochs": recipe["epochs"],
        "train_seconds": seconds,
    }
    save(model, out_dir, processor=processor)
    (out_dir / EVAL_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results


def train_classifier(
    model: nn.Module,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    warmup: float = 0.3,
    seed: int = 0,
    progress: bool = True,
    description: str = "training digits model",
) -> None:
    """Cross-entropy training with AdamW and a one-cycle schedule (``warmup``: the share of steps rising to ``lr``)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = -(-len(labels) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=warmup
    )
    model.train()
    bar = tqdm(total=epochs * steps_per_epoch, desc=description, unit="step", disable=not progress)
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for batch in order.split(batch_size):
            loss = nn.functional.cross_entropy(model(pixel_values=pixel_values[batch]).logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
        bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
