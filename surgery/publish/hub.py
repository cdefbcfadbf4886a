"""``surgery push``: upload a model folder to the Hugging Face Hub with huggingface_hub.

Only the model's own files go up (:func:`publishable_files`): weights (safetensors), config, image
processor, model card and its plot, results, a kept LoRA adapter (``adapter/``) and export folders (those with an
``export_report.json``). Training checkpoints, optimizer and random states, temporary files of an
interrupted save and anything else are skipped, and the CLI lists what it skipped. A folder that
does not load with :func:`surgery.load` is refused before anything is uploaded. The endpoint comes
from ``HF_ENDPOINT`` like every huggingface_hub call.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from surgery.checkpoint.adapter import ADAPTER, ADAPTER_FILES
from surgery.errors import PushError

logger = logging.getLogger("surgery")

MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "README.md",
    "surgery_figures.png",
    "surgery_results.json",
    "recovery_log.json",
    ".gitattributes",
)
EXPORT_SUFFIXES = (".onnx", ".onnx_data", ".xml", ".bin", ".json")


def push(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    new: bool = False,
    commit_message: str = "Upload model rewritten with surgery",
    endpoint: str | None = None,
    check: bool = True,
) -> str:
    """Create ``repo_id`` (unless it exists and ``new`` is False) and upload the model files of
    ``folder``; returns the commit URL.

    ``endpoint`` defaults to ``$HF_ENDPOINT`` (read now, not at import) or the public Hub. ``check``
    loads the folder with :func:`surgery.load` first and refuses it if that fails.
    """
    import os

    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import get_token, validate_repo_id

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise PushError(f"{folder} is not a saved model folder (no config.json).")
    try:
        validate_repo_id(repo_id)
        if repo_id.count("/") > 1 or ".." in repo_id:
            raise HFValidationError("at most one '/' and no '..'")
    except HFValidationError as error:
        raise PushError(
            f"push: {repo_id[:100]!r} is not a Hub repository id (namespace/name of letters, digits, "
            f"'-', '_' and '.'): {str(error).splitlines()[0][:200]}"
        ) from error
    files, skipped = publishable_files(folder)
    if check:
        _check_loads(folder)
    for name in skipped:
        logger.info("surgery push: skipped %s (not a file of the model)", name)
    if constants.HF_HUB_OFFLINE:
        raise PushError("offline mode is on (HF_HUB_OFFLINE=1): unset it to push.")
    token = token or get_token()
    if not token:
        raise PushError("no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login`.")
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=not new, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, allow_patterns=files
        )
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 409:
            raise PushError(f"the repository {repo_id} already exists (drop --new to upload into it).") from error
        if status in (401, 403):
            raise PushError(
                f"the Hub refused the token for {repo_id} (HTTP {status}): check that it has write access."
            ) from error
        raise PushError(f"the Hub answered HTTP {status} for {repo_id}: {error.server_message or error}") from error
    except _connection_errors() as error:
        raise PushError(f"cannot reach the Hub at {endpoint}: the network is down or the address is wrong.") from error
    return commit.commit_url


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What a failed connection raises: requests' error (huggingface_hub < 1), httpx's (1.x) and httpx2's (2.x)."""
    errors: list[type[BaseException]] = []
    for module, name in (
        ("requests.exceptions", "ConnectionError"),
        ("httpx", "TransportError"),
        ("httpx2", "TransportError"),
    ):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except ImportError:
            continue
    return tuple(errors) or (ConnectionError,)


def publishable_files(folder: str | Path) -> tuple[list[str], list[str]]:
    """``(files to upload, entries skipped)`` of a model folder, as paths relative to it."""
    folder = Path(folder)
    files, skipped = [], []
    shards = _index_shards(folder)
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if entry.is_file() and not entry.is_symlink() and (name in MODEL_FILES or name in shards):
            files.append(name)
        elif name == ADAPTER and entry.is_dir() and not entry.is_symlink():  # a kept LoRA adapter goes with its model
            for path in sorted(entry.rglob("*")):
                relative = path.relative_to(folder).as_posix()
                if path.is_file() and not path.is_symlink() and path.parent == entry and path.name in ADAPTER_FILES:
                    files.append(relative)
                elif path.is_file() or path.is_symlink():
                    skipped.append(relative)
        elif entry.is_dir() and not entry.is_symlink() and (entry / "export_report.json").is_file():
            for path in sorted(entry.rglob("*")):
                relative = path.relative_to(folder).as_posix()
                if (
                    path.is_file()
                    and not path.is_symlink()
                    and path.suffix in EXPORT_SUFFIXES
                    and path.parent == entry
                ):
                    files.append(relative)
                elif path.is_file() or path.is_symlink():
                    skipped.append(relative)
        else:
            skipped.append(name + ("/" if entry.is_dir() else ""))
    return files, skipped


def _index_shards(folder: Path) -> set[str]:
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return set()
    try:
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
    except (ValueError, AttributeError):
        return set()
    return {"model.safetensors.index.json"} | {v for v in weight_map.values() if isinstance(v, str) and "/" not in v}


def _check_loads(folder: Path) -> None:
    from surgery.checkpoint.loading import load

    try:
        load(folder)
    except Exception as error:  # anything that stops it loading: refuse before uploading
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise PushError(f"{folder} does not load with surgery.load, so it is not pushed: {first}") from error
