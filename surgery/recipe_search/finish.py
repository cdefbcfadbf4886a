"""The end of a search: its summary (the pick within the budget, or the closest point), and the pick built again,
checked against its record and measured once on the test split beside the original, with paired statistics."""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from surgery.evaluation.paired import bootstrap_difference, format_p, mcnemar
from surgery.recipe_search import report
from surgery.recipe_search.cache import Cache
from surgery.recipe_search.loop import searched
from surgery.recipe_search.recovering import recovery_for
from surgery.recipe_search.report import Budget
from surgery.recipe_search.runtimes import compile_for, correct
from surgery.recipe_search.space import Space
from surgery.recipe_search.trial import Bench, unpack


def summarize(
    space: Space,
    cache: Cache,
    bench: Bench,
    budget: Budget,
    settings: dict[str, Any],
    data,
    started: float,
    probes: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    records = searched(space, cache)
    accuracy = bench.accuracy
    chosen = report.pick(records, budget, accuracy)
    if not space.combos:
        message = (
            f"search: no method pays off on {bench.runtime} here: each one's fastest declared point ran below "
            f"{settings['min_speedup']:g}x of the original's speed (search.json: pays_off), so nothing was searched"
        )
    elif chosen is not None:
        message = f"search: picked {report.describe_point(chosen, accuracy)} (within {budget.describe()})"
    else:
        near = report.closest(records, budget, accuracy)
        message = f"search: no candidate meets {budget.describe()}; the closest: " + (
            report.describe_point(near, accuracy) if near else "none was measured"
        )
    statuses: dict[str, int] = {}
    for record in records:
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    return {
        "settings": settings,
        "budget": budget.describe(),
        "data": data.describe(),
        "space": space.describe(),
        "machine": cache.fingerprint["machine"],
        "original": cache.original,
        "candidates": records,
        "pays_off": {name: {k: v for k, v in probe.items() if k != "key"} for name, probe in probes.items()},
        "chosen": chosen,
        "message": message,
        "statuses": statuses,
        "trials": len(cache.trials),
        "seconds": round(time.perf_counter() - started, 1),
        "test": None,
    }


def rebuild(
    chosen: dict[str, Any],
    original: nn.Module,
    bench: Bench,
    data,
    space: Space,
    recover_epochs: int,
    lora: Any,
    recovery: dict[str, Any] | None,
    log,
) -> tuple[nn.Module, dict[str, Any] | None]:
    """The pick built again (recovered again, with the same seed), checked against its record, and
    its test accuracy beside the original's (once)."""
    candidate = space.from_steps(chosen["steps"])
    recovery_fn = recovery_for(bench, recover_epochs, lora, recovery) if chosen.get("recovered") else None
    record, model = bench.measure(candidate, recovery_fn, lambda r: None)
    searched = unpack(chosen["correct"], len(data.search[1]))
    again = unpack(record["correct"], len(data.search[1])) if "correct" in record else None
    if again is None or (again != searched).any():
        log(
            f"search: note: the pick built again answers {0 if again is None else int((again != searched).sum())} search "
            "image(s) differently from when it was measured (recovery or kernels not bit-exact here)"
        )
    if data.test is None:
        return model, None
    run, _ = compile_for(model, bench.runtime, bench.workdir / "pick")
    pick_hits, original_hits = correct(run, *data.test), correct(bench.run_original, *data.test)
    test = mcnemar(pick_hits, original_hits)
    return model, {
        "images": len(data.test[1]),
        "original": float(original_hits.mean()),
        "pick": float(pick_hits.mean()),
        "difference": str(bootstrap_difference(pick_hits, original_hits)),
        "mcnemar_p": format_p(test.p_value),
        "only_pick": test.only_a,
        "only_original": test.only_b,
    }
