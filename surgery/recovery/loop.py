"""Recover accuracy after surgery: knowledge distillation from the original model, through accelerate.

The loss is Hinton et al.'s: ``(1 - distill_weight) * CE(student, labels) + distill_weight * T^2 *
KL(softmax(teacher / T) || softmax(student / T))``, plus ``feature_weight`` times the mean squared
error between the student's and the teacher's hidden states (token-averaged when token merging
changed the token count), plus whatever each plugin's training hooks add (:mod:`surgery.toolkit.training`).
With ``warmup_epochs``, the parameters the surgery added (those the teacher does not have) train
alone first, then everything trains with AdamW, a linear warm-up and a cosine decay.

accelerate runs the same code on one CPU, one GPU or many machines (``accelerate launch``), with
mixed precision where the hardware has it. Checkpoints (``checkpoint_dir/epoch-N``) hold only
safetensors and JSON that surgery wrote (:mod:`surgery.recovery.checkpoints`: weights, optimizer,
schedule and random states, with a manifest of hashes); ``resume`` continues from the newest one
with the same data order as an uninterrupted run, and refuses any file it did not write.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from surgery.core.host import get_host
from surgery.data.imagesets import batches
from surgery.errors import SurgeryError
from surgery.evaluation.accuracy import loader_accuracy
from surgery.recovery.accelerator import make_accelerator, unwrap
from surgery.recovery.checkpoints import latest_checkpoint, load_checkpoint, prune, save_checkpoint
from surgery.recovery.config import RecoveryConfig, RecoveryResult
from surgery.recovery.hooks import step_hooks
from surgery.recovery.lora import (
    LoraOptions,
    base_of,
    canonical,
    describe,
    discard,
    finish,
    is_adapter_parameter,
    wrap,
)
from surgery.recovery.losses import loss_terms
from surgery.recovery.schedule import new_parameter_names, optimizer_and_schedule
from surgery.toolkit.adapters import is_peft_model


def evaluate_accuracy(model: nn.Module, loader, accelerator) -> float:
    """Top-1 accuracy over every process's share of ``loader``."""
    return loader_accuracy(model, loader, accelerator.autocast, accelerator.gather_for_metrics)


