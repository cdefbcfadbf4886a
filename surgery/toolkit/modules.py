"""Replace and restore modules, swap classes, add hooks, run undo calls: recorded once, undone in reverse.

Every built-in plugin's ``apply`` records what it changes on a :class:`Changes` and returns
``changes.rewrite()``; its ``revert`` is :func:`undo` (PEFT writes this loop once in ``BaseTuner``).
The record lives in the :class:`~surgery.core.method.Rewrite`'s ``undo`` (memory only, never saved):
the original modules and classes, and the calls that put other state back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

from surgery.core.method import Rewrite
from surgery.toolkit.classes import swap_class, unswap_class


class Changes:
    """What one ``apply`` does to ``model``, in order; ``targets`` are the module names it claims."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.targets: list[str] = []
        self.records: list[tuple[str, Any]] = []

    def claim(self, name: str) -> None:
        if name not in self.targets:
            self.targets.append(name)

    def replace(self, name: str, new: nn.Module) -> nn.Module:
        """Install ``new`` at ``name`` (in the original's train/eval mode); returns the original."""
        old = self.model.get_submodule(name)
        self.model.set_submodule(name, new.train(old.training))
        self.records.append(("module", (name, old)))
        self.claim(name)
        return old

    def remove(self, name: str) -> nn.Module:
        """Set the submodule at ``name`` to None (its parent must accept a None there, as transformers'
        optional modules do); returns the original, put back on undo."""
        old = self.model.get_submodule(name)
        owner, _, attribute = name.rpartition(".")
        parent = self.model.get_submodule(owner) if owner else self.model
        setattr(parent, attribute, None)
        self.records.append(("call", (setattr, (parent, attribute, old))))
        return old

    def swap_class(self, name: str, mixin: type, prefix: str, claim: bool = True, **settings: Any) -> nn.Module:
        """Swap the class of the module at ``name`` (see :func:`surgery.toolkit.classes.swap_class`).

        ``claim=False`` for a swap that composes with another method's swap of the same module (the
        other reads what this one adds), so that the two are not refused as rewriting one module."""
        module = self.model.get_submodule(name)
        swap_class(module, mixin, prefix, **settings)
        self.records.append(("class", (name, tuple(settings))))
        if claim:
            self.claim(name)
        return module

    def pre_hook(self, name: str, hook: Any) -> None:
        """Run ``hook(module, args, kwargs)`` before the module at ``name`` runs (a forward pre-hook with
        kwargs), removed on undo. The module keeps its class: transformers 5 finds what it records
        (``output_hidden_states``) by the model's class, so a model's class is never swapped."""
        handle = self.model.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True)
        self.records.append(("hook", (name, handle.id)))  # by key: a deep copy holds the same keys
        self.claim(name)

    def call_on_undo(self, function, *args: Any) -> None:
        """Run ``function(*args)`` when the rewrite is undone (for state outside the module tree)."""
        self.records.append(("call", (function, args)))

    def rewrite(self, targets: list[str] | None = None) -> Rewrite:
        """The :class:`Rewrite` for ``apply`` to return (``targets`` reorders the claims for the recipe)."""
        if targets is not None and sorted(targets) != sorted(self.targets):
            raise ValueError(f"rewrite targets {targets} are not the claimed modules {self.targets}")
        return Rewrite(targets=list(targets if targets is not None else self.targets), undo=list(self.records))


def undo(model: nn.Module, rewrite: Rewrite) -> None:
    """Undo a :class:`Changes` record, newest change first: a plugin's ``revert``."""
    for kind, record in reversed(rewrite.undo):
        if kind == "module":
            name, old = record
            model.set_submodule(name, old)
        elif kind == "class":
            name, settings = record
            unswap_class(model.get_submodule(name), *settings)
        elif kind == "hook":
            name, key = record
            module = model.get_submodule(name)
            module._forward_pre_hooks.pop(key, None)
            module._forward_pre_hooks_with_kwargs.pop(key, None)
        else:
            function, args = record
            function(*args)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
