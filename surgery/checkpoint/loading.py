"""``surgery.load``: the loud, strict way to reload a rewritten model from a folder or the Hub.

It checks the recipe before building anything (every plugin installed, a readable format), lets
transformers build the skeleton and replay the recipe (:mod:`surgery.checkpoint.integration`), loads the
weights from safetensors only, and fails if any weight is missing, unexpected or of the wrong shape.
No code from the checkpoint is ever executed (``trust_remote_code=False``) and no pickle is read.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel

from surgery.checkpoint.adapter import attach_adapter
from surgery.checkpoint.files import (
    check_digest,
    check_weight_files,
    read_config_dict,
    refuse_root_adapter,
    undigested_allowed,
)
from surgery.checkpoint.integration import lacking_weights, quiet_progress
from surgery.checkpoint.plugins import check_plugins_installed
from surgery.checkpoint.recipe import read_steps
from surgery.core.history import get_history
from surgery.errors import RecipeError
from surgery.toolkit.packing import packed_away_keys


def load(
    pretrained: str | os.PathLike[str],
    model_class: Any = None,
    *,
    adapter: bool | None = None,
    undigested: bool = False,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a model folder or Hub id, replaying its surgery recipe, with strict weight loading (see
    :func:`_load`). ``undigested=True`` loads, with a warning, a checkpoint whose weights carry no
    recipe digest (saved before surgery recorded one); otherwise such a checkpoint is refused."""
    with undigested_allowed(undigested):
        return _load(pretrained, model_class, adapter=adapter, **kwargs)


def _load(
    pretrained: str | os.PathLike[str], model_class: Any = None, *, adapter: bool | None = None, **kwargs: Any
) -> PreTrainedModel:
    """Load a model folder or Hub id, replaying its surgery recipe, with strict weight loading.

    ``model_class`` defaults to ``AutoModelForImageClassification``; other keyword arguments
    (``revision``, ``token``, ``cache_dir``, ``dtype`` ...) go to ``from_pretrained``. A folder saved
    with a kept LoRA adapter (``adapter/``) loads as the ``PeftModel`` it was saved as, after checking
    the adapter is the one saved with the model (:mod:`surgery.checkpoint.adapter`); ``adapter=False``
    loads the model alone, ``adapter=True`` requires an adapter.
    """
    if kwargs.pop("trust_remote_code", None):
        raise RecipeError(
            "surgery.load does not accept trust_remote_code=True: it never runs checkpoint code or reads pickles."
        )
    if kwargs.pop("use_safetensors", True) is not True:
        raise RecipeError(
            "surgery.load does not accept use_safetensors=False: it never runs checkpoint code or reads pickles."
        )
    hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    refuse_root_adapter(pretrained, **hub_kwargs)
    read_config_dict(pretrained, **hub_kwargs)  # a JSON object, before transformers reads it
    config = AutoConfig.from_pretrained(pretrained, trust_remote_code=False, **hub_kwargs)
    steps = read_steps(config)
    check_plugins_installed(steps, versions=False)  # before any download; versions are checked at replay
    weights = check_weight_files(pretrained, **hub_kwargs)
    check_digest(config, weights)  # recipe and weights belong together, before anything is built
    model_class = model_class or AutoModelForImageClassification
    with quiet_progress():
        model, info = model_class.from_pretrained(
            pretrained,
            config=config,
            use_safetensors=True,
            trust_remote_code=False,
            output_loading_info=True,
            **kwargs,
        )
    _check_loading_info(pretrained, info, expected_missing=packed_away_keys(model), recipe=bool(steps))
    if len(get_history(model)) != len(steps):
        raise RecipeError(
            f"{pretrained}: the recipe has {len(steps)} step(s) but {len(get_history(model))} were replayed; "
            "another quantization config may have taken precedence."
        )
    return attach_adapter(model, pretrained, weights, adapter, **hub_kwargs)


def _check_loading_info(
    source: Any, info: dict[str, Any], expected_missing: set[str] = frozenset(), recipe: bool = True
) -> None:
    """Refuse any missing, unexpected or mismatched weight, except the keys packed modules store in
    another form (transformers 4.57's quantizer hook drops those from the report, 5.x lists them)."""
    missing = [v for v in (info.get("missing_keys") or []) if v not in expected_missing]
    if missing:  # the quantizer's own error (transformers 4.57 raises it there first)
        if not recipe:
            shown = ", ".join(str(v) for v in sorted(missing)[:5]) + (" ..." if len(missing) > 5 else "")
            raise RecipeError(f"{source}: the checkpoint lacks weights the model needs ({shown}).")
        raise lacking_weights(sorted(missing), source)
    problems = []
    for key in ("unexpected_keys", "mismatched_keys", "error_msgs"):
        values = list(info.get(key) or [])
        if values:
            shown = ", ".join(str(v) for v in values[:5]) + (" ..." if len(values) > 5 else "")
            problems.append(f"{key.replace('_', ' ')}: {shown}")
    if problems:
        raise RecipeError(f"{source}: the weights do not fit the rebuilt model ({'; '.join(problems)}).")
