"""Image processors, loaded without ever running code from where they come from."""

from __future__ import annotations

import os
from typing import Any


def load_processor(source: str | os.PathLike[str], **kwargs: Any) -> Any:
    """The image processor saved in ``source`` (a folder or Hub id), never from code it names: a
    ``preprocessor_config.json`` with an ``auto_map`` is read with transformers' own classes or refused,
    and transformers never asks whether to run it. Every surgery path loads processors through here."""
    from transformers import AutoImageProcessor

    kwargs.pop("trust_remote_code", None)
    kwargs.setdefault("use_fast", False)
    return AutoImageProcessor.from_pretrained(source, trust_remote_code=False, **kwargs)