def recover(
    model: nn.Module,
    teacher: nn.Module | None,
    train,
    eval=None,
    config: RecoveryConfig | None = None,
    *,
    lora: LoraOptions | dict | str | bool | None = None,
    processor=None,
    checkpoint_dir: str | Path | None = None,
    resume: bool | str | Path = False,
    progress: bool = True,
    accelerator=None,
    **options: Any,
) -> RecoveryResult:
    """Fine-tune the rewritten ``model`` in place with distillation from ``teacher``; return what happened.

    ``train``/``eval``: a ``datasets.Dataset`` of images and labels (with ``processor``, the model's
    image processor), a ``(pixel_values, labels)`` pair of tensors, or a DataLoader of
    ``{"pixel_values", "labels"}``. ``teacher=None`` trains on the labels alone (``distill_weight``
    and ``feature_weight`` must be 0). Options are :class:`RecoveryConfig` fields, given as
    ``config`` or keywords. ``resume=True`` continues from the newest checkpoint in
    ``checkpoint_dir``; a path continues from that checkpoint. ``progress`` shows a tqdm bar per
    epoch (main process only); ``accelerator`` replaces the one built from ``config``.

    ``lora`` (:class:`~surgery.recovery.lora.LoraOptions`, a dict of its fields or True) trains LoRA
    adapters through PEFT instead of every original weight, with the parameters the surgery added;
    they are merged into the weights afterwards, or kept (``merge=False``: ``result.adapter`` is the
    ``PeftModel``). A model the caller already wrapped with PEFT trains as it is (what requires grad).
    """
    if config is not None and options:
        raise SurgeryError(
            f"recover: give the options either as config=RecoveryConfig(...) or as keywords, not both "
            f"(got config and {sorted(options)})"
        )
    config = config or RecoveryConfig.from_dict(options)
    if teacher is None and (config.distill_weight > 0 or config.feature_weight > 0):
        raise SurgeryError(
            "recover: without a teacher, set distill_weight=0 and feature_weight=0 (labels only), "
            "or pass the original model as teacher"
        )
    lora = LoraOptions.parse(lora)
    if checkpoint_dir is not None and Path(checkpoint_dir).exists() and not Path(checkpoint_dir).is_dir():
        raise SurgeryError(
            f"recover: checkpoint_dir {checkpoint_dir} is a file; it must be a folder (or not exist yet), "
            "found before any training"
        )
    if lora is not None and is_peft_model(model):
        raise SurgeryError(
            "recover: this model is already a PeftModel; recover trains its adapters as they are "
            "(leave lora out), or pass the model without PEFT to have surgery add them"
        )
    base = base_of(model)
    accelerator = accelerator or make_accelerator(config)
    started = time.perf_counter()
    new = set(new_parameter_names(model, teacher)) if teacher is not None else set()
    train_loader = batches(train, base.config, processor, config.batch_size, shuffle=True, seed=config.seed)
    eval_loader = batches(eval, base.config, processor, 256) if eval is not None else None
    if lora is not None:
        model = wrap(model, lora, get_host().anatomy_of(base), new)
        new = {name for name, _ in model.named_parameters() if canonical(name) in new}  # PEFT's names
    if config.warmup_epochs and not any(p.requires_grad for n, p in model.named_parameters() if n in new):
        if lora is not None:
            discard(model)
        raise SurgeryError(
            "recover: warmup_epochs needs trainable parameters the surgery added (compared by name "
            "with the teacher), and this model has none; set warmup_epochs=0"
        )
    optimizer, schedule = optimizer_and_schedule(model, new, config, len(train_loader))
    result = RecoveryResult(
        config=config.to_dict(),
        new_parameters=sorted(canonical(n) for n in new),
        processes=accelerator.num_processes,
        mixed_precision=str(accelerator.mixed_precision),
        trainable_parameters=sum(p.numel() for g in optimizer.param_groups for p in g["params"]),
        parameters=sum(p.numel() for n, p in model.named_parameters() if not is_adapter_parameter(n)),
    )

    hooks = step_hooks(base)
    start_epoch = 0
    forward_before = vars(model).get("forward")
    prepared = accelerator.prepare(
        model, optimizer, train_loader, schedule, *([eval_loader] if eval_loader is not None else [])
    )
    student, optimizer, train_loader, schedule = prepared[:4]
    eval_loader = prepared[4] if eval_loader is not None else None
    completed = False
    # the caller's teacher is frozen and in eval mode while it teaches, and given back as it came (a
    # search copies its original for every candidate: a frozen original would freeze them all)
    teacher_state = (
        (teacher.training, [(p, p.requires_grad) for p in teacher.parameters()]) if teacher is not None else None
    )
    try:  # from here on, a failure (a refused resume included) takes the adapters out again
        if teacher is not None:
            teacher = teacher.to(accelerator.device).eval().requires_grad_(False)
        if resume:
            path = _resume_path(resume, checkpoint_dir)
            start_epoch = load_checkpoint(accelerator, student, optimizer, schedule, path)
            result.resumed_from = str(path)
        if eval_loader is not None and start_epoch == 0:
            result.accuracy_before = evaluate_accuracy(student, eval_loader, accelerator)
            if teacher is not None:
                result.teacher_accuracy = evaluate_accuracy(teacher, eval_loader, accelerator)
        for epoch in range(start_epoch, config.total_epochs):
            record = _train_epoch(
                student, teacher, train_loader, optimizer, schedule, hooks, config, accelerator, epoch, progress
            )
            if eval_loader is not None:
                record["accuracy"] = evaluate_accuracy(student, eval_loader, accelerator)
            result.history.append(record)
            if checkpoint_dir is not None:
                save_checkpoint(accelerator, student, optimizer, schedule, epoch + 1, Path(checkpoint_dir))
                if accelerator.is_main_process:
                    prune(Path(checkpoint_dir), config.keep_checkpoints)
        completed = True
    finally:
        if teacher_state is not None:
            teacher.train(teacher_state[0])
            for parameter, flag in teacher_state[1]:
                parameter.requires_grad_(flag)
        for hook in hooks:
            hook.finish()
        unwrap(accelerator, student, model, forward_before)
        model.eval()
        if not completed and lora is not None:
            discard(model)
    if lora is not None:
        result.lora = describe(model, lora)
        model = finish(model, lora)
        result.adapter = None if lora.merge else model
    if result.history:
        result.accuracy = result.history[-1].get("accuracy")
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def _resume_path(resume: bool | str | Path, checkpoint_dir: str | Path | None) -> Path:
    if resume is True:
        if checkpoint_dir is None:
            raise SurgeryError("recover: resume=True needs checkpoint_dir (where the epoch-N checkpoints are)")
        path = latest_checkpoint(checkpoint_dir)
        if path is None:
            raise SurgeryError(f"recover: no epoch-N checkpoint in {checkpoint_dir} to resume from")
    else:
        path = Path(resume)
        if not path.is_dir():
            raise SurgeryError(f"recover: the checkpoint {path} does not exist")
    return path


def _train_epoch(
    student,
    teacher,
    loader,
    optimizer,
    schedule,
    hooks,
    config: RecoveryConfig,
    accelerator,
    epoch: int,
    progress: bool,
) -> dict[str, Any]:
    warmup = epoch < config.warmup_epochs
    student.train()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    totals: dict[str, float] = {}
    started = time.perf_counter()
    steps = len(loader)
    bar = tqdm(
        loader,
        desc=f"recover {'warm-up' if warmup else 'epoch'} {epoch + 1}/{config.total_epochs}",
        unit="batch",
        leave=False,
        disable=not progress or not accelerator.is_local_main_process,
    )
    for step, batch in enumerate(bar):
        run_progress = (epoch * steps + step) / (config.total_epochs * steps)
        for hook in hooks:
            hook.schedule(run_progress)
        terms = loss_terms(student, teacher, batch, hooks, config, accelerator.autocast)
        accelerator.backward(terms["loss"])
        if config.max_grad_norm > 0 and accelerator.sync_gradients:
            accelerator.clip_grad_norm_([p for p in student.parameters() if p.requires_grad], config.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        for key, value in terms.items():
            totals[key] = totals.get(key, 0.0) + float(value.detach())
        bar.set_postfix(loss=f"{float(terms['loss'].detach()):.4f}")
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "stage": "new parameters" if warmup else "all parameters",
        "steps": steps,
    }
    record.update({key: value / steps for key, value in totals.items()})
    for hook in hooks:
        record.update(hook.describe((epoch + 1) / config.total_epochs))
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record
