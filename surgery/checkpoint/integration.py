"""Plain ``from_pretrained`` replays a saved recipe once ``surgery`` is imported, and fails loudly
without it.

transformers builds the model skeleton on the meta device, then calls the registered quantizer's
``_process_model_before_weight_loading``; that is where the recipe is checked (the same checks as
:func:`surgery.load`: format, step shape, installed plugins and their versions, conflicts) and
replayed, so the weights then load into the rewritten modules. Weights the rebuilt model needs and
the checkpoint lacks are an error, and the recipe must be the one the weights were saved with
(its SHA-256 is in the safetensors metadata).

Without ``import surgery``, transformers would skip the unknown quantization method with a log
line and return a different model, so a saved ``config.json`` is marked (:mod:`surgery.checkpoint.marker`), and
one tensor is saved in a shape a plain concrete model class refuses (:mod:`surgery.checkpoint.guard`); the
quantizer takes it back here.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING, register_quantizer
from transformers.quantizers.base import HfQuantizer
from transformers.utils import logging as hf_logging

from surgery.checkpoint.adapter import ADAPTER_ATTR, ADAPTER_DIGEST_KEY
from surgery.checkpoint.files import DIGEST_KEY, check_digest, check_weight_files, weights_metadata
from surgery.checkpoint.guard import guard_state, guarded_reference, unguard
from surgery.checkpoint.marker import unmark
from surgery.checkpoint.plugins import check_plugins_installed
from surgery.checkpoint.recipe import QUANT_METHOD, read_steps, recipe_digest
from surgery.checkpoint.replay import replay
from surgery.core.host import get_host
from surgery.core.names import derived_buffers, reference_to_model, renamer, to_reference_state
from surgery.errors import RecipeError
from surgery.toolkit.completeness import refuse_incomplete
from surgery.toolkit.packing import packed_away_keys, packed_state_dict, unpack_all


class SurgeryQuantizer(HfQuantizer):
    """Replays a surgery recipe inside ``from_pretrained``. No calibration, no data.

    Checkpoints hold tensors under the anatomy's reference names (:mod:`surgery.core.names`): saving
    translates the model's names to them, and on transformers 5.x loading renames them to the
    model's (the conversions replace transformers' own renamings, which know the base model's
    tensors but not the ones plugins add)."""

    requires_calibration = False
    required_packages = None

    def preprocess_model(self, model, **kwargs: Any):
        # The base class marks the model as quantized, which forbids .float()/.half(); surgery
        # steps are ordinary modules, so only the replay runs here. transformers 5.x names the
        # checkpoint files here; 4.57 does not, so they are found from the config's source.
        self._files_given = bool(kwargs.get("checkpoint_files"))
        self._checkpoint_files = [str(f) for f in kwargs.get("checkpoint_files") or []] or _source_weights(
            model.config
        )
        pickled = [Path(f).name for f in self._checkpoint_files if not str(f).endswith(".safetensors")]
        if pickled:  # refused before transformers opens it
            raise RecipeError(
                f"{Path(self._checkpoint_files[0]).parent}: a surgery checkpoint loads from safetensors "
                f"only, not {pickled[0]}."
            )
        return self._process_model_before_weight_loading(model, **kwargs)

    def _process_model_before_weight_loading(self, model, **kwargs: Any) -> None:
        unmark(model.config)
        steps = read_steps(model.config)
        check_plugins_installed(steps)
        self._saved_steps = steps  # as saved: the replayed history writes every option, later-added ones included
        replay(model, steps)
        self._guard = self._guarded(model)
        packed = packed_away_keys(model)
        if packed:  # rebuilt from their packed form after loading: transformers 5.x would report them "MISSING"
            ignored = set(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())
            model._keys_to_ignore_on_load_missing = sorted(ignored | {f"^{re.escape(key)}$" for key in packed})

    def _guarded(self, model) -> tuple[str, torch.Size] | None:
        """The model's name and shape of the tensor saved with a leading 1 (:mod:`surgery.checkpoint.guard`)."""
        files = list(getattr(self, "_checkpoint_files", None) or [])
        reference = guarded_reference(weights_metadata(files[0])) if files else None
        if reference is None:
            return None
        names = [name for name, _ in model.named_parameters()]
        name = _reference_names(model, names).get(reference)
        if name is None:
            raise RecipeError(
                f"{Path(files[0]).parent}: the checkpoint guards {reference[:120]!r}, which this model "
                "does not have (edited checkpoint or another model class)."
            )
        return name, model.get_parameter(name).shape

    def param_needs_quantization(self, model, param_name: str, **kwargs: Any) -> bool:
        """Only the guarded tensor is taken by the quantizer (its shape has a leading 1 on disk)."""
        return getattr(self, "_guard", None) is not None and param_name == self._guard[0]

    def create_quantized_param(self, model, param_value, param_name: str, target_device, **kwargs: Any) -> None:
        """transformers 4.57: the guarded tensor, without its leading 1, into the model."""
        _set_parameter(model, param_name, unguard(param_value[...], self._guard[1], param_name), target_device)
        self._guard_taken = True

    def update_weight_conversions(self, weight_conversions, model):
        """transformers 5.x: every reference name that differs from the model's is renamed exactly."""
        from transformers.core_model_loading import WeightRenaming

        model_names = [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_buffers()]
        to_model = _reference_names(model, model_names)
        return [
            WeightRenaming(f"^{re.escape(reference)}$", name)
            for reference, name in to_model.items()
            if reference != name
        ]

    def _process_model_after_weight_loading(self, model, **kwargs: Any) -> None:
        files = list(getattr(self, "_checkpoint_files", None) or [])
        guard = getattr(self, "_guard", None)
        if guard is not None and not getattr(self, "_guard_taken", False):  # 5.x set it as saved
            _set_parameter(model, guard[0], unguard(model.get_parameter(guard[0]).data, guard[1], guard[0]), None)
        if getattr(self, "_files_given", False):  # transformers 5.x reports missing weights instead of refusing them
            check_covered(model, [Path(f) for f in files])
        unpack_all(model)
        if files:
            check_digest(model.config, sorted(files)[0], getattr(self, "_saved_steps", None))
        refuse_incomplete(model, "load", RecipeError)  # saved by an older surgery before its state was fitted

    def get_state_dict_and_metadata(self, model, safe_serialization=False):
        """Called by ``save_pretrained``: packed weights where a module stores fewer bits, under the
        anatomy's reference names, and the recipe's digest in the metadata."""
        state = packed_state_dict(model)
        state = to_reference_state(_anatomy(model), model, model.state_dict() if state is None else state)
        state, guard = guard_state(_anatomy(model), state)
        adapter = {ADAPTER_DIGEST_KEY: vars(model)[ADAPTER_ATTR]} if vars(model).get(ADAPTER_ATTR) else {}
        return state, {DIGEST_KEY: recipe_digest(read_steps(model.config)), **guard, **adapter}

    def update_missing_keys(self, model, missing_keys: list[str], prefix: str) -> list[str]:
        packed = packed_away_keys(model)
        missing = [key for key in missing_keys if key not in packed]
        if missing:
            raise lacking_weights(missing)
        return missing

    def is_serializable(self, safe_serialization=None) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True


