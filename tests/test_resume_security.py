"""Resuming recovery reads only the safetensors and JSON surgery wrote: crafted pickles, changed or
missing files and accelerate-format folders are refused with one line, and nothing in them runs."""

from __future__ import annotations

import json
import os
import pickle

import pytest
from test_recover import noisy_data, pair

from surgery.recovery import recover
from surgery.recovery.checkpoints import latest_checkpoint
from surgery.recovery.checkpoints import MANIFEST, CheckpointError, read_manifest


class Touch:
    """A pickle that creates a file when it is unpickled: what a crafted checkpoint would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    student, teacher = pair(steps=("ggem",))
    recover(
        student,
        teacher,
        noisy_data(8),
        epochs=2,
        batch_size=8,
        progress=False,
        checkpoint_dir=folder,
        keep_checkpoints=2,
    )
    return folder, teacher


def copy_of(path, tmp_path):
    import shutil

    target = tmp_path / path.name
    shutil.copytree(path, target)
    return target


def test_checkpoints_hold_only_safetensors_and_json_with_a_manifest(checkpoint):
    folder, _ = checkpoint
    epoch = latest_checkpoint(folder)
    names = sorted(p.name for p in epoch.iterdir())
    assert all(n.endswith((".safetensors", ".json")) for n in names), names
    assert {
        "model.safetensors",
        "optimizer.safetensors",
        "optimizer.json",
        "schedule.json",
        "rng-0.safetensors",
        "rng-0.json",
        MANIFEST,
    } <= set(names)
    manifest = read_manifest(epoch)
    assert manifest["epoch"] == 2 and manifest["processes"] == 1 and set(manifest["files"]) == set(names) - {MANIFEST}
    assert not any(p.name.endswith(".partial") for p in folder.iterdir())


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "notes.json"])
def test_resume_refuses_files_surgery_did_not_write_and_never_unpickles_them(checkpoint, tmp_path, name):
    folder, teacher = checkpoint
    epoch = copy_of(latest_checkpoint(folder), tmp_path)
    touched = tmp_path / "pwned"
    (epoch / name).write_bytes(pickle.dumps(Touch(touched)))
    student, _ = pair(steps=("ggem",))
    with pytest.raises(CheckpointError, match=rf"holds files surgery did not write \({name}\); refusing to resume"):
        recover(student, teacher, noisy_data(8), epochs=3, batch_size=8, progress=False, resume=epoch)
    assert not touched.exists()


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.json", "rng-0.json", "schedule.json"])
def test_resume_refuses_a_changed_or_missing_file(checkpoint, tmp_path, victim):
    folder, teacher = checkpoint
    student, _ = pair(steps=("ggem",))
    changed = copy_of(latest_checkpoint(folder), tmp_path / "changed")
    with open(changed / victim, "ab") as handle:
        handle.write(b" ")
    with pytest.raises(CheckpointError, match=rf"{victim} was changed after surgery wrote it"):
        recover(student, teacher, noisy_data(8), epochs=3, batch_size=8, progress=False, resume=changed)
    missing = copy_of(latest_checkpoint(folder), tmp_path / "missing")
    os.remove(missing / victim)
    with pytest.raises(CheckpointError, match=rf"is incomplete: {victim} is missing"):
        recover(student, teacher, noisy_data(8), epochs=3, batch_size=8, progress=False, resume=missing)


def test_resume_refuses_accelerate_folders_and_bad_manifests(checkpoint, tmp_path):
    folder, teacher = checkpoint
    student, _ = pair(steps=("ggem",))
    legacy = tmp_path / "epoch-1"
    legacy.mkdir()
    (legacy / "random_states_0.pkl").write_bytes(pickle.dumps(Touch(tmp_path / "pwned")))
    with pytest.raises(CheckpointError, match="is not a surgery recovery checkpoint"):
        recover(
            student,
            teacher,
            noisy_data(8),
            epochs=3,
            batch_size=8,
            progress=False,
            resume=True,
            checkpoint_dir=tmp_path,
        )
    assert not (tmp_path / "pwned").exists()
    epoch = copy_of(latest_checkpoint(folder), tmp_path / "bad")
    manifest = json.loads((epoch / MANIFEST).read_text())
    for broken, message in (
        (dict(manifest, format="accelerate"), "is not a version-1"),
        (dict(manifest, files={**manifest["files"], "../model.safetensors": "0"}), "which is not"),
        (dict(manifest, processes=2), "written by 2 process"),
    ):
        (epoch / MANIFEST).write_text(json.dumps(broken))
        with pytest.raises(CheckpointError, match=message):
            recover(student, teacher, noisy_data(8), epochs=3, batch_size=8, progress=False, resume=epoch)
    (epoch / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        recover(student, teacher, noisy_data(8), epochs=3, batch_size=8, progress=False, resume=epoch)


def test_resume_refuses_a_checkpoint_of_another_model(checkpoint):
    folder, teacher = checkpoint
    other, _ = pair(steps=("token_merge",))
    with pytest.raises(CheckpointError, match="does not fit this run"):
        recover(
            other, teacher, noisy_data(8), epochs=3, batch_size=8, progress=False, resume=latest_checkpoint(folder)
        )
