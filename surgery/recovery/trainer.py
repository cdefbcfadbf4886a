"""Recovery inside a ``transformers.Trainer``: :class:`DistillationTrainer`, for users who train with
the Trainer in their own script.

It trains as :func:`surgery.recover` does, step for step: the same loss (label cross-entropy and
distillation from the original model at temperature T, hidden-state distillation where asked, the
plugins' training hooks and their schedules, the training-time shift), the same four AdamW groups
and the same two-stage learning rate (``warmup_epochs`` training only the parameters the surgery
added at ``warmup_lr``, then everything with a linear warm-up and a cosine decay). What the Trainer
owns stays the Trainer's: the data loaders, the device and mixed precision, logging, evaluation,
checkpoints and their rotation, and the distributed launch. Its checkpoints are surgery folders
(the recipe in ``config.json``), and resuming from one reloads it with surgery's loader, so the
weights come back exactly.

The learning rate, weight decay, gradient clipping, epochs and seed come from the
``TrainingArguments``; :meth:`DistillationTrainer.arguments` builds them from a
:class:`~surgery.recovery.config.RecoveryConfig`, so both paths run the same recipe. LoRA recovery
is :func:`surgery.recover`'s (``lora=``); a PEFT-wrapped model trains here as it is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from surgery.errors import SurgeryError
from surgery.recovery.config import RecoveryConfig
from surgery.recovery.hooks import step_hooks
from surgery.recovery.lora import base_of
from surgery.recovery.losses import loss_terms
from surgery.recovery.schedule import lr_factors, new_parameter_names, parameter_groups


class DistillationTrainer(Trainer):
    """A ``transformers.Trainer`` that recovers a rewritten ``model`` by distillation from ``teacher``
    (the original model; ``None`` trains on the labels alone, with ``distill_weight=0`` and
    ``feature_weight=0``). ``recovery`` holds the distillation options (:class:`RecoveryConfig`:
    temperature, distill_weight, feature_weight, shift, warmup_epochs, warmup_lr, schedule_warmup);
    ``args`` must train ``warmup_epochs`` plus at least one epoch. Batches are dicts of
    ``pixel_values`` and ``labels``. ``step_terms`` holds every optimisation step's loss terms."""

    def __init__(
        self, model: Any, teacher: Any, args: TrainingArguments, recovery: RecoveryConfig | None = None, **kwargs: Any
    ) -> None:
        recovery = recovery or RecoveryConfig()
        epochs = args.num_train_epochs
        if args.max_steps > 0 or epochs != int(epochs) or int(epochs) <= recovery.warmup_epochs:
            raise SurgeryError(
                f"DistillationTrainer: TrainingArguments must train whole epochs, more than the "
                f"recovery's warmup_epochs={recovery.warmup_epochs} (got num_train_epochs={epochs}, "
                f"max_steps={args.max_steps}); DistillationTrainer.arguments(recovery, ...) builds them"
            )
        if getattr(args, "save_safetensors", True) is False:  # transformers 4.x offers pickled checkpoints
            raise SurgeryError(
                "DistillationTrainer: save_safetensors=False is refused; surgery checkpoints load from "
                "safetensors only"
            )
        if teacher is None and (recovery.distill_weight > 0 or recovery.feature_weight > 0):
            raise SurgeryError(
                "DistillationTrainer: without a teacher, set distill_weight=0 and feature_weight=0 "
                "(labels only), or pass the original model as teacher"
            )
        # the recipe as the Trainer runs it: its rate, decay, clipping and epochs
        self.recovery = dataclasses.replace(
            recovery,
            lr=args.learning_rate,
            weight_decay=args.weight_decay,
            max_grad_norm=args.max_grad_norm,
            epochs=int(epochs) - recovery.warmup_epochs,
        )
        self.teacher = teacher
        self.new_parameters = set(new_parameter_names(model, teacher)) if teacher is not None else set()
        self.hooks = step_hooks(base_of(model))
        self.step_terms: list[dict[str, float]] = []
        self._teacher_state = None
        super().__init__(model=model, args=args, **kwargs)
        self.model_accepts_loss_kwargs = False  # the loss is a batch mean: the Trainer divides it for accumulation
        self.add_callback(_Lifecycle(self))

    @staticmethod
    def arguments(recovery: RecoveryConfig, output_dir: str | Path, **overrides: Any) -> TrainingArguments:
        """``TrainingArguments`` that run ``recovery`` as :func:`surgery.recover` does (epochs, rate, decay,
        clipping, batch size, seed); ``overrides`` go to ``TrainingArguments`` (logging, saving ...)."""
        values = dict(
            output_dir=str(output_dir),
            num_train_epochs=recovery.total_epochs,
            learning_rate=recovery.lr,
            weight_decay=recovery.weight_decay,
            max_grad_norm=recovery.max_grad_norm,
            per_device_train_batch_size=recovery.batch_size,
            seed=recovery.seed,
            data_seed=recovery.seed,
            report_to=[],
        )  # checkpoints are safetensors (a surgery folder): the quantizer writes them
        return TrainingArguments(**{**values, **overrides})

    def create_optimizer(self):
        if self.optimizer is None:
            groups = [
                dict(g, lr=self.recovery.lr)
                for g in parameter_groups(self.model, self.new_parameters, self.recovery)
                if g["params"]
            ]
            if not groups:
                raise SurgeryError("DistillationTrainer: the model has no trainable parameters")
            self.optimizer = torch.optim.AdamW(
                groups,
                lr=self.recovery.lr,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            optimizer = optimizer or self.optimizer
            per_epoch = max(1, num_training_steps // self.recovery.total_epochs)
            new, original = lr_factors(self.recovery, per_epoch)
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, [new if group["new"] else original for group in optimizer.param_groups]
            )
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """Training: :func:`surgery.recover`'s loss. Evaluation: the label cross-entropy of the unshifted images."""
        if not model.training:
            out = model(pixel_values=inputs["pixel_values"])
            loss = torch.nn.functional.cross_entropy(out.logits.float(), inputs["labels"])
            return (loss, out) if return_outputs else loss
        progress = self.state.global_step / max(1, self.state.max_steps)  # the hooks' schedules, as in recover
        for hook in self.hooks:
            hook.schedule(progress)
        terms = loss_terms(model, self.teacher, inputs, self.hooks, self.recovery)
        self.step_terms.append({key: float(value.detach()) for key, value in terms.items()})
        return (terms["loss"], None) if return_outputs else terms["loss"]

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """A checkpoint is a surgery folder: its weights come back through surgery's loader (reference
        names, packed weights, the recipe checked), into the model being trained."""
        from surgery.checkpoint.loading import load

        target = base_of(model or self.model)
        saved = load(resume_from_checkpoint, model_class=type(target))
        target.load_state_dict(saved.state_dict(), strict=True)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)


class _Lifecycle(TrainerCallback):
    """The teacher frozen and in eval mode while it teaches, and given back as it came; the plugins'
    training hooks finished when training ends (as :func:`surgery.recover` does)."""

    def __init__(self, trainer: DistillationTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        teacher = self.trainer.teacher
        if teacher is not None:
            self.trainer._teacher_state = (teacher.training, [(p, p.requires_grad) for p in teacher.parameters()])
            device = next(self.trainer.model.parameters()).device
            teacher.to(device).eval().requires_grad_(False)

    def on_train_end(self, args, state, control, **kwargs):
        saved = self.trainer._teacher_state
        if saved is not None:
            self.trainer.teacher.train(saved[0])
            for parameter, flag in saved[1]:
                parameter.requires_grad_(flag)
        for hook in self.trainer.hooks:
            hook.finish()
