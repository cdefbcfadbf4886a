"""What a plugin may do while :func:`surgery.recover` fine-tunes a rewritten model.

A :class:`SurgeryMethod` may give ``training(model, config, targets, anatomy) -> TrainingHooks``.
Recovery builds one :class:`TrainingHooks` per applied step and calls them at fixed moments:
``schedule(progress)`` before every optimizer step (``progress`` in [0, 1) over the whole run, the
warm-up stage included), ``loss()`` for an extra term added to the distillation loss, and ``finish()``
once at the end, also when training fails, to put inference state back. The default methods do
nothing, so a plugin overrides only what it needs.
"""

from __future__ import annotations

import torch


class TrainingHooks:
    """No-op training hooks; plugins subclass it (castling's auxiliary branch, bivit's stages)."""

    def schedule(self, progress: float) -> None:
        """Called before each optimizer step with the fraction of the run done so far."""

    def loss(self) -> torch.Tensor | None:
        """An extra loss term from the forward pass just run, or None."""
        return None

    def describe(self, progress: float) -> dict[str, float]:
        """Scalars to log (e.g. the auxiliary weight) at ``progress``."""
        return {}

    def finish(self) -> None:
        """Restore inference state after training (also after a failure)."""
