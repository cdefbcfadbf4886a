"""Whether each method pays off on the user's runtime, measured before the search proper.

A search for latency gains nothing from a method that is no faster than the original on the user's
runtime and CPU: bivit's W1A1 where its +-1 products run as float matmuls (PyTorch eager, ONNX
Runtime; OpenVINO runs them as bits), GGeM (it changes the pooling only), an attention swap at an
image size where its cost equals softmax attention's, int8 on a CPU whose int8 kernels barely beat
float. Which methods these are depends on the runtime and the CPU, so it is measured, not looked up:
each method alone at its fastest declared point (``SearchSpace.fastest``) is timed in turns with the
original, as every candidate is, and a method whose fastest point runs below ``min_speedup`` times
the original's speed is left out of the space, with its measured speed as the reason. Its other
points can only be slower, and a pair holding it pays its cost.

This is the rule of the "pays off in" column of ``benchmarks/speed_table.py`` (``PAYS_OFF``: below it a
ratio is within the noise of a shared machine), applied on the user's runtime. The probes are kept in
the search's cache, so a resumed search measures none of them again.
"""

from __future__ import annotations

from typing import Any

from surgery.recipe_search.cache import Cache
from surgery.recipe_search.space import Space
from surgery.recipe_search.trial import Bench

PAYS_OFF = 1.05


def gate(space: Space, cache: Cache, bench: Bench, min_speedup: float, log) -> tuple[Space, dict[str, dict[str, Any]]]:
    """The space less the methods that do not pay off here, and each method's probe record."""
    probes: dict[str, dict[str, Any]] = {}
    dropped: dict[str, str] = {}
    for name in space.methods:
        candidate = space.probe(name)
        record = cache.probes.get(name)
        if record is None or record.get("key") != candidate.key:
            record = {"key": candidate.key, "label": candidate.label, **bench.speed(candidate)}
            cache.probes[name] = record
            cache.save()
        probes[name] = record
        if "speed" in record and record["speed"] < min_speedup:
            dropped[name] = (
                f"does not pay off on {bench.runtime} here: its fastest declared point, {record['label']}, "
                f"ran at {record['speed']:.2f}x of the original's speed (min_speedup: {min_speedup:g}x)"
            )
    if probes:
        log(
            f"search: speed on {bench.runtime} at each method's fastest declared point: "
            + ", ".join(f"{n} {r['speed']:.2f}x" if "speed" in r else f"{n} refused" for n, r in probes.items())
            + (f"; left out (below {min_speedup:g}x): {', '.join(dropped)}" if dropped else "")
        )
    return space.without(dropped), probes
