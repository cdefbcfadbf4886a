"""Recover accuracy after surgery: knowledge distillation from the original model, through accelerate.

The loss is Hinton et al.'s: ``(1 - distill_weight) * CE(student, labels) + distill_weight * T^2 *
KL(softmax(teacher / T) || softmax(student / T))``, plus ``feature_weight`` times the mean squared
error between the student's and the teacher's hidden states (token-averaged when token merging
changed the token count), plus whatever each plugin's training hooks add (:mod:`surgery.training`).
With ``warmup_epochs``, the parameters the surgery added (those the teacher does not have) train
alone first, then everything trains with AdamW, a linear warm-up and a cosine decay.

accelerate runs the same code on one CPU, one GPU or many machines (``accelerate launch``), with
mixed precision where the hardware has it. Checkpoints (``checkpoint_dir/epoch-N``) hold only
safetensors and JSON that surgery wrote (:mod:`surgery.recovery_state`: weights, optimizer,
schedule and random states, with a manifest of hashes); ``resume`` continues from the newest one
with the same data order as an uninterrupted run, and refuses any file it did not write.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from surgery.config import SurgeryConfig
from surgery.errors import SurgeryError
from surgery.recovery_state import load_checkpoint, save_checkpoint
from surgery.training import TrainingHooks

CHECKPOINT = re.compile(r"^epoch-(\d+)$")


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def figures(self, teacher: str, data: str, dataset: str) -> dict[str, Any]:
        """The figures a model card shows (``surgery.card(folder, results=...)``, or merged into
        ``surgery_results.json``): accuracy before surgery, right after it, after recovery, and how."""
        summary = {k: v for k, v in self.to_dict().items() if k != "history"}
        return {
            "accuracy": self.accuracy,
            "accuracy_before": self.teacher_accuracy,
            "accuracy_after_surgery": self.accuracy_before,
            "dataset": dataset,
            "recovery": {**summary, "teacher": teacher, "data": data, "evaluated_on": dataset},
        }


# -- losses ------------------------------------------------------------------------------------
def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
                      distill_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, cross_entropy, kl)``; the KL term is scaled by T^2 so its gradients keep their size."""
    cross_entropy = F.cross_entropy(student, labels)
    kl = F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                  reduction="batchmean", log_target=True) * temperature**2
    return (1.0 - distill_weight) * cross_entropy + distill_weight * kl, cross_entropy, kl


def feature_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean over layers of the MSE between hidden states; token-averaged where token counts differ."""
    if len(student) != len(teacher):
        raise SurgeryError(f"feature distillation: the student has {len(student)} hidden states, the teacher {len(teacher)}")
    terms = []
    for s, t in zip(student, teacher):
        if s.shape != t.shape:
            s, t = s.mean(dim=1), t.mean(dim=1)
        terms.append(F.mse_loss(s.float(), t.float()))
    return torch.stack(terms).mean()


def random_shift(pixel_values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Each image translated by up to ``fraction`` of its side, edges replicated (torch's global RNG,
    which accelerate checkpoints, so a resumed run draws the same shifts)."""
    pad = round(fraction * pixel_values.shape[-1])
    if pad == 0:
        return pixel_values
    padded = F.pad(pixel_values, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (len(pixel_values), 2)).tolist()
    height, width = pixel_values.shape[-2:]
    return torch.stack([padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets)])


# -- what trains ---------------------------------------------------------------------------------
def new_parameter_names(model: nn.Module, teacher: nn.Module) -> list[str]:
    """Parameters of the rewritten model that the original does not have (by name and shape)."""
    original = {name: p.shape for name, p in teacher.named_parameters()}
    return [name for name, p in model.named_parameters() if original.get(name) != p.shape]


def parameter_groups(model: nn.Module, new: set[str], config: RecoveryConfig) -> list[dict[str, Any]]:
    """Four AdamW groups: new / original parameters, each with and without weight decay."""
    groups = []
    for is_new in (True, False):
        for decay in (True, False):
            params = [p for n, p in model.named_parameters() if (n in new) == is_new and (p.ndim > 1) == decay and _trainable(p)]
            groups.append({"params": params, "weight_decay": config.weight_decay if decay else 0.0, "new": is_new})
    return groups


