"""Saves that cannot lose a model: a save killed at any point leaves the old model or the new one,
never a mix; concurrent saves serialize; the next save cleans up what a killed one left."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import images, tiny

import surgery
import surgery.checkpoint.saving
from surgery.errors import SurgeryError

SPECS = {"a": [("ggem", {"p_init": 3.0})], "b": [("token_merge", {"r": 2})]}

SCRIPT = textwrap.dedent("""
    import os, signal, sys, pathlib
    sys.path.insert(0, {tests!r})
    import surgery, surgery.checkpoint.saving as saving
    from conftest import tiny
    which, folder, kill = sys.argv[1], sys.argv[2], sys.argv[3]
    specs = {specs!r}
    model = surgery.apply(tiny("vit", seed=0 if which == "a" else 1), specs[which])
    def die(*_, **__):
        os.kill(os.getpid(), signal.SIGKILL)
    if kill == "weights":  # half a weights file written, then killed
        import transformers.modeling_utils as mu
        def half(tensors, path, metadata=None):
            open(path, "wb").write(b"\\0" * 1000)
            die()
        mu.safe_save_file = half
    elif kill == "before-swap":
        saving._swap = die
    elif kill == "after-swap":
        real = saving._swap
        def swap_then_die(staging, target):
            real(staging, target)
            die()
        saving._swap = swap_then_die
    elif kill == "between-renames":  # the two-rename fallback, killed in its window
        saving._exchange = lambda a, b: False
        calls = []
        real_rename = pathlib.Path.rename
        def rename(self, target):
            calls.append(target)
            if len(calls) == 2:
                die()
            return real_rename(self, target)
        pathlib.Path.rename = rename
    for _ in range(int(os.environ.get("REPEAT", "1"))):
        model.save_pretrained(folder)
""")


def expected(which):
    model = surgery.apply(tiny("vit", seed=0 if which == "a" else 1), SPECS[which])
    return model(pixel_values=images()).logits


def run(tmp_path, which, folder, kill="none", repeat=1, wait=True):
    script = tmp_path / "save.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), specs=SPECS))
    env = dict(os.environ, REPEAT=str(repeat))
    process = subprocess.Popen([sys.executable, str(script), which, str(folder), kill], env=env)
    return process.wait(timeout=300) if wait else process


def which_model(folder):
    logits = surgery.load(folder)(pixel_values=images()).logits
    matches = [w for w in "ab" if torch.equal(logits, expected(w))]
    assert len(matches) == 1
    return matches[0]


def leftovers(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


@pytest.fixture(scope="module")
def saved_a(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "m"
    assert run(folder.parent, "a", folder) == 0
    return folder


@pytest.mark.parametrize(
    "kill,survivor",
    [
        ("weights", "a"),
        pytest.param("before-swap", "a", marks=pytest.mark.slow),
        pytest.param("between-renames", "a", marks=pytest.mark.slow),
        ("after-swap", "b"),
    ],
)  # each survivor in the suite, all four with -m slow
def test_a_save_killed_at_any_point_leaves_the_old_or_the_new_model(tmp_path, kill, survivor, saved_a):
    folder = tmp_path / "models" / "m"
    shutil.copytree(saved_a, folder)  # model "a" as a save in another process left it (shared: one process for all)
    (folder / "README.md").write_text("my card")
    assert run(tmp_path, "b", folder, kill) == -9
    if kill == "between-renames":  # the window of the fallback: the old copy waits beside the folder
        assert not folder.exists() and leftovers(folder)
        surgery.checkpoint.saving.clean_leftovers(folder)
    assert which_model(folder) == survivor
    assert (folder / "README.md").read_text() == "my card"  # files the save does not write are kept
    assert run(tmp_path, "b", folder) == 0  # the next save cleans up after the killed one
    assert which_model(folder) == "b" and leftovers(folder) == []
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_concurrent_saves_to_one_folder_end_with_one_whole_model(tmp_path):
    folder = tmp_path / "m"
    processes = [run(tmp_path, w, folder, repeat=4, wait=False) for w in "ab"]
    assert [p.wait(timeout=300) for p in processes] == [0, 0]
    assert which_model(folder) in "ab" and leftovers(folder) == []


def test_save_writes_the_processor_in_the_same_step_and_refuses_a_file(tmp_path):
    from surgery.demo.zoo import image_processor

    model = surgery.apply(tiny("vit"), ["ggem"])
    surgery.save(model, tmp_path / "m", processor=image_processor(32))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    (tmp_path / "file").write_text("x")
    with pytest.raises(SurgeryError, match="it is a file, not a folder"):
        model.save_pretrained(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"


def test_the_cli_apply_saves_atomically_and_refuses_a_file_output(tmp_path, capsys):
    from surgery.cli import main

    source = tmp_path / "src"
    tiny("vit").save_pretrained(source)
    (tmp_path / "out").write_text("x")
    assert main(["apply", str(source), "-p", "ggem", "-o", str(tmp_path / "out")]) == 2
    assert "surgery: error: cannot save to" in capsys.readouterr().err
    assert main(["apply", str(source), "-p", "ggem", "-o", str(tmp_path / "new")]) == 0
    assert leftovers(tmp_path / "new") == [] and surgery.history(surgery.load(tmp_path / "new"))[0].plugin == "ggem"
