"""A LoRA adapter kept beside a rewritten model (``recover(..., lora={"merge": False})``): saved in
``adapter/``, recorded in the model's weights, loaded with the model, never lost or swapped silently.

:func:`surgery.save` writes PEFT's adapter to ``folder/adapter`` first and records the SHA-256 of its
two files (``adapter_config.json``, ``adapter_model.safetensors``) in the model weights' metadata.
:func:`surgery.load` then returns the ``PeftModel`` (the trained model) and refuses, loudly:
an ``adapter/`` whose files are not the ones recorded (an edited ``lora_alpha``, moved
``target_modules``, a missing ``lora_B``), an adapter the weights do not record, weights that record an
adapter the folder lacks (pushed without it, copied without it), pickled adapter weights, and adapter
weights that do not cover every LoRA layer the config builds.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from surgery.checkpoint.files import resolver, weights_metadata
from surgery.errors import RecipeError

ADAPTER = "adapter"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER_DIGEST_KEY = "surgery_adapter_sha256"
ADAPTER_ATTR = "_surgery_adapter_sha256"  # set on the model being saved, read by the quantizer's save


def adapter_digest(folder: str | Path) -> str:
    """SHA-256 over the adapter's two files (each with its name and length)."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        data = (Path(folder) / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def adapter_files(pretrained: str | os.PathLike[str], **hub_kwargs: Any) -> Path | None:
    """The local folder of ``pretrained``'s ``adapter/`` (a folder or Hub repo), or None when it has none;
    adapter weights that are not safetensors are refused."""
    resolve = resolver(pretrained, **hub_kwargs)
    config = resolve(f"{ADAPTER}/{ADAPTER_FILES[0]}")
    if config is None:
        return None
    weights = resolve(f"{ADAPTER}/{ADAPTER_FILES[1]}")
    if weights is None or Path(weights).parent != Path(config).parent:
        raise RecipeError(
            f"{pretrained}: {ADAPTER}/ has no {ADAPTER_FILES[1]}; surgery loads adapter weights from safetensors only."
        )
    return Path(config).parent


def attach_adapter(
    model: Any, pretrained: str | os.PathLike[str], weights: str | Path, wanted: bool | None, **hub_kwargs: Any
) -> Any:
    """``model`` with the adapter ``pretrained`` keeps in ``adapter/`` (a ``PeftModel``), after checking it
    against the record in ``weights``; ``model`` itself when there is none or ``wanted`` is False."""
    if wanted is False:
        return model
    recorded = weights_metadata(weights).get(ADAPTER_DIGEST_KEY)
    folder = adapter_files(pretrained, **hub_kwargs)
    if folder is None:
        if recorded is not None:
            raise RecipeError(
                f"{pretrained}: the model was saved with a LoRA adapter in {ADAPTER}/ (its weights record "
                f"it), and {ADAPTER}/ is missing: copy or download the whole folder, or load the model "
                "without its adapter on purpose with surgery.load(..., adapter=False)."
            )
        if wanted:
            raise RecipeError(f"{pretrained}: adapter=True, but the folder has no {ADAPTER}/.")
        return model
    if recorded is None:
        raise RecipeError(
            f"{pretrained}: {ADAPTER}/ holds an adapter that the model's weights do not record (it was not "
            "saved with this model); surgery refuses it. Load the model alone with adapter=False."
        )
    if recorded != adapter_digest(folder):
        raise RecipeError(
            f"{pretrained}: {ADAPTER}/ is not the adapter saved with this model (its files' SHA-256 differs "
            "from the weights' record): edited adapter_config.json or adapter weights."
        )
    return _load_peft(model, folder, pretrained)


def _load_peft(model: Any, folder: Path, source: Any) -> Any:
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import safe_open

    kind = json.loads((folder / ADAPTER_FILES[0]).read_text()).get("peft_type")
    if kind != "LORA":
        raise RecipeError(
            f"{source}: {ADAPTER}/ holds a {str(kind)[:40]!r} adapter; surgery keeps LoRA adapters only."
        )
    peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    with safe_open(str(folder / ADAPTER_FILES[1]), framework="pt") as handle:
        stored = set(handle.keys())
    expected = set(get_peft_model_state_dict(peft_model))
    if stored != expected:
        missing, extra = sorted(expected - stored), sorted(stored - expected)
        raise RecipeError(
            f"{source}: the adapter's weights do not fit the adapter its config builds "
            f"(missing {missing[:3]}, unexpected {extra[:3]})."
        )
    return peft_model
