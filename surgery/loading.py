"""``surgery.load``: the loud, strict way to reload a rewritten model from a folder or the Hub.

It checks the recipe before building anything (every plugin installed, a readable format), lets
transformers build the skeleton and replay the recipe (:mod:`surgery.integration`), loads the
weights from safetensors only, and fails if any weight is missing, unexpected or of the wrong shape.
No code from the checkpoint is ever executed (``trust_remote_code=False``) and no pickle is read.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel

from surgery.errors import RecipeError
from surgery.history import get_history
from surgery.manager import get_host
from surgery.recipe import read_steps


def load(pretrained: str | os.PathLike[str], model_class: Any = None, **kwargs: Any) -> PreTrainedModel:
    """Load a model folder or Hub id, replaying its surgery recipe, with strict weight loading.

    ``model_class`` defaults to ``AutoModelForImageClassification``; other keyword arguments
    (``revision``, ``token``, ``cache_dir``, ``dtype`` ...) go to ``from_pretrained``.
    """
    for refused in ("trust_remote_code", "use_safetensors"):
        if kwargs.pop(refused, None):
            raise RecipeError(f"surgery.load does not accept {refused}=True: it never runs checkpoint code or reads pickles.")
    hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    config = AutoConfig.from_pretrained(pretrained, trust_remote_code=False, **hub_kwargs)
    steps = read_steps(config)
    check_plugins_installed(steps)
    model_class = model_class or AutoModelForImageClassification
    model, info = model_class.from_pretrained(
        pretrained,
        config=config,
        use_safetensors=True,
        trust_remote_code=False,
        output_loading_info=True,
        **kwargs,
    )
    _check_loading_info(pretrained, info)
    if len(get_history(model)) != len(steps):
        raise RecipeError(
            f"{pretrained}: the recipe has {len(steps)} step(s) but {len(get_history(model))} were replayed; "
            "another quantization config may have taken precedence."
        )
    return model


def check_plugins_installed(steps: list[dict[str, Any]]) -> None:
    """Raise one error naming every plugin of the recipe that is not installed, and its package."""
    host = get_host()
    missing = []
    for index, step in enumerate(steps, 1):
        if step["plugin"] not in host.methods:
            package = step.get("package") or "the package that provides it"
            version = f" {step['plugin_version']}" if step.get("plugin_version") else ""
            missing.append(
                f"step {index} uses plugin '{step['plugin']}'{version} from package '{package}', which is not "
                f"installed: pip install {package}"
            )
    if missing:
        problems = [str(p) for p in host.problems]
        detail = ("\n  installed plugins that failed to load:\n  - " + "\n  - ".join(problems)) if problems else ""
        raise RecipeError("cannot replay the saved recipe:\n  - " + "\n  - ".join(missing) + detail)


def _check_loading_info(source: Any, info: dict[str, Any]) -> None:
    problems = []
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        values = list(info.get(key) or [])
        if values:
            shown = ", ".join(str(v) for v in values[:5]) + (" ..." if len(values) > 5 else "")
            problems.append(f"{key.replace('_', ' ')}: {shown}")
    if problems:
        raise RecipeError(f"{source}: the weights do not fit the rebuilt model ({'; '.join(problems)}).")
