"""Metrics through ``evaluate``, loaded from scripts shipped here so they work offline.

``evaluate.load("accuracy")`` downloads its script from the Hub; :func:`load_metric` loads our local
copy of the same definition instead (``metrics/<name>/<name>.py``).
"""

from __future__ import annotations

from pathlib import Path

from surgery.errors import SurgeryError, did_you_mean

SCRIPTS = Path(__file__).resolve().parent
AVAILABLE = sorted(p.name for p in SCRIPTS.iterdir() if (p / f"{p.name}.py").exists())


def load_metric(name: str = "accuracy"):
    """An ``evaluate.EvaluationModule`` for ``name``, from the script shipped with surgery."""
    if name not in AVAILABLE:
        raise SurgeryError(f"no metric '{name}'; surgery ships {AVAILABLE}.{did_you_mean(name, AVAILABLE)}")
    import evaluate

    return evaluate.load(str(SCRIPTS / name))
