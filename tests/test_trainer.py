"""The Trainer path (surgery.recovery.trainer.DistillationTrainer) against surgery.recover: the same
recipe gives the same steps on the same seed, checkpoints are surgery folders that resume exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import images, tiny

import surgery
from surgery.data.imagesets import TensorImages
from surgery.errors import SurgeryError
from surgery.recovery import RecoveryConfig, recover
from surgery.recovery.trainer import DistillationTrainer

# one batch per epoch (the two paths draw their data orders differently, and a batch mean does not
# depend on the order), no shift (drawn per image, in order), one warm-up epoch then two
RECIPE = RecoveryConfig(
    warmup_epochs=1,
    epochs=2,
    batch_size=16,
    lr=2e-3,
    warmup_lr=5e-3,
    shift=0.0,
    mixed_precision="no",
    schedule_warmup=0.5,
    seed=3,
)


def _data(seed: int = 5):
    pixels = images(16, seed=seed)
    return pixels, torch.arange(16) % 10


def _rewritten(plugins):
    teacher = tiny("vit", seed=1)
    student = surgery.apply(tiny("vit", seed=1), plugins)
    return student, teacher


@pytest.mark.parametrize("plugins", [["ggem"], [("token_merge", {"r": 2}), "ggem"]], ids=["ggem", "token_merge+ggem"])
def test_the_trainer_takes_the_same_steps_as_recover(tmp_path, plugins):
    pixels, labels = _data()
    student, teacher = _rewritten(plugins)
    result = recover(student, teacher, (pixels, labels), None, RECIPE, progress=False)

    twin, teacher_again = _rewritten(plugins)
    args = DistillationTrainer.arguments(
        RECIPE, tmp_path / "trainer", use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True
    )
    trainer = DistillationTrainer(twin, teacher_again, args, RECIPE, train_dataset=TensorImages(pixels, labels))
    trainer.train()
    losses = [step["loss"] for step in trainer.step_terms]
    assert len(losses) == RECIPE.total_epochs
    assert losses == pytest.approx([record["loss"] for record in result.history], rel=1e-5, abs=1e-6)
    for (name, mine), (_, theirs) in zip(student.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(theirs, mine, rtol=1e-5, atol=1e-6, msg=name)
    # the warm-up trained only what the surgery added; the teacher came back as it was given
    assert trainer.new_parameters == set(result.new_parameters) and "vit.layernorm.pool.p" in trainer.new_parameters
    assert all(p.requires_grad for p in teacher_again.parameters()) and teacher_again.training is False


def test_a_trainer_checkpoint_is_a_surgery_folder_and_resumes_exactly(tmp_path):
    pixels, labels = _data()
    student, teacher = _rewritten([("token_merge", {"r": 2}), "ggem"])
    args = DistillationTrainer.arguments(
        RECIPE, tmp_path / "run", use_cpu=True, save_strategy="epoch", logging_strategy="no", disable_tqdm=True
    )
    trainer = DistillationTrainer(student, teacher, args, RECIPE, train_dataset=TensorImages(pixels, labels))
    trainer.train()
    checkpoint = tmp_path / "run" / f"checkpoint-{RECIPE.total_epochs}"
    reloaded = surgery.load(checkpoint)  # the recipe and the weights, exactly
    x = images(3, seed=9)
    assert torch.equal(reloaded(pixel_values=x).logits, student.eval()(pixel_values=x).logits)
    assert [s.plugin for s in surgery.history(reloaded)] == ["token_merge", "ggem"]

    fresh, teacher_again = _rewritten([("token_merge", {"r": 2}), "ggem"])  # resume the last epoch from epoch 2
    resumed = DistillationTrainer(fresh, teacher_again, args, RECIPE, train_dataset=TensorImages(pixels, labels))
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    for (name, mine), (_, theirs) in zip(student.named_parameters(), fresh.named_parameters()):
        torch.testing.assert_close(theirs, mine, rtol=1e-5, atol=1e-6, msg=name)


def test_arguments_the_trainer_cannot_run_as_recover_are_refused(tmp_path):
    student, teacher = _rewritten(["ggem"])
    args = DistillationTrainer.arguments(RECIPE, tmp_path, num_train_epochs=1, use_cpu=True)
    with pytest.raises(SurgeryError, match=r"more than the recovery's warmup_epochs=1 \(got num_train_epochs=1"):
        DistillationTrainer(student, teacher, args, RECIPE)
    with pytest.raises(SurgeryError, match="without a teacher, set distill_weight=0"):
        DistillationTrainer(student, None, DistillationTrainer.arguments(RECIPE, tmp_path, use_cpu=True), RECIPE)


def test_pickled_checkpoints_are_refused(tmp_path):
    from transformers import TrainingArguments

    if "save_safetensors" not in TrainingArguments.__dataclass_fields__:
        pytest.skip("this transformers always saves safetensors")
    student, teacher = _rewritten(["ggem"])
    args = DistillationTrainer.arguments(RECIPE, tmp_path, use_cpu=True, save_safetensors=False)
    with pytest.raises(
        SurgeryError, match="save_safetensors=False is refused; surgery checkpoints load from safetensors"
    ):
        DistillationTrainer(student, teacher, args, RECIPE)
