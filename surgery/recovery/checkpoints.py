"""Recovery checkpoints that hold data only: safetensors and JSON that surgery wrote itself.

accelerate's ``save_state``/``load_state`` pickle the optimizer, the random states and any
registered object, and reload some of them with ``weights_only=False``, so a crafted file in a
checkpoint folder runs code on resume. A surgery checkpoint ``epoch-N/`` instead holds:

- ``model.safetensors``: the student's state dict;
- ``optimizer.safetensors`` + ``optimizer.json``: AdamW's tensors, and its groups and scalars;
- ``schedule.json``: the learning-rate schedule's counters (its lambdas are code, rebuilt from the
  config); ``scaler.json`` when fp16 training has a gradient scaler;
- ``rng-R.safetensors`` + ``rng-R.json``: each process's torch, CUDA, numpy and Python random states;
- ``manifest.json``, written last: the format, the epoch, the process count and the SHA-256 of
  every other file.

:func:`load_checkpoint` refuses a folder with any other file (a pickle included), a file whose hash
differs, or a missing manifest, with one line that says why. A checkpoint is written into
``.epoch-N.partial`` and renamed when complete, so an interrupted save never looks like a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from surgery.errors import CheckpointError

CHECKPOINT = re.compile(r"^epoch-(\d+)$")

FORMAT = "surgery-recovery-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"


def save_checkpoint(accelerator, model: torch.nn.Module, optimizer, schedule, epoch: int, folder: Path) -> Path:
    """Write ``folder/epoch-{epoch}`` from every process (each adds its random state)."""
    final = Path(folder) / f"epoch-{epoch}"
    partial = Path(folder) / f".epoch-{epoch}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    tensors, values = _rng_state()
    save_file(tensors, str(partial / f"rng-{rank}.safetensors"))
    _write_json(partial / f"rng-{rank}.json", values)
    if accelerator.is_main_process:
        state = accelerator.unwrap_model(model).state_dict()
        save_file(
            {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(partial / "model.safetensors")
        )
        tensors, groups = _split_optimizer(optimizer.state_dict())
        save_file(tensors, str(partial / "optimizer.safetensors"))
        _write_json(partial / "optimizer.json", groups)
        _write_json(partial / "schedule.json", schedule.state_dict())
        if getattr(accelerator, "scaler", None) is not None:
            _write_json(partial / "scaler.json", accelerator.scaler.state_dict())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.name: _sha256(p) for p in sorted(partial.iterdir())}
        _write_json(
            partial / MANIFEST,
            {
                "format": FORMAT,
                "version": VERSION,
                "epoch": epoch,
                "processes": accelerator.num_processes,
                "files": files,
            },
        )
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
    accelerator.wait_for_everyone()
    return final


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the checkpoint ``path``, after checking that every file is as surgery wrote it."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{path} is not a surgery recovery checkpoint (no {MANIFEST}); surgery resumes only from "
            "checkpoints it wrote itself (older ones were accelerate pickles: start the run again)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{manifest_path} is not valid JSON ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CheckpointError(f"{manifest_path} is not a version-{VERSION} {FORMAT} manifest")
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("epoch"), int) or manifest["epoch"] < 1:
        raise CheckpointError(f"{manifest_path} lacks its file list or epoch")
    present = {p.name for p in path.iterdir()} - {MANIFEST}
    strangers = sorted(present - set(files))
    if strangers:
        raise CheckpointError(
            f"{path} holds files surgery did not write ({', '.join(strangers[:5])}); refusing to resume "
            "from it (only safetensors and JSON listed in its manifest are read)"
        )
    for name, digest in files.items():
        if not isinstance(name, str) or "/" in name or "\\" in name or not name.endswith((".safetensors", ".json")):
            raise CheckpointError(
                f"{manifest_path} lists {name!r}, which is not a safetensors or JSON file of the folder"
            )
        if name not in present:
            raise CheckpointError(f"{path} is incomplete: {name} is missing")
        if _sha256(path / name) != digest:
            raise CheckpointError(
                f"{path / name} was changed after surgery wrote it (SHA-256 differs); refusing to resume"
            )
    return manifest


def load_checkpoint(accelerator, model: torch.nn.Module, optimizer, schedule, path: Path) -> int:
    """Restore the model, optimizer, schedule and this process's random state; return the epoch."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest.get("processes") != accelerator.num_processes:
        raise CheckpointError(
            f"{path} was written by {manifest.get('processes')} process(es) and this run has "
            f"{accelerator.num_processes}: resume with the same number"
        )
    try:
        accelerator.unwrap_model(model).load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
        optimizer.load_state_dict(
            _join_optimizer(
                load_file(str(path / "optimizer.safetensors")), json.loads((path / "optimizer.json").read_text())
            )
        )
        schedule.load_state_dict(json.loads((path / "schedule.json").read_text()))
        if (path / "scaler.json").exists() and getattr(accelerator, "scaler", None) is not None:
            accelerator.scaler.load_state_dict(json.loads((path / "scaler.json").read_text()))
        rank = accelerator.process_index
        _set_rng_state(
            load_file(str(path / f"rng-{rank}.safetensors")), json.loads((path / f"rng-{rank}.json").read_text())
        )
    except (RuntimeError, ValueError, KeyError, TypeError, OSError) as error:
        raise CheckpointError(
            f"{path} does not fit this run: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
        ) from error
    return manifest["epoch"]


# -- optimizer state as tensors + JSON -------------------------------------------------------------
def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in data.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in data["param_groups"]]
    return {"state": state, "param_groups": groups}


# -- random states ---------------------------------------------------------------------------------
def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    values = {
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    return tensors, values


def _set_rng_state(tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, position, has_gauss, cached = values["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss = values["python"]
    random.setstate((version, tuple(internal), gauss))


# -- files ------------------------------------------------------------------------------------------
def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The ``epoch-N`` folder with the highest N under ``folder``, or None."""
    folder = Path(folder)
    found = [(int(m.group(1)), p) for p in folder.glob("epoch-*") if (m := CHECKPOINT.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def prune(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` epoch-N checkpoints under ``folder``."""
    found = sorted((int(m.group(1)), p) for p in folder.glob("epoch-*") if (m := CHECKPOINT.match(p.name)))
    for _, path in found[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