def _set_parameter(model: Any, name: str, value: torch.Tensor, device: Any) -> None:
    module, _, leaf = name.rpartition(".")
    owner = model.get_submodule(module)
    old = owner._parameters[leaf]
    value = value.to(device=device if device is not None else value.device, dtype=old.dtype).contiguous()
    owner._parameters[leaf] = torch.nn.Parameter(value, requires_grad=old.requires_grad)


def _anatomy(model: Any):
    return get_host().anatomy_of(model, required=False)


def _reference_names(model: Any, model_names: list[str]) -> dict[str, str]:
    """``{reference name: model name}`` for ``model_names``."""
    forward = renamer(_anatomy(model), model, to_reference=True)
    return (
        {name: name for name in model_names}
        if forward is None
        else {v: k for k, v in forward.names(model_names).items()}
    )


def check_covered(model: Any, files: list[Path]) -> None:
    """Every weight ``model`` expects is in the checkpoint ``files`` (under its reference name), and
    every buffer the reference layout saves but ``model`` recomputes matches its formula: transformers
    5.x reports missing weights instead of refusing them, so a plain ``from_pretrained`` checks here."""
    tensors = _FileTensors(files)
    anatomy = _anatomy(model)
    state = model.state_dict()
    to_model = reference_to_model(anatomy, model, tensors)
    missing = sorted(set(state) - packed_away_keys(model) - set(to_model.values()))
    if missing:
        raise lacking_weights(missing, files[0].parent)
    if anatomy is None:
        return
    for key, value in derived_buffers(anatomy, tensors).items():
        if key in tensors and to_model[key] not in state and not torch.equal(tensors[key], value):
            raise RecipeError(
                f"{files[0].parent}: {key} is not what its formula gives (edited or corrupt checkpoint)."
            )


class _FileTensors(Mapping):
    """The tensors of safetensors files, read one at a time on access."""

    def __init__(self, files: list[Path]) -> None:
        from safetensors import safe_open

        self._where: dict[str, Path] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                self._where.update(dict.fromkeys(handle.keys(), file))

    def __getitem__(self, key: str):
        from safetensors import safe_open

        with safe_open(str(self._where[key]), framework="pt") as handle:
            return handle.get_tensor(key)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


@contextlib.contextmanager
def quiet_progress():
    """No per-tensor progress bar while weights load or save (transformers 5 draws them): a failure
    stays one line, and a tiny model saves without a bar. Downloads keep huggingface_hub's own progress."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def lacking_weights(missing: list[str], source: object = None) -> RecipeError:
    """The error for a checkpoint without weights its recipe's model needs (both load paths)."""
    shown = ", ".join(str(key) for key in missing[:5]) + (" ..." if len(missing) > 5 else "")
    where = f"{source}: " if source is not None else ""
    return RecipeError(
        f"{where}the checkpoint lacks weights that its recipe's model needs ({shown}): the recipe and "
        "the weights do not belong together (edited recipe or mixed folder)."
    )


def _source_weights(config: Any) -> list[str]:
    """transformers 4.57: the first safetensors file of the folder or Hub snapshot ``config`` was read
    from (the snapshot by the config's commit), after :func:`check_weight_files`' checks; [] when the
    model was not loaded from files."""
    source = getattr(config, "name_or_path", None)
    if not source:
        return []
    commit = getattr(config, "_commit_hash", None)
    return [check_weight_files(source, **({"_commit_hash": commit} if commit else {}))]


if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:  # importable twice (reloads) without error
    register_quantizer(QUANT_METHOD)(SurgeryQuantizer)
