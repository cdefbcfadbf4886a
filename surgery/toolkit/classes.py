"""Class swaps: when a rewrite changes only ``forward``, the module's class is swapped in place.

The weights, the state_dict and every reference to the module stay as they are (ToMe's habit);
``print(model)`` shows the new class name, and the original class is kept for ``revert``.
"""

from __future__ import annotations

from torch import nn

_SWAPPED: dict[tuple[type, type, str], type] = {}


def swapped_class(mixin: type, base: type, prefix: str) -> type:
    """``<prefix><base>``: ``mixin``'s methods over ``base`` (one class per triple, created once)."""
    key = (mixin, base, prefix)
    if key not in _SWAPPED:
        _SWAPPED[key] = type(f"{prefix}{base.__name__}", (mixin, base), {"surgery_original_class": base})
    return _SWAPPED[key]


def swap_class(module: nn.Module, mixin: type, prefix: str, **settings) -> None:
    """Swap ``module`` to ``<prefix><its class>`` and set attributes ``settings`` on it (a module among them
    is registered as a submodule: its state is saved with the model)."""
    module.__class__ = swapped_class(mixin, type(module), prefix)
    for key, value in settings.items():
        setattr(module, key, value)


def unswap_class(module: nn.Module, *settings: str) -> None:
    """Undo :func:`swap_class`: the original class back, the ``settings`` attributes removed (a setting
    that is a module or a buffer is unregistered, so the state_dict is the original's again)."""
    module.__class__ = module.surgery_original_class
    for setting in settings:
        module.__dict__.pop(setting, None)
        module._modules.pop(setting, None)
        module._buffers.pop(setting, None)