def _trainable(parameter: torch.Tensor) -> bool:
    return parameter.requires_grad and parameter.is_floating_point()


def optimizer_and_schedule(model: nn.Module, new: set[str], config: RecoveryConfig, steps_per_epoch: int):
    """AdamW over the parameter groups, and the per-group learning-rate schedule."""
    groups = [dict(g, lr=config.lr) for g in parameter_groups(model, new, config) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    new_factor, original_factor = lr_factors(config, steps_per_epoch)
    factors = [new_factor if g["new"] else original_factor for g in optimizer.param_groups]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def lr_factors(config: RecoveryConfig, steps_per_epoch: int):
    """Learning-rate multipliers per group kind: new parameters run at ``warmup_lr / lr`` in the
    warm-up stage, original ones at 0 (AdamW scales its decay by the rate too, so they stay exactly
    as they are; freezing by rate rather than ``requires_grad`` keeps DDP's gradient hooks valid);
    both then follow a linear warm-up and a cosine decay."""
    warm_steps = config.warmup_epochs * steps_per_epoch
    main_steps = max(1, config.epochs * steps_per_epoch)
    ramp = max(1, int(config.schedule_warmup * main_steps))

    def main(step: int) -> float:
        step = step - warm_steps
        if step < ramp:
            return (step + 1) / ramp
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - ramp) / max(1, main_steps - ramp))))

    def new(step: int) -> float:
        return config.warmup_lr / config.lr if step < warm_steps else main(step)

    def original(step: int) -> float:
        return 0.0 if step < warm_steps else main(step)

    return new, original


def step_hooks(model: nn.Module) -> list[TrainingHooks]:
    """The training hooks of every applied step whose plugin has some."""
    from surgery.apply import history
    from surgery.manager import get_host

    host = get_host()
    anatomy = host.anatomy(model.config.model_type, type(model).__name__)
    hooks = []
    for step in history(model):
        method = host.method(step.plugin)
        if method.training is not None:
            hooks.append(method.training(model, step.config, list(step.targets), anatomy))
    return hooks


