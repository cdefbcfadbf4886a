"""EcoFormer under :func:`surgery.recover`: when the hash functions are learned.

The official recipe switches a trained model to EcoFormer and learns each block's hash on the first
fine-tuning batch (``is_trained = False``); it would learn them again every k = 300 epochs, which a
30-epoch run never reaches. So with ``relearn_on_recover`` (default) every block learns its hash again
on the first batch of the recovery run, from the training data; after that the hash (A, mu, the anchors:
buffers) stays fixed while ``to_qk`` and ``to_v`` train through the straight-through sign.
"""

from __future__ import annotations

from torch import nn

from surgery.core.anatomy import Anatomy
from surgery.plugins.ecoformer.config import EcoFormerConfig
from surgery.plugins.ecoformer.layers import EcoFormerAttention
from surgery.toolkit.adapters import module_at
from surgery.toolkit.training import TrainingHooks


class HashLearning(TrainingHooks):
    def __init__(self, layers: list[EcoFormerAttention], config: EcoFormerConfig):
        self.layers, self.config, self.started = layers, config, False

    def schedule(self, progress: float) -> None:
        if not self.started:  # the first step of this process: the run's start, or a resumed run (progress > 0),
            self.started = True  # whose checkpoint holds the hash learned at its start
            for layer in self.layers:
                layer.learn_next = (self.config.relearn_on_recover and progress == 0) or not layer.hash_learned()

    def describe(self, progress: float) -> dict[str, float]:
        return {"ecoformer_hashes_learned": float(sum(layer.hash_learned() for layer in self.layers))}

    def finish(self) -> None:
        for layer in self.layers:
            layer.learn_next = False


def training(model: nn.Module, config: EcoFormerConfig, targets: list[str], anatomy: Anatomy) -> HashLearning:
    layers = [module_at(model, name) for name in targets]
    return HashLearning([m for m in layers if isinstance(m, EcoFormerAttention)], config)
