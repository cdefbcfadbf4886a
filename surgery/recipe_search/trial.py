"""Measuring one candidate: apply it to a copy of the original, run it in the target runtime beside
the original, and (for methods that need it) recover it briefly when it can reach the front.

A record holds the candidate's recipe, its status, its cost as ratios to the original (latency in the
runtime, FLOPs from torch's counter at batch 1, size of the saved checkpoint), its accuracy on the
search split with the right/wrong answer of every image (packed, for paired statistics), the
export's parity figure, and the seconds it took. Statuses:

- ``ok``: measured;
- ``slower``: slower than the original in the target runtime (kept in the record, off the front);
  only when latency matters (the objective, or a latency budget): a search for size or FLOPs alone
  keeps slower candidates, and records their latency;
- ``refused``: the host refused the recipe on this model (its reason);
- ``export failed``: the runtime could not take it (its reason);
- ``not recovered``: it needs recovery and did not get it (recovery off, over budget, or a measured
  point already dominates it), so its accuracy is the training-free one;
- ``recovery failed``: recovery raised (its reason).
"""

from __future__ import annotations

import base64
import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from surgery.core.apply import apply
from surgery.core.host import get_host
from surgery.errors import SurgeryError
from surgery.evaluation.flops import model_flops
from surgery.evaluation.measure import image_side
from surgery.evaluation.timing import time_side_by_side
from surgery.recipe_search.runtimes import compile_for, correct, size_bytes
from surgery.recipe_search.space import Candidate


def pack(hits: np.ndarray) -> str:
    return base64.b64encode(np.packbits(hits.astype(bool)).tobytes()).decode()


def unpack(text: str, count: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))[:count].astype(bool)


class Bench:
    """The original model measured once in the target runtime, and what every candidate is measured with."""

    def __init__(
        self,
        original: torch.nn.Module,
        runtime: str,
        data: Any,
        batch_size: int,
        workdir: Path,
        repeats: int = 7,
        seed: int = 0,
        drop_slower: bool = True,
    ):
        self.original, self.runtime, self.data, self.repeats = original, runtime, data, repeats
        self.drop_slower = drop_slower
        self.workdir = workdir
        config = original.config
        side = image_side(config)
        generator = torch.Generator().manual_seed(seed)
        self.timing_batch = torch.randn(batch_size, config.num_channels, side, side, generator=generator).numpy()
        self.run_original, _ = compile_for(original, runtime, workdir / "original")
        self.flops = model_flops(original, torch.from_numpy(self.timing_batch[:1]))
        self.bytes = size_bytes(original, workdir / "size")
        self.correct = correct(self.run_original, *data.search)
        self.accuracy = float(self.correct.mean())

    def original_record(self) -> dict[str, Any]:
        return {
            "label": "original",
            "steps": [],
            "status": "ok",
            "accuracy": self.accuracy,
            "correct": pack(self.correct),
            "latency_ratio": 1.0,
            "flops_ratio": 1.0,
            "size_ratio": 1.0,
            "flops": self.flops,
            "size_mb": self.bytes / 1e6,
        }

    def rewritten(self, candidate: Candidate) -> torch.nn.Module:
        """A copy of the original with ``candidate`` applied (calibrated where a step needs data), in eval mode."""
        model = copy.deepcopy(self.original)
        methods = [(get_host().methods[plugin], dict(options)) for plugin, options in candidate.steps]
        needs_data = any(m.needs_data is not None and m.needs_data(m.make_config(o)) for m, o in methods)
        apply(model, candidate.specs(), calibration=self.data.calibration() if needs_data else None)
        return model.eval()

    def speed(self, candidate: Candidate) -> dict[str, Any]:
        """The candidate's speed against the original in the runtime (the original's time over its own,
        timed in turns), and nothing else: whether a method pays off here. ``{"speed", "latency_ms",
        "latency_ms_original"}``, or ``{"reason"}`` when the host or the runtime refuses it."""
        try:
            run, _ = compile_for(self.rewritten(candidate), self.runtime, self.workdir / "probe")
        except SurgeryError as error:
            return {"reason": " ".join(str(error).split())[:400]}
        x = self.timing_batch
        timed = time_side_by_side(
            {"original": lambda: self.run_original(x), "candidate": lambda: run(x)}, repeats=self.repeats
        )
        return {
            "speed": timed["original"] / timed["candidate"],
            "latency_ms": timed["candidate"] * 1e3,
            "latency_ms_original": timed["original"] * 1e3,
        }

    def measure(
        self,
        candidate: Candidate,
        recovery: Callable[[torch.nn.Module], dict[str, Any]] | None,
        worth_recovering: Callable[[dict[str, Any]], str | None],
    ) -> tuple[dict[str, Any], torch.nn.Module | None]:
        """The candidate's record, and its model when it was measured."""
        started = time.perf_counter()
        record: dict[str, Any] = {
            "label": candidate.label,
            "steps": candidate.specs(),
            "needs_recovery": candidate.needs_recovery,
            "versions": {p: get_host().methods[p].version for p, _ in candidate.steps},
        }
        try:  # options that refuse each other (quantize's int8 attention with weight-only linears): refused
            model = self.rewritten(candidate)
        except SurgeryError as error:
            return _done(record, started, "refused", error), None
        record["flops_ratio"] = model_flops(model, torch.from_numpy(self.timing_batch[:1])) / self.flops
        size = size_bytes(model, self.workdir / "size")
        record["size_ratio"], record["size_mb"] = size / self.bytes, size / 1e6
        try:
            run, info = compile_for(model, self.runtime, self.workdir / "candidate")
        except SurgeryError as error:
            return _done(record, started, "export failed", error), None
        record.update(info)
        x = self.timing_batch
        timed = time_side_by_side(
            {"original": lambda: self.run_original(x), "candidate": lambda: run(x)}, repeats=self.repeats
        )
        record["latency_ms"], record["latency_ms_original"] = timed["candidate"] * 1e3, timed["original"] * 1e3
        record["latency_ratio"] = timed["candidate"] / timed["original"]
        hits = correct(run, *self.data.search)
        record["accuracy"], record["correct"] = float(hits.mean()), pack(hits)
        status = "slower" if self.drop_slower and record["latency_ratio"] > 1.0 else "ok"
        if candidate.needs_recovery:
            why_not = worth_recovering(record) if status == "ok" else "slower than the original"
            if why_not is not None:
                record["reason"] = why_not
                return _done(record, started, "not recovered" if status == "ok" else status), model
            record["accuracy_before_recovery"] = record["accuracy"]
            try:
                record["recovery"] = recovery(model)
                run, _ = compile_for(model, self.runtime, self.workdir / "candidate")
            except SurgeryError as error:
                return _done(record, started, "recovery failed", error), None
            hits = correct(run, *self.data.search)
            record["accuracy"], record["correct"], record["recovered"] = float(hits.mean()), pack(hits), True
        return _done(record, started, status), model


def _done(record: dict[str, Any], started: float, status: str, error: Exception | None = None) -> dict[str, Any]:
    record["status"] = status
    if error is not None:
        record["reason"] = " ".join(str(error).split())[:400]
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record
