"""The search's resumable cache: every trial in order and every candidate measured, in one JSON file.

It is written after each trial (atomically: a killed search leaves the last complete file). A search
started again on the same output folder replays the cached trials into the optimiser, in order, and
measures nothing it already has; the optimiser's seed is derived per trial, so the resumed search
proposes what the uninterrupted one would have. Where latency matters, it also keeps each method's
speed at its fastest declared point (whether the method pays off on the runtime). The cache holds a fingerprint of what the
measurements depend on: the model's weights, the data, the runtime, batch and image size, the
machine (CPU, threads, library versions) and the space (methods, options, plugin versions). When any
of them changed, the cache is set aside (``search_cache.stale.json``) and the search says which.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from surgery._version import __version__

CACHE_FILE = "search_cache.json"
STALE_FILE = "search_cache.stale.json"
FORMAT = 1


def tensor_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def model_digest(model: torch.nn.Module) -> str:
    state = model.state_dict()
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(tensor_digest(*(state[name] for name in sorted(state))).encode())
    return digest.hexdigest()[:16]


def machine() -> dict[str, Any]:
    """What timings depend on besides the models: the CPU, torch's threads and the runtimes' versions."""
    from surgery.publish.export import cpu_description

    versions = {"torch": torch.__version__, "surgery": __version__, "python": platform.python_version()}
    for name in ("transformers", "onnxruntime", "openvino"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return {**cpu_description(), "threads": torch.get_num_threads(), "versions": versions}


class Cache:
    """The trials (in order) and the measurements (by candidate key) of one search."""

    def __init__(self, folder: Path | None, fingerprint: dict[str, Any], log=print):
        self.path = None if folder is None else Path(folder) / CACHE_FILE
        self.fingerprint = fingerprint
        self.trials: list[str] = []
        self.measured: dict[str, dict[str, Any]] = {}
        self.probes: dict[str, dict[str, Any]] = {}  # method -> its fastest point's speed (whether it pays off)
        self.original: dict[str, Any] | None = None
        if self.path is None or not self.path.exists():
            return
        try:
            saved = json.loads(self.path.read_text())
        except ValueError:
            saved = {}
        changed = sorted(
            k
            for k in set(fingerprint) | set(saved.get("fingerprint", {}))
            if saved.get("fingerprint", {}).get(k) != fingerprint.get(k)
        )
        if saved.get("format") != FORMAT or changed:
            os.replace(self.path, self.path.with_name(STALE_FILE))
            log(
                f"search: the cache in {self.path.parent} was made for another "
                f"{', '.join(changed) if changed else 'cache format'}; it is set aside as {STALE_FILE} and the search starts over"
            )
            return
        self.trials, self.measured, self.original = saved["trials"], saved["measured"], saved.get("original")
        self.probes = saved.get("probes", {})
        log(
            f"search: resuming from {self.path}: {len(self.trials)} trial(s), {len(self.measured)} candidate(s) measured"
        )

    def add(self, key: str, record: dict[str, Any] | None = None) -> None:
        self.trials.append(key)
        if record is not None:
            self.measured[key] = record
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{CACHE_FILE}.tmp")
        staging.write_text(
            json.dumps(
                {
                    "format": FORMAT,
                    "fingerprint": self.fingerprint,
                    "original": self.original,
                    "trials": self.trials,
                    "measured": self.measured,
                    "probes": self.probes,
                },
                indent=1,
            )
            + "\n"
        )
        os.replace(staging, self.path)
