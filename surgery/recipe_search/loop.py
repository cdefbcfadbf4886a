"""The search's trial loop: Optuna's TPE sampler over the space, after the starting points and their compositions,
each candidate measured once (a resumed cache replays its trials into the study first, in order)."""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable

from torch import nn
from tqdm.auto import tqdm

from surgery.recipe_search import report
from surgery.recipe_search.cache import Cache
from surgery.recipe_search.report import Budget
from surgery.recipe_search.space import Space
from surgery.recipe_search.trial import Bench


def run_trials(
    space: Space,
    cache: Cache,
    bench: Bench,
    budget: Budget,
    trials: int,
    time_budget: float | None,
    recovery_fn: Callable[[nn.Module], dict[str, Any]] | None,
    seed: int,
    progress: bool,
    log,
) -> list[dict[str, Any]]:
    """Measure candidates until ``trials`` are spent, the space is exhausted or ``time_budget`` (minutes) is over;
    ``recovery_fn`` (None: recovery is off) fine-tunes a candidate worth recovering. Returns this space's records."""
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
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=space.distributions(params),
                values=values,
                state=optuna.trial.TrialState.COMPLETE if values else optuna.trial.TrialState.FAIL,
                constraints=budget.violations(record, original_accuracy) if values else None,
            )
        )
    starting = space.starting_points()
    for candidate in starting:
        if candidate.key not in cache.measured:
            study.enqueue_trial(space.params(candidate), skip_if_exists=False)
    composed = False

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
    bar = tqdm(
        total=trials,
        initial=min(len(cache.trials), trials),
        desc=f"search ({bench.runtime})",
        unit="trial",
        disable=not progress,
    )
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
            study.sampler = optuna.samplers.TPESampler(
                seed=seed * 100_003 + len(cache.trials), n_startup_trials=10, group=True, multivariate=True
            )
        trial = study.ask()
        candidate = space.suggest(trial)
        if candidate.key in cache.measured:
            record = cache.measured[candidate.key]
            cache.add(candidate.key)
        else:
            record, _ = bench.measure(candidate, recovery_fn, worth_recovering)
            cache.add(candidate.key, record)
        values = tell_values(record)
        for name, value in (budget.violations(record, original_accuracy) if values else {}).items():
            trial.set_constraint(name, value)
        study.tell(trial, values, state=None if values else optuna.trial.TrialState.FAIL)
        bar.update()
        best = report.pick(list(cache.measured.values()), budget, original_accuracy)
        elapsed = time.perf_counter() - started
        left = "" if time_budget is None else f", {max(0.0, time_budget - elapsed / 60):.1f} min left"
        bar.set_postfix_str(
            (f"best {best['label'][:40]} {best[cost]:.2f}x {best['accuracy']:.1%}" if best else "none within budget")
            + left
        )
    bar.close()
    return searched(space, cache)


def searched(space: Space, cache: Cache) -> list[dict[str, Any]]:
    """The measured candidates of this space (a resumed cache may hold those of a method left out since)."""
    return [r for r in cache.measured.values() if space.combo_of(r["steps"]) in space.combos]
