"""``surgery.search``: from a model, data, a runtime and a budget to a chosen recipe, measured.

Optuna's TPE sampler (multi-objective: the objective's cost ratio down, accuracy up; the budgets as
its constraints) proposes candidates from the space the installed methods declare
(:mod:`surgery.recipe_search.space`); each is measured, never predicted (:mod:`surgery.recipe_search.trial`). The
training-free methods alone, at each declared value, go first; then pairs of the points on their
front whose methods compose (:func:`_compositions`); then the sampler, seeded per trial
(so a resumed search proposes what the uninterrupted one would have). Methods that need recovery
are fine-tuned briefly (``recover_epochs``, distillation from the original, optionally LoRA) only
when their measured cost is within budget and no measured point already holds the original's
accuracy at a lower cost. The search split is never trained on; the test split is measured once,
for the pick and the original, with paired statistics.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from surgery.checkpoint.loading import load
from surgery.errors import ConfigError
from surgery.evaluation.measure import image_side
from surgery.evaluation.paired import bootstrap_difference, format_p, mcnemar
from surgery.recipe_search import report
from surgery.recipe_search.cache import Cache, machine, model_digest, tensor_digest
from surgery.recipe_search.data import resolve
from surgery.recipe_search.payoff import PAYS_OFF, gate
from surgery.recipe_search.report import Budget
from surgery.recipe_search.runtimes import check_runtime, compile_for, correct
from surgery.recipe_search.space import Space
from surgery.recipe_search.trial import Bench, unpack


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


def search(model: Any, data: Any = "digits", *, runtime: str = "torch", latency: float | None = None, max_drop: float = 1.0,
           objective: str = "latency", size: float | None = None, flops: float | None = None, batch_size: int = 1,
           image_size: int | None = None, trials: int = 40, time_budget: float | None = None, recover_epochs: int = 0,
           lora: Any = None, recovery: dict[str, Any] | None = None, train_images: int | None = 6000, max_steps: int = 2,
           include: list[str] | None = None, exclude: list[str] = (), seed: int = 0, output: str | Path | None = None,
           repeats: int = 7, min_speedup: float | None = PAYS_OFF, progress: bool = True, log=print) -> SearchResult:
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
    for name, value, low in (("trials", trials, 1), ("batch_size", batch_size, 1), ("repeats", repeats, 1), ("max_steps", max_steps, 1)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"search: '{name}' got {value!r}; allowed: an integer >= {low}")
    if min_speedup is not None and (isinstance(min_speedup, bool) or not isinstance(min_speedup, (int, float)) or min_speedup < 0):
        raise ConfigError(f"search: 'min_speedup' got {min_speedup!r}; allowed: a speed-up >= 0 (1.05: a method must be 5 % "
                          "faster than the original at its fastest point to be searched), or None to search every method")
    if recover_epochs < 0:
        raise ConfigError(f"search: 'recover_epochs' got {recover_epochs!r}; allowed: an integer >= 0 (0: no recovery)")
    lora = _lora_options(lora, recover_epochs)
    folder = Path(model) if isinstance(model, (str, Path)) else None
    original = load(folder) if folder is not None else copy.deepcopy(model)
    original.eval()
    side = image_side(original.config)
    if image_size is not None and image_size != side:
        raise ConfigError(f"search: 'image_size' got {image_size}, but the model is built for {side} px (exports fix the "
                          f"image size and the position embeddings); search at {side}, or resize the model first")
    chosen_data = resolve(data, folder, original.config, train_images)
    if recover_epochs and chosen_data.train is None:
        raise ConfigError("search: recover_epochs needs a 'train' split in the data to recover on; the data has none")
    space = Space.build(original, max_steps, include, exclude)
    settings = {"runtime": runtime, "objective": objective, "batch_size": batch_size, "image_size": side, "trials": trials,
                "time_budget_minutes": time_budget, "recover_epochs": recover_epochs, "lora": _plain(lora),
                "recovery": recovery or {}, "max_steps": max_steps, "seed": seed, "repeats": repeats,
                "min_speedup": min_speedup}
    fingerprint = {"model": model_digest(original), "data": tensor_digest(*chosen_data.search), "runtime": runtime,
                   "batch_size": batch_size, "machine": machine(), "space": space.describe(),
                   "recovery": [recover_epochs, _plain(lora), recovery or {}, train_images]}
    output = Path(output) if output is not None else None
    cache = Cache(output, fingerprint, log)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="surgery-search-") as tmp:
        latency_matters = objective == "latency" or latency is not None
        bench = Bench(original, runtime, chosen_data, batch_size, Path(tmp), repeats, seed, drop_slower=latency_matters)
        cache.original = bench.original_record()
        probes = {}
        if latency_matters and min_speedup:
            space, probes = gate(space, cache, bench, min_speedup, log)
        records = _run(space, cache, bench, budget, trials, time_budget, recover_epochs, lora, recovery, seed, progress, log)
        summary = _summary(space, cache, bench, budget, settings, chosen_data, started, probes)
        chosen = summary["chosen"]
        picked, test = None, None
        if chosen is not None:
            picked, test = _rebuild(chosen, original, bench, chosen_data, space, recover_epochs, lora, recovery, log)
            summary["test"] = test
    result = SearchResult(cache.original, records, report.front(records, objective), chosen, summary["message"], picked, test, summary)
    if output is not None:
        from surgery.recipe_search.outputs import write_outputs

        write_outputs(output, result, folder, chosen_data)
    log(summary["message"])
    return result


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str, dict)) else dataclasses.asdict(value)


def _lora_options(lora: Any, recover_epochs: int) -> dict[str, Any] | None:
    """``lora`` as LoRA options (any form ``surgery.recover`` takes), checked before anything is measured."""
    from surgery.recovery.lora import LoraOptions

    options = LoraOptions.parse(lora)
    if options is None:
        return None
    if not recover_epochs:
        raise ConfigError("search: 'lora' was given but 'recover_epochs' is 0, so nothing is recovered; "
                          "set recover_epochs (e.g. 2) or leave lora out")
    if not options.merge:
        raise ConfigError("search: 'lora' got merge=False; allowed: merge=True (the default). The search exports, times "
                          "and saves each candidate as one model, so the adapters are merged into its weights; keep "
                          "an adapter with `surgery recover --lora merge=false` on the chosen recipe")
    return options.to_dict()


def _recovery(bench: Bench, epochs: int, lora: Any, options: dict[str, Any] | None):
    def recover_model(model: nn.Module) -> dict[str, Any]:
        from surgery.recovery import recover

        result = recover(model, bench.original, bench.data.train, None, lora=lora, progress=False,
                         **{"epochs": epochs, **(options or {})})
        model.eval()
        return {"epochs": epochs, "seconds": round(result.seconds, 1), "lora": _plain(lora)}

    return recover_model


def _run(space: Space, cache: Cache, bench: Bench, budget: Budget, trials: int, time_budget: float | None,
         recover_epochs: int, lora: Any, recovery: dict[str, Any] | None, seed: int, progress: bool, log) -> list[dict[str, Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    original_accuracy = bench.accuracy
    study = optuna.create_study(directions=["minimize", "maximize"])
    cost = report.OBJECTIVES[budget.objective]

    def tell_values(record):
        if record.get(cost) is None or record.get("accuracy") is None:
            return None
        return [record[cost], record["accuracy"]]

    for key in cache.trials:  # replay, in order (a method left out since, as not paying off, stays out)
        record = cache.measured[key]
        if space.combo_of(record["steps"]) not in space.combos:
            continue
        candidate = space.from_steps(record["steps"])
        params = space.params(candidate)
        values = tell_values(record)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=space.distributions(params), values=values,
            state=optuna.trial.TrialState.COMPLETE if values else optuna.trial.TrialState.FAIL,
            constraints=budget.violations(record, original_accuracy) if values else None))
    starting = space.starting_points()
    for candidate in starting:
        if candidate.key not in cache.measured:
            study.enqueue_trial(space.params(candidate), skip_if_exists=False)
    composed = False
    recovery_fn = _recovery(bench, recover_epochs, lora, recovery) if recover_epochs else None

    def worth_recovering(record):
        if recovery_fn is None:
            return "recovery is off (recover_epochs=0)"
        over = [k for k, limit in budget.limits().items() if record[k] > limit]
        if over:
            return f"over budget before recovery ({', '.join(over)})"
        for other in cache.measured.values():
            if other.get("status") == "ok" and other[cost] <= record[cost] and other["accuracy"] >= original_accuracy:
                return f"{other['label']} already holds the original's accuracy at a lower cost"
        return None

    total = sum(space.combo_size(combo) for combo in space.combos)
    bar = tqdm(total=trials, initial=min(len(cache.trials), trials), desc=f"search ({bench.runtime})", unit="trial", disable=not progress)
    started = time.perf_counter()
    while len(cache.trials) < trials and len(cache.measured) < total:
        if time_budget is not None and time.perf_counter() - started > time_budget * 60:
            log(f"search: the time budget ({time_budget:g} min) is spent after {len(cache.trials)} trial(s)")
            break
        if not composed and all(c.key in cache.measured for c in starting):
            composed = True
            for candidate in space.compositions([cache.measured[c.key] for c in starting], budget.objective):
                if candidate.key not in cache.measured:
                    study.enqueue_trial(space.params(candidate), skip_if_exists=False)
        with warnings.catch_warnings():  # group and multivariate are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.sampler = optuna.samplers.TPESampler(seed=seed * 100_003 + len(cache.trials), n_startup_trials=10,
                                                       group=True, multivariate=True)
        trial = study.ask()
        candidate = space.suggest(trial)
        record = cache.measured.get(candidate.key)
        if record is None:
            record, _ = bench.measure(candidate, recovery_fn, worth_recovering)
            cache.add(candidate.key, record)
        else:
            cache.add(candidate.key)
        values = tell_values(record)
        for name, value in (budget.violations(record, original_accuracy) if values else {}).items():
            trial.set_constraint(name, value)
        study.tell(trial, values, state=None if values else optuna.trial.TrialState.FAIL)
        bar.update()
        best = report.pick(list(cache.measured.values()), budget, original_accuracy)
        elapsed = time.perf_counter() - started
        left = "" if time_budget is None else f", {max(0.0, time_budget - elapsed / 60):.1f} min left"
        bar.set_postfix_str((f"best {best['label'][:40]} {best[cost]:.2f}x {best['accuracy']:.1%}" if best else "none within budget") + left)
    bar.close()
    return _searched(space, cache)


def _searched(space: Space, cache: Cache) -> list[dict[str, Any]]:
    """The measured candidates of this space (a resumed cache may hold those of a method left out since)."""
    return [r for r in cache.measured.values() if space.combo_of(r["steps"]) in space.combos]


def _summary(space: Space, cache: Cache, bench: Bench, budget: Budget, settings: dict[str, Any], data, started: float,
             probes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    records = _searched(space, cache)
    accuracy = bench.accuracy
    chosen = report.pick(records, budget, accuracy)
    if not space.combos:
        message = (f"search: no method pays off on {bench.runtime} here: each one's fastest declared point ran below "
                   f"{settings['min_speedup']:g}x of the original's speed (search.json: pays_off), so nothing was searched")
    elif chosen is not None:
        message = f"search: picked {report.describe_point(chosen, accuracy)} (within {budget.describe()})"
    else:
        near = report.closest(records, budget, accuracy)
        message = (f"search: no candidate meets {budget.describe()}; the closest: "
                   + (report.describe_point(near, accuracy) if near else "none was measured"))
    statuses: dict[str, int] = {}
    for record in records:
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    return {"settings": settings, "budget": budget.describe(), "data": data.describe(), "space": space.describe(),
            "machine": cache.fingerprint["machine"], "original": cache.original, "candidates": records,
            "pays_off": {name: {k: v for k, v in probe.items() if k != "key"} for name, probe in probes.items()},
            "chosen": chosen, "message": message, "statuses": statuses, "trials": len(cache.trials),
            "seconds": round(time.perf_counter() - started, 1), "test": None}


def _rebuild(chosen: dict[str, Any], original: nn.Module, bench: Bench, data, space: Space, recover_epochs: int, lora: Any,
             recovery: dict[str, Any] | None, log) -> tuple[nn.Module, dict[str, Any] | None]:
    """The pick built again (recovered again, with the same seed), checked against its record, and
    its test accuracy beside the original's (once)."""
    candidate = space.from_steps(chosen["steps"])
    recovery_fn = _recovery(bench, recover_epochs, lora, recovery) if chosen.get("recovered") else None
    record, model = bench.measure(candidate, recovery_fn, lambda r: None)
    searched = unpack(chosen["correct"], len(data.search[1]))
    again = unpack(record["correct"], len(data.search[1])) if "correct" in record else None
    if again is None or (again != searched).any():
        log(f"search: note: the pick built again answers {0 if again is None else int((again != searched).sum())} search "
            "image(s) differently from when it was measured (recovery or kernels not bit-exact here)")
    if data.test is None:
        return model, None
    run, _ = compile_for(model, bench.runtime, bench.workdir / "pick")
    pick_hits, original_hits = correct(run, *data.test), correct(bench.run_original, *data.test)
    test = mcnemar(pick_hits, original_hits)
    return model, {"images": len(data.test[1]), "original": float(original_hits.mean()), "pick": float(pick_hits.mean()),
                   "difference": str(bootstrap_difference(pick_hits, original_hits)), "mcnemar_p": format_p(test.p_value),
                   "only_pick": test.only_a, "only_original": test.only_b}