# -- checkpoints -----------------------------------------------------------------------------------
def latest_checkpoint(folder: str | Path) -> Path | None:
    """The ``epoch-N`` folder with the highest N under ``folder``, or None."""
    folder = Path(folder)
    found = [(int(m.group(1)), p) for p in folder.glob("epoch-*") if (m := CHECKPOINT.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def _prune(folder: Path, keep: int) -> None:
    found = sorted((int(m.group(1)), p) for p in folder.glob("epoch-*") if (m := CHECKPOINT.match(p.name)))
    for _, path in found[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


# -- evaluation ------------------------------------------------------------------------------------
def evaluate_accuracy(model: nn.Module, loader, accelerator) -> float:
    """Top-1 accuracy over every process's share of ``loader``."""
    from surgery.evaluation import loader_accuracy

    return loader_accuracy(model, loader, accelerator.autocast, accelerator.gather_for_metrics)


# -- the loop --------------------------------------------------------------------------------------
def recover(model: nn.Module, teacher: nn.Module | None, train, eval=None, config: RecoveryConfig | None = None, *,
            processor=None, checkpoint_dir: str | Path | None = None, resume: bool | str | Path = False,
            progress: bool = True, accelerator=None, **options: Any) -> RecoveryResult:
    """Fine-tune the rewritten ``model`` in place with distillation from ``teacher``; return what happened.

    ``train``/``eval``: a ``datasets.Dataset`` of images and labels (with ``processor``, the model's
    image processor), a ``(pixel_values, labels)`` pair of tensors, or a DataLoader of
    ``{"pixel_values", "labels"}``. ``teacher=None`` trains on the labels alone (``distill_weight``
    and ``feature_weight`` must be 0). Options are :class:`RecoveryConfig` fields, given as
    ``config`` or keywords. ``resume=True`` continues from the newest checkpoint in
    ``checkpoint_dir``; a path continues from that checkpoint. ``progress`` shows a tqdm bar per
    epoch (main process only); ``accelerator`` replaces the one built from ``config``.
    """
    from surgery.imagesets import batches

    if config is not None and options:
        raise SurgeryError(f"recover: give the options either as config=RecoveryConfig(...) or as keywords, not both "
                           f"(got config and {sorted(options)})")
    config = config or RecoveryConfig.from_dict(options)
    if teacher is None and (config.distill_weight > 0 or config.feature_weight > 0):
        raise SurgeryError("recover: without a teacher, set distill_weight=0 and feature_weight=0 (labels only), "
                           "or pass the original model as teacher")
    accelerator = accelerator or make_accelerator(config)
    started = time.perf_counter()
    new = set(new_parameter_names(model, teacher)) if teacher is not None else set()
    if config.warmup_epochs and not new:
        raise SurgeryError("recover: warmup_epochs needs parameters the surgery added (compared by name with the "
                           "teacher), and this model has none; set warmup_epochs=0")
    train_loader = batches(train, model.config, processor, config.batch_size, shuffle=True, seed=config.seed)
    eval_loader = batches(eval, model.config, processor, 256) if eval is not None else None
    optimizer, schedule = optimizer_and_schedule(model, new, config, len(train_loader))
    result = RecoveryResult(config=config.to_dict(), new_parameters=sorted(new), processes=accelerator.num_processes,
                            mixed_precision=str(accelerator.mixed_precision))

    hooks = step_hooks(model)
    start_epoch = 0
    forward_before = vars(model).get("forward")
    prepared = accelerator.prepare(model, optimizer, train_loader, schedule, *([eval_loader] if eval_loader is not None else []))
    student, optimizer, train_loader, schedule = prepared[:4]
    eval_loader = prepared[4] if eval_loader is not None else None
    if teacher is not None:
        teacher = teacher.to(accelerator.device).eval().requires_grad_(False)
    if resume:
        path = _resume_path(resume, checkpoint_dir)
        start_epoch = load_checkpoint(accelerator, student, optimizer, schedule, path)
        result.resumed_from = str(path)
    try:
        if eval_loader is not None and start_epoch == 0:
            result.accuracy_before = evaluate_accuracy(student, eval_loader, accelerator)
            if teacher is not None:
                result.teacher_accuracy = evaluate_accuracy(teacher, eval_loader, accelerator)
        for epoch in range(start_epoch, config.total_epochs):
            record = _train_epoch(student, teacher, train_loader, optimizer, schedule, hooks, config, accelerator,
                                  epoch, progress)
            if eval_loader is not None:
                record["accuracy"] = evaluate_accuracy(student, eval_loader, accelerator)
            result.history.append(record)
            if checkpoint_dir is not None:
                save_checkpoint(accelerator, student, optimizer, schedule, epoch + 1, Path(checkpoint_dir))
                if accelerator.is_main_process:
                    _prune(Path(checkpoint_dir), config.keep_checkpoints)
    finally:
        for hook in hooks:
            hook.finish()
        _unwrap(accelerator, student, model, forward_before)
        model.eval()
    if result.history:
        result.accuracy = result.history[-1].get("accuracy")
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def make_accelerator(config: RecoveryConfig):
    """An ``accelerate.Accelerator`` with a seeded data order and the chosen mixed precision.

    accelerate keeps one process-wide state; in a single process a later call with another
    precision starts it afresh (under ``accelerate launch`` the launcher's settings stand).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed

    set_seed(config.seed)
    # Some parameters get no gradient in some steps (bivit's first stage leaves the MLP scales
    # unused), which DDP accepts only when told to look for unused parameters.
    options = {
        "cpu": not has_accelerator(),  # lets torchrun's CPU processes form a gloo group (MULTI_CPU)
        "mixed_precision": resolve_precision(config.mixed_precision),
        "dataloader_config": DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        "kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=True)],
    }
    try:
        return Accelerator(**options)
    except ValueError as error:
        if PartialState().num_processes > 1:
            raise SurgeryError(f"recover: {error}") from error
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**options)


def has_accelerator() -> bool:
    """Whether torch sees a GPU-like device (CUDA/ROCm, Apple MPS, Intel XPU)."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def resolve_precision(choice: str) -> str | None:
    """"auto": the launcher's choice under ``accelerate launch``, else bf16 on GPUs with it, fp16 on
    other GPUs, and none on CPU (CPU autocast would cost accuracy for little speed on most CPUs)."""
    if choice != "auto":
        return choice
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _unwrap(accelerator, student: nn.Module, model: nn.Module, forward_before) -> None:
    """Undo accelerate's wrapping: DDP, and the mixed-precision ``forward`` it sets on the instance
    (its unwrapping also strips transformers' own decorators, so the instance's forward is put back
    as it was before recovery)."""
    accelerator.unwrap_model(student, keep_fp32_wrapper=False)
    if forward_before is None:
        vars(model).pop("forward", None)
    else:
        model.forward = forward_before


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


def _train_epoch(student, teacher, loader, optimizer, schedule, hooks, config: RecoveryConfig, accelerator,
                 epoch: int, progress: bool) -> dict[str, Any]:
    warmup = epoch < config.warmup_epochs
    student.train()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    totals: dict[str, float] = {}
    started = time.perf_counter()
    steps = len(loader)
    bar = tqdm(loader, desc=f"recover {'warm-up' if warmup else 'epoch'} {epoch + 1}/{config.total_epochs}",
               unit="batch", leave=False, disable=not progress or not accelerator.is_local_main_process)
    for step, batch in enumerate(bar):
        run_progress = (epoch * steps + step) / (config.total_epochs * steps)
        for hook in hooks:
            hook.schedule(run_progress)
        terms = _loss_terms(student, teacher, batch, hooks, config, accelerator)
        accelerator.backward(terms["loss"])
        if config.max_grad_norm > 0 and accelerator.sync_gradients:
            accelerator.clip_grad_norm_([p for p in student.parameters() if p.requires_grad], config.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        for key, value in terms.items():
            totals[key] = totals.get(key, 0.0) + float(value.detach())
        bar.set_postfix(loss=f"{float(terms['loss'].detach()):.4f}")
    record: dict[str, Any] = {"epoch": epoch + 1, "stage": "new parameters" if warmup else "all parameters",
                              "steps": steps}
    record.update({key: value / steps for key, value in totals.items()})
    for hook in hooks:
        record.update(hook.describe((epoch + 1) / config.total_epochs))
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def _loss_terms(student, teacher, batch, hooks, config: RecoveryConfig, accelerator) -> dict[str, torch.Tensor]:
    features = config.feature_weight > 0
    pixel_values = random_shift(batch["pixel_values"], config.shift)
    with accelerator.autocast():
        out = student(pixel_values=pixel_values, output_hidden_states=features)
        terms: dict[str, torch.Tensor] = {}
        if teacher is not None:
            with torch.no_grad():
                reference = teacher(pixel_values=pixel_values, output_hidden_states=features)
            loss, terms["cross_entropy"], terms["distillation"] = distillation_loss(
                out.logits.float(), reference.logits.float(), batch["labels"], config.temperature, config.distill_weight)
            if features:
                terms["features"] = feature_loss(out.hidden_states[1:], reference.hidden_states[1:])
                loss = loss + config.feature_weight * terms["features"]
        else:
            loss = terms["cross_entropy"] = F.cross_entropy(out.logits.float(), batch["labels"])
        for hook in hooks:
            extra = hook.loss()
            if extra is not None:
                terms[f"{type(hook).__name__}"] = extra
                loss = loss + extra
    terms["loss"] = loss
    return terms
