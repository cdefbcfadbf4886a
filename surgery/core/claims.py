"""Overlaps found from what each step claims: two steps may share a model, never a module.

Every step's ``apply`` returns the module names it rewrites (:attr:`Rewrite.targets`; the recipe
keeps them). Two different methods whose targets share a name would both rewrite that module, so
the later one is refused, in words the anatomy provides ("the self-attention of block 0"). The host
needs no list of which plugins replace what: new methods are covered by what they claim. Pairs with
a declared conflict (``SurgeryMethod.conflicts``) are left to that reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from surgery.core.anatomy import Anatomy

ROLE_WORDS = {
    "attention": "the self-attention",
    "query": "the query projection",
    "key": "the key projection",
    "value": "the value projection",
    "attn_output": "the attention output projection",
    "mlp_in": "the first MLP linear",
    "mlp_out": "the second MLP linear",
    "block": "block",
    "encoder": "the encoder",
    "final_norm": "the final norm",
    "pooler": "the pooler",
    "pooler_norm": "the pooler's norm",
    "classifier": "the classifier",
    "patch_embed": "the patch embedding",
}
SHOWN = 3


def overlap_reasons(
    model: nn.Module,
    anatomy: Anatomy,
    applied: Iterable[tuple[str, list[str]]],
    planned: Iterable[tuple[str, list[str]]],
    conflicts: Mapping[tuple[str, str], object],
) -> list[str]:
    """Reasons for every module two different methods claim, in application order.

    ``applied``/``planned``: ``(plugin, targets)`` of the steps already in the model's history and of
    the steps about to run; ``conflicts``: the declared conflicts, keyed by (plugin, plugin) both ways.
    """
    owner: dict[str, str] = {}
    for plugin, targets in applied:
        for name in targets:
            owner.setdefault(name, plugin)
    clashes: dict[tuple[str, str], list[str]] = {}
    for plugin, targets in planned:
        for name in targets:
            earlier = owner.get(name)
            if earlier is not None and earlier != plugin and (plugin, earlier) not in conflicts:
                clashes.setdefault((plugin, earlier), []).append(name)
            owner.setdefault(name, plugin)
    reasons = []
    for (plugin, earlier), names in clashes.items():
        for name in names[:SHOWN]:
            reasons.append(
                f"{plugin} and {earlier} would both replace {describe(model, anatomy, name)}; "
                "choose disjoint modules (e.g. `layers`) or drop one"
            )
        if len(names) > SHOWN:
            reasons.append(f"{plugin} and {earlier} would both replace {len(names) - SHOWN} more module(s)")
    return reasons


def describe(model: nn.Module, anatomy: Anatomy, name: str) -> str:
    """``name`` in the anatomy's words: "the self-attention of block 0", else the module name."""
    blocks = [block for block, _ in anatomy.find(model, "block")]
    roles = anatomy.layout_of(model).roles
    for role, words in ROLE_WORDS.items():
        if role in roles and any(n == name for n, _ in anatomy.find(model, role)):
            owner = next((i for i, block in enumerate(blocks) if name == block or name.startswith(block + ".")), None)
            if owner is None:
                return f"{words} ({name})"
            return f"{words} of block {owner}" if role != "block" else f"block {owner}"
    return name
