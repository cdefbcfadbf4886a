"""State a module must have before its model is saved, reloaded or exported.

Some modules hold state that is fitted from data after ``apply`` (EcoFormer's hash). Saved before it is
fitted, every reload would fit it again from whichever batch comes first, and an export would bake in
whatever the export's dummy inputs taught it. Such a module defines ``surgery_incomplete()``, returning
why it is not ready (or None when it is); saving, loading and exporting refuse a model while any
module says so. The host never names the plugins behind these modules.
"""

from __future__ import annotations

from torch import nn

from surgery.errors import SurgeryError


def incomplete_reasons(model: nn.Module) -> list[str]:
    """The distinct reasons the modules of ``model`` give for not being ready, in module order."""
    reasons: list[str] = []
    for module in model.modules():
        check = getattr(module, "surgery_incomplete", None)
        reason = check() if callable(check) else None
        if reason and reason not in reasons:
            reasons.append(reason)
    return reasons


def refuse_incomplete(model: nn.Module, action: str, error: type[SurgeryError] = SurgeryError) -> None:
    """Raise ``error`` naming every reason, when a module of ``model`` is not ready for ``action``."""
    reasons = incomplete_reasons(model)
    if reasons:
        raise error(f"cannot {action} this model: " + "; ".join(reasons) + ".")
