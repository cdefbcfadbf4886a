"""Options of :func:`surgery.recover` and what it returns."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

from surgery.core.history import portable_source
from surgery.core.options import SurgeryConfig


@dataclasses.dataclass(frozen=True)
class RecoveryConfig(SurgeryConfig):
    """Options of :func:`recover`.

    Attributes:
        epochs: epochs training every parameter.
        warmup_epochs: epochs before those training only the parameters the surgery added.
        lr: peak learning rate of the main stage (AdamW).
        warmup_lr: learning rate of the new-parameters stage (constant).
        weight_decay: AdamW decoupled weight decay (not on biases, norms or 1-d parameters).
        batch_size: images per batch on each process.
        temperature: distillation temperature T.
        distill_weight: weight of the KL term; 1 - it weighs the label cross-entropy.
        feature_weight: weight of hidden-state distillation (0 = off).
        schedule_warmup: fraction of the main stage with a linear learning-rate warm-up.
        max_grad_norm: gradient clipping (0 = off).
        shift: random translation of each training image by up to this fraction of its side (0 = off;
            edges replicated); student and teacher see the same shifted image ("consistent teaching",
            Beyer et al., CVPR 2022).
        mixed_precision: "auto" (bf16 on GPUs that have it, else fp16 on GPU, none on CPU), "no", "bf16", "fp16".
        seed: seeds the data order and initialisation randomness.
        keep_checkpoints: how many epoch checkpoints to keep.
    """

    plugin: ClassVar[str] = "recover"

    epochs: int = 10
    warmup_epochs: int = 0
    lr: float = 5e-4
    warmup_lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 32
    temperature: float = 2.0
    distill_weight: float = 0.5
    feature_weight: float = 0.0
    schedule_warmup: float = 0.1
    max_grad_norm: float = 1.0
    shift: float = 0.0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    seed: int = 0
    keep_checkpoints: int = 2

    def validate(self) -> None:
        for name in ("epochs", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise self.invalid(name, getattr(self, name), "an integer >= 0")
        if self.epochs + self.warmup_epochs == 0:
            raise self.invalid("epochs", self.epochs, "at least one epoch (epochs + warmup_epochs >= 1)")
        for name in ("lr", "warmup_lr", "temperature"):
            if getattr(self, name) <= 0:
                raise self.invalid(name, getattr(self, name), "a number > 0")
        if not 0.0 <= self.shift < 0.5:
            raise self.invalid("shift", self.shift, "a fraction of the image side in [0, 0.5)")
        for name in ("distill_weight", "schedule_warmup"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise self.invalid(name, getattr(self, name), "a number in [0, 1]")
        for name in ("weight_decay", "feature_weight", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise self.invalid(name, getattr(self, name), "a number >= 0")
        if self.batch_size < 1:
            raise self.invalid("batch_size", self.batch_size, "an integer >= 1")
        if self.keep_checkpoints < 1:
            raise self.invalid("keep_checkpoints", self.keep_checkpoints, "an integer >= 1")

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.epochs


@dataclasses.dataclass
class RecoveryResult:
    """What :func:`recover` did: per-epoch losses and accuracy, and the accuracy around it."""

    config: dict[str, Any]
    new_parameters: list[str]
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    teacher_accuracy: float | None = None
    accuracy_before: float | None = None
    accuracy: float | None = None
    resumed_from: str | None = None
    processes: int = 1
    mixed_precision: str = "no"
    seconds: float = 0.0
    trainable_parameters: int = 0
    parameters: int = 0
    lora: dict[str, Any] | None = None  # the LoRA options, the outcome and the adapters' size (lora=...)
    adapter: Any = dataclasses.field(default=None, repr=False, compare=False)  # the PeftModel, when kept

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(dataclasses.replace(self, adapter=None))  # asdict would deep-copy the model
        data.pop("adapter")
        return data

    def figures(self, teacher: str, data: str, dataset: str) -> dict[str, Any]:
        """The figures a model card shows (``surgery.card(folder, results=...)``, or merged into
        ``surgery_results.json``): accuracy before surgery, right after it, after recovery, and how."""
        summary = {k: v for k, v in self.to_dict().items() if k != "history"}
        return {
            "accuracy": self.accuracy,
            "accuracy_before": self.teacher_accuracy,
            "accuracy_after_surgery": self.accuracy_before,
            "dataset": dataset,
            "recovery": {
                **summary,
                "teacher": portable_source(teacher),
                "data": portable_source(data),
                "evaluated_on": dataset,
            },
        }
