"""The files of a saved model, checked before anything is built from them: both load paths share this.

- weights come from safetensors files inside the model's own folder (or Hub snapshot), never pickles,
  never another folder (:func:`check_weight_files`);
- the weights and ``config.json`` belong together: a file saved with a recipe carries the recipe's
  SHA-256 in its metadata, so a recipe without that digest, a digest without its recipe, or a digest of
  another recipe is refused (:func:`check_digest`);
- a folder is loaded as what it is: an ``adapter_config.json`` at its root would make transformers load
  the adapter's ``base_model_name_or_path`` (any folder or Hub id) instead of the folder's own weights,
  so it is refused (:func:`refuse_root_adapter`); a LoRA adapter kept by surgery lives in ``adapter/``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import warnings
from pathlib import Path
from typing import Any

from surgery.checkpoint.recipe import read_recipe_dict, read_steps, recipe_digest
from surgery.errors import RecipeError, clean_text

SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
DIGEST_KEY = "surgery_recipe_sha256"


def resolver(pretrained: str | os.PathLike[str], **hub_kwargs: Any):
    """``resolve(name)``: the local path of ``name`` in a folder or Hub repo, or None when it has none."""
    from transformers.utils import cached_file

    def resolve(name: str) -> str | None:
        return cached_file(
            str(pretrained),
            name,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )

    return resolve


def refuse_root_adapter(pretrained: str | os.PathLike[str], **hub_kwargs: Any) -> None:
    """Refuse a folder or repo with an ``adapter_config.json`` at its root (see the module docstring)."""
    found = resolver(pretrained, **hub_kwargs)(ADAPTER_CONFIG)
    if found is None:
        return
    try:
        base = json.loads(Path(found).read_text()).get("base_model_name_or_path")
    except (ValueError, AttributeError, OSError):
        base = None
    redirect = f" ({clean_text(base, 120)!r})" if base else ""
    raise RecipeError(
        f"{clean_text(pretrained, 200)}: {ADAPTER_CONFIG} at the root of a model folder makes transformers load "
        f"the adapter's base model{redirect} instead of this folder's weights; surgery refuses it. A LoRA "
        f"adapter that surgery keeps lives in adapter/ (recover(..., lora={{'merge': False}}))."
    )


def check_weight_files(pretrained: str | os.PathLike[str], **hub_kwargs: Any) -> str:
    """The first weights file of ``pretrained``, after refusing weights that are not safetensors files of
    the model's own folder: an index that names a pickle (``.bin``) or a path outside the folder, a shard
    that links out of it, or no safetensors weights at all."""
    resolve = resolver(pretrained, **hub_kwargs)
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
                raise RecipeError(
                    f"{pretrained}: {SAFE_WEIGHTS_INDEX} names the weights file {shard[:200]!r}; surgery "
                    "loads only .safetensors files inside the model folder (never pickles, never other folders)."
                )
    elif resolve(SAFE_WEIGHTS) is not None:
        shards = [SAFE_WEIGHTS]
    else:
        raise RecipeError(
            f"{pretrained}: no {SAFE_WEIGHTS} or {SAFE_WEIGHTS_INDEX}; surgery loads weights only from "
            "safetensors (it never reads pickled .bin weights)."
        )
    if local:
        root = Path(pretrained).resolve()
        for shard in shards:
            if root not in (root / shard).resolve().parents:
                raise RecipeError(
                    f"{pretrained}: the weights file {shard} links outside the model folder; refusing it."
                )
            check_readable(root / shard)
    first = resolve(shards[0])
    if first is None:
        raise RecipeError(f"{pretrained}: {SAFE_WEIGHTS_INDEX} names {shards[0]}, which the folder does not have.")
    return first


def check_readable(path: Path) -> None:
    """A safetensors file whose header parses and whose size matches it (a truncated file fails)."""
    weights_metadata(path)


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file's header; a file that does not parse is an error."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
            return dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own error type
        raise RecipeError(
            f"{path} is not a readable safetensors file (truncated or corrupt): {str(error).splitlines()[0][:200]}"
        ) from error


_UNDIGESTED: contextvars.ContextVar[bool] = contextvars.ContextVar("surgery_undigested", default=False)


@contextlib.contextmanager
def undigested_allowed(allowed: bool):
    """Within the block, a recipe whose weights carry no digest loads with a warning (``surgery.load``'s
    explicit ``undigested=True``, for checkpoints saved before surgery recorded digests)."""
    token = _UNDIGESTED.set(bool(allowed))
    try:
        yield
    finally:
        _UNDIGESTED.reset(token)


def check_digest(config: Any, weights: str | Path, steps: list[dict[str, Any]] | None = None) -> None:
    """The weights in ``weights`` (a safetensors file) were saved with the recipe in ``config``: with a
    recipe, the file's metadata must carry that recipe's digest; without one, it must carry none.
    ``steps``: the recipe as it was read, when ``config`` has since been replayed (a replayed recipe
    writes every option, also those a plugin added after the folder was saved)."""
    saved = weights_metadata(weights).get(DIGEST_KEY)
    folder = Path(weights).parent
    if read_recipe_dict(config) is None:
        if saved is not None:
            raise RecipeError(
                f"{folder}: these weights were saved with a surgery recipe (their metadata names its "
                "SHA-256), but config.json has none: the recipe was removed or the folder mixed; loading "
                "them as the plain model would give another model."
            )
        return
    if saved is None:
        if _UNDIGESTED.get():
            warnings.warn(
                f"{folder}: loading weights without a recipe digest, as asked (undigested=True): nothing "
                "shows they were saved with this recipe.",
                stacklevel=3,
            )
            return
        raise RecipeError(
            f"{folder}: config.json has a surgery recipe, but the weights' metadata carries no recipe "
            f"digest ({DIGEST_KEY}), so nothing shows they were saved with it (stripped metadata or "
            "weights from elsewhere); surgery refuses to guess. A checkpoint saved before surgery "
            "recorded digests loads only on purpose: surgery.load(folder, undigested=True)."
        )
    if saved != recipe_digest(read_steps(config) if steps is None else steps):
        raise RecipeError(
            f"{folder}: the recipe in config.json is not the one these weights were saved with "
            "(its SHA-256 differs from the weights' metadata): edited recipe or mixed folder."
        )


def read_config_dict(pretrained: str | os.PathLike[str], **hub_kwargs: Any) -> dict[str, Any]:
    """``config.json`` of ``pretrained`` as a JSON object, or a :class:`RecipeError` saying what it is
    instead (not JSON, a number too long to read, a list ...), before transformers parses it."""
    found = resolver(pretrained, **hub_kwargs)("config.json")
    if found is None:
        raise RecipeError(
            f"{clean_text(pretrained, 200)}: no config.json; not a saved model folder or Hub model repo."
        )
    try:
        data = json.loads(Path(found).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise RecipeError(
            f"{clean_text(pretrained, 200)}: config.json is not readable JSON "
            f"({clean_text(str(error).splitlines()[0], 160)})."
        ) from error
    if not isinstance(data, dict):
        raise RecipeError(
            f"{clean_text(pretrained, 200)}: config.json holds a JSON {type(data).__name__}, not the "
            "object of a model config."
        )
    return data
