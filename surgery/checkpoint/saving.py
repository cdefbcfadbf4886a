"""Saves that cannot lose a model: everything goes into a sibling temporary folder, which then
takes the target's place in one step.

transformers' ``save_pretrained`` writes ``config.json`` first and the weights after it, straight
into the target: killed half-way, the folder holds a recipe without weights, or (when it overwrote
a good model) the new recipe beside the old weights. :func:`save` writes the model (and the image
processor) into ``.NAME.surgery-tmp-*`` next to the target, carries over the files of the old
folder that the new save does not replace (a model card, results, exports), and swaps the two
folders: with one ``renameat2(RENAME_EXCHANGE)`` on Linux, else with two renames, whose window a
later save repairs. Saves into one parent folder are serialized by a lock on that folder, and a
save cleans up what a killed one left behind. Rewritten models route ``model.save_pretrained``
here (:func:`surgery.checkpoint.attach.sync_recipe`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import inspect
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from surgery.checkpoint.adapter import ADAPTER, ADAPTER_ATTR, adapter_digest
from surgery.checkpoint.integration import quiet_progress
from surgery.checkpoint.marker import mark_config_file
from surgery.data.processor import load_processor
from surgery.errors import SurgeryError
from surgery.toolkit.adapters import holds_adapter_layers, is_peft_model
from surgery.toolkit.completeness import refuse_incomplete

TMP = ".surgery-tmp-"
OLD = ".surgery-old-"
# files a save writes or replaces; everything else in an existing folder is carried over
# (an adapter belongs to the weights it was trained on: a new save never keeps an old one)
REPLACED_PREFIXES = ("model.safetensors", "model-", "pytorch_model", "config.json", ADAPTER)


def save(model: Any, folder: str | os.PathLike[str], *, processor: Any = None, **kwargs: Any) -> Path:
    """Save ``model`` (and ``processor``) to ``folder`` atomically; ``kwargs`` go to ``save_pretrained``.

    A ``PeftModel`` (LoRA recovery with ``merge=False``) saves as the model without its adapters in
    ``folder`` and PEFT's adapter in ``folder/adapter``, recorded in the model's weights: ``surgery.load(folder)``
    rebuilds it (:mod:`surgery.checkpoint.adapter`)."""
    adapter = None
    if is_peft_model(model):
        adapter, model = model, without_adapters(model)
        if getattr(model, "hf_quantizer", None) is None:
            raise SurgeryError(
                "cannot save this PeftModel: surgery keeps a LoRA adapter beside a rewritten model only "
                "(it records the adapter in the model's weights); merge it (merge_and_unload) and save "
                "the model, or save it with PEFT's own save_pretrained"
            )
    elif holds_adapter_layers(model):
        raise SurgeryError(
            "cannot save this model: PEFT's adapter layers are inside it; save the PeftModel that wraps "
            "it (surgery.save(result.adapter, folder) after recover(..., lora={'merge': False})), or merge "
            "them first (merge_and_unload)"
        )
    refuse_incomplete(model, "save")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SurgeryError(f"cannot save to {folder}: it is a file, not a folder.")
    parent = folder.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(parent):
        clean_leftovers(folder)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}{TMP}", dir=parent))
        try:
            if getattr(model, "hf_quantizer", None) is not None and "save_original_format" in _save_parameters(model):
                # transformers 5.x would rename the tensors back to its "original format"; the surgery
                # quantizer already wrote the anatomy's reference names (surgery.core.names)
                kwargs.setdefault("save_original_format", False)
            with quiet_progress():
                if adapter is not None:  # first: the model's weights record the adapter's digest
                    adapter.save_pretrained(staging / ADAPTER, safe_serialization=True)
                    model.__dict__[ADAPTER_ATTR] = adapter_digest(staging / ADAPTER)
                type(model).save_pretrained(model, staging, **kwargs)
            mark_config_file(staging)
            if processor is not None:
                processor.save_pretrained(staging)
            if folder.exists():
                _carry_over(folder, staging)
            os.chmod(staging, _folder_mode(folder))
            _swap(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _folder_mode(folder: Path) -> int:
    """The mode ``save_pretrained`` leaves: an existing folder keeps its own, a new one gets the umask's
    (the staging folder from ``mkdtemp`` is private, 0700)."""
    if folder.is_dir():
        return folder.stat().st_mode & 0o7777
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask


def without_adapters(peft_model: Any) -> Any:
    """A copy of the model under ``peft_model`` with PEFT's layers taken out (not merged)."""
    import copy

    return copy.deepcopy(peft_model).unload()


def _save_parameters(model: Any) -> Mapping[str, Any]:
    return inspect.signature(type(model).save_pretrained).parameters


def atomic_save_pretrained(self: Any, save_directory: str | os.PathLike[str], **kwargs: Any) -> None:
    """``model.save_pretrained`` of a rewritten model: transformers' save, made atomic by :func:`save`."""
    if not kwargs.get("is_main_process", True):
        return None
    save(self, save_directory, **kwargs)
    return None


def clean_leftovers(folder: Path) -> None:
    """Remove what killed saves to ``folder`` left behind; if one died between its two renames
    (no folder, an old copy beside it), put the old copy back first. Call with the lock held."""
    parent = folder.absolute().parent
    olds = sorted(parent.glob(f".{folder.name}{OLD}*"), key=lambda p: p.stat().st_mtime)
    if olds and not folder.exists():
        olds.pop().rename(folder)
    for path in olds + list(parent.glob(f".{folder.name}{TMP}*")):
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def folder_lock(folder: Path):
    """An exclusive ``flock`` on ``folder`` itself (no lock file to leave behind); a no-op where
    ``fcntl`` does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks on folders
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _carry_over(old: Path, new: Path) -> None:
    for entry in old.iterdir():
        if (new / entry.name).exists() or entry.name.startswith(REPLACED_PREFIXES):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, new / entry.name)


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    try:
        if Path(source).is_symlink():
            raise OSError
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


def _swap(staging: Path, folder: Path) -> None:
    """Put ``staging`` at ``folder``; afterwards ``staging`` holds the old folder (or nothing)."""
    if not folder.exists():
        staging.rename(folder)
        return
    if _exchange(staging, folder):
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{folder.name}{OLD}", dir=folder.absolute().parent))
    backup.rmdir()
    folder.rename(backup)
    staging.rename(folder)
    shutil.rmtree(backup, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two folders (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where
    the system or filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))


def save_from(model: Any, output: str | Path, source: str | Path | None = None) -> None:
    """Save weights + recipe, and the source's image processor when it has one, in one atomic step."""
    processor = None
    if source is not None:
        try:
            processor = load_processor(source)
        except (OSError, ValueError):
            print(f"surgery: note: {source} has no image processor; none was saved", file=sys.stderr)
    save(model, output, processor=processor)
