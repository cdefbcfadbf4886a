"""``drop_layers``: remove whole transformer blocks (depth pruning) from ViT and DeiT.

A complete third-party surgery plugin: a config, a rewrite that uses only the anatomy's roles, a
revert, the options `surgery search` may try, and the registration hook.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch import nn

import surgery
from surgery.errors import RevertError

__version__ = "0.1.0"


@dataclasses.dataclass(frozen=True)
class DropLayersConfig(surgery.SurgeryConfig):
    """Attributes: layers: indices of the blocks to remove (0 is the first block)."""

    plugin: ClassVar[str] = "drop_layers"
    layers: tuple[int, ...] = ()

    def validate(self) -> None:
        if not self.layers:
            raise self.invalid("layers", list(self.layers), "a non-empty list of block indices, e.g. [10, 11]")
        if min(self.layers) < 0 or len(set(self.layers)) != len(self.layers):
            raise self.invalid("layers", list(self.layers), "distinct block indices >= 0")


def apply(model: nn.Module, config: DropLayersConfig, anatomy: surgery.Anatomy) -> surgery.Rewrite:
    blocks = anatomy.find(model, "block")
    if max(config.layers) >= len(blocks) or len(config.layers) >= len(blocks):
        raise config.invalid("layers", list(config.layers), f"indices below {len(blocks)}, keeping at least one block")
    container = blocks[0][0].rsplit(".", 1)[0]
    original = model.get_submodule(container)
    kept = nn.ModuleList(block for index, (_, block) in enumerate(blocks) if index not in config.layers)
    model.set_submodule(container, kept)
    dropped = [name for index, (name, _) in enumerate(blocks) if index in config.layers]
    return surgery.Rewrite(targets=dropped, undo=(container, original))


def revert(model: nn.Module, rewrite: surgery.Rewrite) -> None:
    container, original = rewrite.undo
    if any(p.is_meta for p in original.parameters()):
        raise RevertError(
            "drop_layers: the dropped blocks' weights are not in the checkpoint; revert works only "
            "in the session that applied the step."
        )
    model.set_submodule(container, original)


@surgery.hookimpl
def surgery_register_methods() -> list[surgery.SurgeryMethod]:
    return [
        surgery.SurgeryMethod(
            name="drop_layers",
            summary="Remove whole transformer blocks (depth pruning)",
            config_class=DropLayersConfig,
            model_types=("vit", "deit"),
            apply=apply,
            revert=revert,
            roles=("block",),
            version=__version__,
            # what `surgery search` may try: drop the second block, or the first two; the model then
            # needs recovery (distillation) before its accuracy means anything
            search=surgery.SearchSpace(options={"layers": ((1,), (0, 1))}, needs_recovery=True),
        )
    ]
