"""A surgery checkpoint that transformers alone cannot load into the plain model class.

``config.json``'s marker (:mod:`surgery.checkpoint.integration`) stops ``AutoConfig``, the Auto
classes and ``pipeline()``. A concrete class (``ViTForImageClassification.from_pretrained``) reads the
config with its own config class, which only warns about the marker, and transformers skips the
unknown recipe with a log line: without this guard it returned the base model (a token-merging model
silently unmerged, a quantized one with newly initialised weights).

So one tensor that every plain model of the family has, the patch embedding's weight (its bias where a
method stores the weight in another form, as int8 codes), is saved with a leading dimension of 1, and
the file's metadata names it (:data:`GUARD_KEY`). transformers without
surgery refuses the shape ("size mismatch ... ignore_mismatched_sizes") in 4.57 and in 5.x; surgery's
quantizer takes that one tensor itself (``param_needs_quantization``) and removes the dimension.
Checkpoints saved before the guard have no such metadata and load as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from surgery.errors import RecipeError

GUARD_KEY = "surgery_guarded_tensor"


def guard_state(anatomy: Any, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``state`` (reference names) with its guarded tensor given a leading dimension, and the metadata
    that names it; unchanged (and no metadata) for a model whose patch embedding is not in ``state``."""
    paths = anatomy.roles.get("patch_embed", ()) if anatomy is not None else ()
    names = [f"{path}.{tensor}" for tensor in ("weight", "bias") for path in paths]
    key = next((name for name in names if name in state), None)
    if key is None:
        return dict(state), {}
    guarded = dict(state)
    guarded[key] = state[key].detach().unsqueeze(0).contiguous()
    return guarded, {GUARD_KEY: key}


def guarded_reference(metadata: Mapping[str, str]) -> str | None:
    """The reference name of the guarded tensor in a file with ``metadata`` (None: saved without a guard)."""
    return metadata.get(GUARD_KEY)


def unguard(value: torch.Tensor, expected: torch.Size, where: str) -> torch.Tensor:
    """The guarded tensor as the model holds it; anything but the expected shape with a leading 1 is an error."""
    if tuple(value.shape) != (1, *expected):
        raise RecipeError(
            f"{where}: the checkpoint's guarded tensor has shape {tuple(value.shape)}, not "
            f"{(1, *tuple(expected))} (edited or corrupt checkpoint)."
        )
    return value.squeeze(0)
