"""The search's recovery: the LoRA options checked before anything is measured, and the function that fine-tunes a
candidate briefly by distillation from the original (:func:`surgery.recover`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch import nn

from surgery.errors import ConfigError
from surgery.recipe_search.trial import Bench


def plain(value: Any) -> Any:
    """An option's value as JSON: a dataclass (the LoRA options) as its fields."""
    return value if value is None or isinstance(value, (bool, int, float, str, dict)) else dataclasses.asdict(value)


def lora_options(lora: Any, recover_epochs: int) -> dict[str, Any] | None:
    """``lora`` as LoRA options (any form ``surgery.recover`` takes), checked before anything is measured."""
    from surgery.recovery.lora import LoraOptions

    options = LoraOptions.parse(lora)
    if options is None:
        return None
    if not recover_epochs:
        raise ConfigError(
            "search: 'lora' was given but 'recover_epochs' is 0, so nothing is recovered; "
            "set recover_epochs (e.g. 2) or leave lora out"
        )
    if not options.merge:
        raise ConfigError(
            "search: 'lora' got merge=False; allowed: merge=True (the default). The search exports, times "
            "and saves each candidate as one model, so the adapters are merged into its weights; keep "
            "an adapter with `surgery recover --lora merge=false` on the chosen recipe"
        )
    return options.to_dict()


def recovery_for(
    bench: Bench, epochs: int, lora: Any, options: dict[str, Any] | None
) -> Callable[[nn.Module], dict[str, Any]]:
    """What recovers a candidate in place: ``epochs`` of distillation from the original on the train split."""

    def recover_model(model: nn.Module) -> dict[str, Any]:
        from surgery.recovery import recover

        result = recover(
            model,
            bench.original,
            bench.data.train,
            None,
            lora=lora,
            progress=False,
            **{"epochs": epochs, **(options or {})},
        )
        model.eval()
        return {"epochs": epochs, "seconds": round(result.seconds, 1), "lora": plain(lora)}

    return recover_model
