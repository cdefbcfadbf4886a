"""The recovery losses (Hinton et al.'s distillation, hidden-state distillation) and the training-time
image shift."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from surgery.errors import SurgeryError


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float, distill_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, cross_entropy, kl)``; the KL term is scaled by T^2 so its gradients keep their size."""
    cross_entropy = F.cross_entropy(student, labels)
    kl = (
        F.kl_div(
            F.log_softmax(student / temperature, dim=-1),
            F.log_softmax(teacher / temperature, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        * temperature**2
    )
    return (1.0 - distill_weight) * cross_entropy + distill_weight * kl, cross_entropy, kl


def feature_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean over layers of the MSE between hidden states; token-averaged where token counts differ."""
    if len(student) != len(teacher):
        raise SurgeryError(
            f"feature distillation: the student has {len(student)} hidden states, the teacher {len(teacher)}"
        )
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
    return torch.stack([padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets)])


def loss_terms(student, teacher, batch, hooks, config, autocast=contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """One step's loss and its terms, shared by :func:`surgery.recover` and the Trainer path: the
    batch shifted (``config.shift``), label cross-entropy and distillation from ``teacher`` (with
    hidden states where ``config.feature_weight`` > 0), plus every plugin training hook's loss."""
    features = config.feature_weight > 0
    pixel_values = random_shift(batch["pixel_values"], config.shift)
    with autocast():
        out = student(pixel_values=pixel_values, output_hidden_states=features)
        terms: dict[str, torch.Tensor] = {}
        if teacher is not None:
            with torch.no_grad():
                reference = teacher(pixel_values=pixel_values, output_hidden_states=features)
            loss, terms["cross_entropy"], terms["distillation"] = distillation_loss(
                out.logits.float(),
                reference.logits.float(),
                batch["labels"],
                config.temperature,
                config.distill_weight,
            )
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
