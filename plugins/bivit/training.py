"""BiViT's cross-layer binarization (CLB) within one :func:`surgery.recover` run.

The paper binarizes and recovers the attention first, then the MLP. With ``parts="all"`` and
``staged``, the MLP's binary linears compute in full precision (their latent float weights) for
the first ``stage_split`` of the run, then binary, so one recovery run covers both stages. The
two-call form (``parts="attention"``, recover, ``parts="mlp"``, recover) remains available.
"""

from __future__ import annotations

from torch import nn

from surgery.core.anatomy import Anatomy
from surgery.plugins.bivit.config import BiViTConfig
from surgery.plugins.bivit.layers import BinaryLinear
from surgery.toolkit.adapters import module_at
from surgery.toolkit.training import TrainingHooks


class CrossLayerStages(TrainingHooks):
    def __init__(self, mlp_linears: list[BinaryLinear], config: BiViTConfig):
        self.mlp_linears, self.config = mlp_linears, config

    def first_stage(self, progress: float) -> bool:
        return progress < self.config.stage_split

    def schedule(self, progress: float) -> None:
        for linear in self.mlp_linears:
            linear.binarize = not self.first_stage(progress)

    def describe(self, progress: float) -> dict[str, float]:
        return {"bivit_stage": 1.0 if self.first_stage(progress) else 2.0}

    def finish(self) -> None:
        for linear in self.mlp_linears:
            linear.binarize = True


def training(model: nn.Module, config: BiViTConfig, targets: list[str], anatomy: Anatomy) -> TrainingHooks:
    if config.parts != "all" or not config.staged:
        return TrainingHooks()
    mlp_names = {name for name, _ in anatomy.find_group(model, "mlp_linears")}
    linears = [module_at(model, name) for name in targets if name in mlp_names]
    return CrossLayerStages([m for m in linears if isinstance(m, BinaryLinear)], config)
