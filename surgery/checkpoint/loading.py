"""``surgery.load``: the loud, strict way to reload a rewritten model from a folder or the Hub.

It checks the recipe before building anything (every plugin installed, a readable format), lets
transformers build the skeleton and replay the recipe (:mod:`surgery.checkpoint.integration`), loads the
weights from safetensors only, and fails if any weight is missing, unexpected or of the wrong shape.
No code from the checkpoint is ever executed (``trust_remote_code=False``) and no pickle is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel

from surgery.checkpoint.integration import check_digest, lacking_weights, quiet_progress
from surgery.checkpoint.plugins import check_plugins_installed
from surgery.checkpoint.recipe import read_steps
from surgery.core.history import get_history
from surgery.errors import RecipeError
from surgery.toolkit.packing import packed_away_keys

SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"


def load(pretrained: str | os.PathLike[str], model_class: Any = None, **kwargs: Any) -> PreTrainedModel:
    """Load a model folder or Hub id, replaying its surgery recipe, with strict weight loading.

    ``model_class`` defaults to ``AutoModelForImageClassification``; other keyword arguments
    (``revision``, ``token``, ``cache_dir``, ``dtype`` ...) go to ``from_pretrained``.
    """
    if kwargs.pop("trust_remote_code", None):
        raise RecipeError("surgery.load does not accept trust_remote_code=True: it never runs checkpoint code or reads pickles.")
    if kwargs.pop("use_safetensors", True) is not True:
        raise RecipeError("surgery.load does not accept use_safetensors=False: it never runs checkpoint code or reads pickles.")
    hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    config = AutoConfig.from_pretrained(pretrained, trust_remote_code=False, **hub_kwargs)
    steps = read_steps(config)
    check_plugins_installed(steps, versions=False)  # before any download; versions are checked at replay
    weights = check_weight_files(pretrained, **hub_kwargs)
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
    if not Path(pretrained).is_dir():  # a local folder was checked by the quantizer after loading
        check_digest(config, Path(weights))
    if len(get_history(model)) != len(steps):
        raise RecipeError(
            f"{pretrained}: the recipe has {len(steps)} step(s) but {len(get_history(model))} were replayed; "
            "another quantization config may have taken precedence."
        )
    return model


def check_weight_files(pretrained: str | os.PathLike[str], **hub_kwargs: Any) -> str:
    """Refuse weights that are not safetensors files of the model's own folder: an index that names a
    pickle (``.bin``) or a path outside the folder, a shard that links out of it, or no weights at all."""
    from transformers.utils import cached_file

    def resolve(name: str) -> str | None:
        return cached_file(pretrained, name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False, **hub_kwargs)

    local = Path(pretrained).is_dir()
    index = resolve(SAFE_WEIGHTS_INDEX)
    if index is not None:
        try:
            weight_map = json.loads(Path(index).read_text()).get("weight_map")
        except (ValueError, AttributeError) as error:
            raise RecipeError(f"{pretrained}: {SAFE_WEIGHTS_INDEX} is not a valid index ({error}).") from error
        if not isinstance(weight_map, dict) or not weight_map:
            raise RecipeError(f"{pretrained}: {SAFE_WEIGHTS_INDEX} has no weight_map.")
        shards = sorted({str(v) for v in weight_map.values()})
        for shard in shards:
            if not shard.endswith(".safetensors") or Path(shard).name != shard or shard in (".", ".."):
                raise RecipeError(f"{pretrained}: {SAFE_WEIGHTS_INDEX} names the weights file {shard[:200]!r}; surgery "
                                  "loads only .safetensors files inside the model folder (never pickles, never other folders).")
    elif resolve(SAFE_WEIGHTS) is not None:
        shards = [SAFE_WEIGHTS]
    else:
        raise RecipeError(f"{pretrained}: no {SAFE_WEIGHTS} or {SAFE_WEIGHTS_INDEX}; surgery loads weights only from "
                          "safetensors (it never reads pickled .bin weights).")
    if local:
        root = Path(pretrained).resolve()
        for shard in shards:
            if root not in (root / shard).resolve().parents:
                raise RecipeError(f"{pretrained}: the weights file {shard} links outside the model folder; refusing it.")
            check_readable(root / shard)
    return resolve(shards[0])


def check_readable(path: Path) -> None:
    """A safetensors file whose header parses and whose size matches it (a truncated file fails)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as error:  # safetensors raises its own error type
        raise RecipeError(f"{path} is not a readable safetensors file (truncated or corrupt): "
                          f"{str(error).splitlines()[0][:200]}") from error


def _check_loading_info(source: Any, info: dict[str, Any], expected_missing: set[str] = frozenset(),
                        recipe: bool = True) -> None:
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
