"""Castling's training-only part under :func:`surgery.recover`: the auxiliary masked softmax branch.

The paper trains with the branch and regularizes its masks "to gradually become zeros", so that
inference runs linear-angular attention and the conv alone; the schedule is not in the released
code. Here its weight falls linearly from ``aux_weight`` to 0 at ``aux_decay`` of the run, and an
optional penalty (``aux_penalty``) on the branch's kept probability mass joins the loss.
"""

from __future__ import annotations

import torch
from torch import nn

from surgery.core.anatomy import Anatomy
from surgery.errors import SurgeryError
from surgery.plugins.castling.config import CastlingConfig
from surgery.plugins.castling.layers import LinearAngularAttention
from surgery.toolkit.adapters import module_at
from surgery.toolkit.training import TrainingHooks


class AuxiliaryBranchSchedule(TrainingHooks):
    def __init__(self, layers: list[LinearAngularAttention], config: CastlingConfig):
        self.layers, self.config = layers, config

    def weight_at(self, progress: float) -> float:
        return self.config.aux_weight * max(0.0, 1.0 - progress / self.config.aux_decay)

    def schedule(self, progress: float) -> None:
        for layer in self.layers:
            layer.aux_weight = self.weight_at(progress)

    def loss(self) -> torch.Tensor | None:
        penalties = [layer.aux_penalty for layer in self.layers if layer.aux_penalty is not None]
        if self.config.aux_penalty == 0 or not penalties:
            return None
        return self.config.aux_penalty * torch.stack(penalties).mean()

    def describe(self, progress: float) -> dict[str, float]:
        return {"castling_aux_weight": self.weight_at(progress)}

    def finish(self) -> None:
        for layer in self.layers:
            layer.aux_weight, layer.aux_penalty = self.config.aux_weight, None


def training(
    model: nn.Module, config: CastlingConfig, targets: list[str], anatomy: Anatomy
) -> AuxiliaryBranchSchedule:
    refuse_zero_prefix_tokens(model, anatomy)
    layers = [module_at(model, name) for name in targets]
    return AuxiliaryBranchSchedule([m for m in layers if isinstance(m, LinearAngularAttention)], config)


def refuse_zero_prefix_tokens(model: nn.Module, anatomy: Anatomy) -> None:
    """An all-zero prefix token (transformers initialises DeiT's cls and distillation tokens to zero)
    is a fixed point of linear-angular attention: it stays zero through every block, and each
    LayerNorm (eps 1e-12) multiplies its gradient by about 1e6, so training overflows to NaN within a
    few blocks. Trained checkpoints never have one; an untrained model is refused with the reason."""
    zero = [
        name
        for name, parameter in anatomy.prefix_token_parameters(model)
        if parameter.numel() and not parameter.detach().any()
    ]
    if zero:
        raise SurgeryError(
            f"castling: {', '.join(zero)} {'is' if len(zero) == 1 else 'are'} all zero (an untrained model): "
            "linear-angular attention keeps a zero token at zero, and its gradients overflow to NaN through "
            "the LayerNorms. Start from a trained checkpoint, or initialise the token(s) (e.g. normal, std 0.02)."
        )
