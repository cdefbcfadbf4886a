"""``surgery push``: upload a model folder to the Hugging Face Hub with huggingface_hub.

The same result as ``hf upload REPO_ID DIR``: the repository is created if needed, then every file
of the folder is committed. The endpoint comes from ``HF_ENDPOINT`` like every huggingface_hub call.
"""

from __future__ import annotations

from pathlib import Path

from surgery.errors import SurgeryError


class PushError(SurgeryError):
    """The upload could not be done (no token, no network, repository exists ...)."""


def push(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None, new: bool = False,
         commit_message: str = "Upload model rewritten with surgery", endpoint: str | None = None) -> str:
    """Create ``repo_id`` (unless it exists and ``new`` is False) and upload ``folder``; returns the commit URL.

    ``endpoint`` defaults to ``$HF_ENDPOINT`` (read now, not at import) or the public Hub.
    """
    import os

    import requests
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import get_token

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise PushError(f"{folder} is not a saved model folder (no config.json).")
    if constants.HF_HUB_OFFLINE:
        raise PushError("offline mode is on (HF_HUB_OFFLINE=1): unset it to push.")
    token = token or get_token()
    if not token:
        raise PushError("no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login`.")
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=not new, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 409:
            raise PushError(f"the repository {repo_id} already exists (drop --new to upload into it).") from error
        if status in (401, 403):
            raise PushError(f"the Hub refused the token for {repo_id} (HTTP {status}): check that it has write access.") from error
        raise PushError(f"the Hub answered HTTP {status} for {repo_id}: {error.server_message or error}") from error
    except requests.exceptions.ConnectionError as error:
        raise PushError(f"cannot reach the Hub at {endpoint}: the network is down or the address is wrong.") from error
    return commit.commit_url
