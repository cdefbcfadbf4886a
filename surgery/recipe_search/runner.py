"""``surgery.search``: from a model, data, a runtime and a budget to a chosen recipe, measured.

Optuna's TPE sampler (multi-objective: the objective's cost ratio down, accuracy up; the budgets as
its constraints) proposes candidates from the space the installed methods declare
(:mod:`surgery.recipe_search.space`); each is measured, never predicted (:mod:`surgery.recipe_search.trial`). The
training-free methods alone, at each declared value, go first; then pairs of the points on their
front whose methods compose (:meth:`Space.compositions`); then the sampler, seeded per trial
(so a resumed search proposes what the uninterrupted one would have). Methods that need recovery
are fine-tuned briefly (:mod:`~surgery.recipe_search.recovering`, ``recover_epochs``, distillation from the original, optionally LoRA) only
when their measured cost is within budget and no measured point already holds the original's
accuracy at a lower cost. The search split is never trained on; the test split is measured once,
for the pick and the original, with paired statistics.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from torch import nn

from surgery.checkpoint.loading import load
from surgery.errors import ConfigError
from surgery.evaluation.measure import image_side
from surgery.recipe_search import report
from surgery.recipe_search.cache import Cache, machine, model_digest, tensor_digest
from surgery.recipe_search.data import resolve
from surgery.recipe_search.finish import rebuild, summarize
from surgery.recipe_search.loop import run_trials
from surgery.recipe_search.payoff import PAYS_OFF, gate
from surgery.recipe_search.recovering import lora_options, plain, recovery_for
from surgery.recipe_search.report import Budget
from surgery.recipe_search.runtimes import check_runtime
from surgery.recipe_search.space import Space
from surgery.recipe_search.trial import Bench


@dataclasses.dataclass
class SearchResult:
    """What a search found: every candidate's record, the front, the pick (None when nothing fits the
    budget; ``message`` then names the closest point), its model, and its test figures."""

    original: dict[str, Any]
    candidates: list[dict[str, Any]]
    front: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    message: str
    model: nn.Module | None
    test: dict[str, Any] | None
    summary: dict[str, Any]


def search(
    model: Any,
    data: Any = "digits",
    *,
    runtime: str = "torch",
    latency: float | None = None,
    max_drop: float = 1.0,
    objective: str = "latency",
    size: float | None = None,
    flops: float | None = None,
    batch_size: int = 1,
    image_size: int | None = None,
    trials: int = 40,
    time_budget: float | None = None,
    recover_epochs: int = 0,
    lora: Any = None,
    recovery: dict[str, Any] | None = None,
    train_images: int | None = 6000,
    max_steps: int = 2,
    include: list[str] | None = None,
    exclude: list[str] = (),
    seed: int = 0,
    output: str | Path | None = None,
    repeats: int = 7,
    min_speedup: float | None = PAYS_OFF,
    progress: bool = True,
    log=print,
) -> SearchResult:
    """Search the installed methods for the recipe that meets the budget on ``runtime``.

    ``model``: a saved folder (its image processor reads ``data`` by name) or a model. ``latency``,
    ``size``, ``flops``: budgets as ratios to the original; ``max_drop``: accuracy points the pick may
    lose on the search split. ``objective``: the cost the front trades against accuracy. ``trials``
    and ``time_budget`` (minutes) bound the search. Where latency matters (the objective, or a latency
    budget), a method whose fastest declared point is below ``min_speedup`` times the original's speed
    on ``runtime`` is left out (:mod:`~surgery.recipe_search.payoff`; None: every method is searched). ``output``: where the chosen model, ``search.json``,
    ``search.md``, the plot and the resumable cache go (None: nothing is written).
    """
    check_runtime(runtime)
    budget = Budget(objective, latency, size, flops, max_drop)
    for name, value, low in (
        ("trials", trials, 1),
        ("batch_size", batch_size, 1),
        ("repeats", repeats, 1),
        ("max_steps", max_steps, 1),
    ):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"search: '{name}' got {value!r}; allowed: an integer >= {low}")
    if min_speedup is not None and (
        isinstance(min_speedup, bool) or not isinstance(min_speedup, (int, float)) or min_speedup < 0
    ):
        raise ConfigError(
            f"search: 'min_speedup' got {min_speedup!r}; allowed: a speed-up >= 0 (1.05: a method must be 5 % "
            "faster than the original at its fastest point to be searched), or None to search every method"
        )
    if recover_epochs < 0:
        raise ConfigError(
            f"search: 'recover_epochs' got {recover_epochs!r}; allowed: an integer >= 0 (0: no recovery)"
        )
    lora = lora_options(lora, recover_epochs)
    folder = Path(model) if isinstance(model, (str, Path)) else None
    original = load(folder) if folder is not None else copy.deepcopy(model)
    original.eval()
    side = image_side(original.config)
    if image_size is not None and image_size != side:
        raise ConfigError(
            f"search: 'image_size' got {image_size}, but the model is built for {side} px (exports fix the "
            f"image size and the position embeddings); search at {side}, or resize the model first"
        )
    chosen_data = resolve(data, folder, original.config, train_images)
    if recover_epochs and chosen_data.train is None:
        raise ConfigError("search: recover_epochs needs a 'train' split in the data to recover on; the data has none")
    space = Space.build(original, max_steps, include, exclude)
    settings = {
        "runtime": runtime,
        "objective": objective,
        "batch_size": batch_size,
        "image_size": side,
        "trials": trials,
        "time_budget_minutes": time_budget,
        "recover_epochs": recover_epochs,
        "lora": plain(lora),
        "recovery": recovery or {},
        "max_steps": max_steps,
        "seed": seed,
        "repeats": repeats,
        "min_speedup": min_speedup,
    }
    fingerprint = {
        "model": model_digest(original),
        "data": tensor_digest(*chosen_data.search),
        "runtime": runtime,
        "batch_size": batch_size,
        "machine": machine(),
        "space": space.describe(),
        "recovery": [recover_epochs, plain(lora), recovery or {}, train_images],
    }
    output = Path(output) if output is not None else None
    cache = Cache(output, fingerprint, log)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="surgery-search-") as tmp:
        latency_matters = objective == "latency" or latency is not None
        bench = Bench(
            original, runtime, chosen_data, batch_size, Path(tmp), repeats, seed, drop_slower=latency_matters
        )
        cache.original = bench.original_record()
        probes = {}
        if latency_matters and min_speedup:
            space, probes = gate(space, cache, bench, min_speedup, log)
        recovery_fn = recovery_for(bench, recover_epochs, lora, recovery) if recover_epochs else None
        records = run_trials(space, cache, bench, budget, trials, time_budget, recovery_fn, seed, progress, log)
        summary = summarize(space, cache, bench, budget, settings, chosen_data, started, probes)
        chosen = summary["chosen"]
        picked, test = None, None
        if chosen is not None:
            picked, test = rebuild(chosen, original, bench, chosen_data, space, recover_epochs, lora, recovery, log)
            summary["test"] = test
    result = SearchResult(
        cache.original, records, report.front(records, objective), chosen, summary["message"], picked, test, summary
    )
    if output is not None:
        from surgery.recipe_search.outputs import write_outputs

        write_outputs(output, result, folder, chosen_data)
    log(summary["message"])
    return result
