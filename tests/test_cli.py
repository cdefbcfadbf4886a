"""The command line: list, plan, apply, inspect; bad input gives one line and exit status 2."""

from __future__ import annotations

import json

import pytest
import torch

import surgery
from surgery.cli import main
from surgery.core.specs import parse_plugin_spec
from surgery.errors import ConfigError
from surgery.evaluation.accuracy import accuracy
from surgery.demo.zoo import image_processor

from conftest import images, parts, tiny


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    tiny("vit").save_pretrained(folder)
    image_processor(32).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("columns", [80, 150])
def test_list_fits_the_terminal_and_names_every_method_with_its_families(capsys, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "version", "families", "summary"]
    assert max(len(line.rstrip()) for line in lines) <= columns
    host = surgery.get_host()
    every = [a.model_type for a in host.anatomies.values()]
    rows = {line.split()[0]: line for line in lines[2:] if line[:1].strip()}  # a method's first line
    assert sorted(rows) == sorted(host.methods)
    for name, method in host.methods.items():
        assert method.version in rows[name].split()[1]
        families = [t for t in every if method.refusal(host.anatomies[t]) is None]
        if len(families) == len(every):
            assert rows[name].split()[2:4] == ["all", str(len(every))]
    assert "all but swinv2" in rows["bivit"]  # its one refusal
    assert "all but swinv2" in rows["token_prune"]  # refused by its cosine attention (Swin, BEiT: with unmerge=True)


def test_list_json_describes_options(capsys):
    assert main(["list", "--json"]) == 0
    (ggem,) = [m for m in json.loads(capsys.readouterr().out) if m["name"] == "ggem"]
    assert {"name": "p_init", "type": "float", "default": 3.0} in ggem["options"]
    assert ggem["reversible"] is True


def test_plan_writes_nothing(model_dir, capsys):
    before = sorted(p.name for p in model_dir.iterdir())
    assert main(["plan", str(model_dir), "--plugin", "ggem:groups=2"]) == 0
    out = capsys.readouterr().out
    assert "1. ggem 0.1.0 (vision-surgery)  groups=2" in out and "rewrites: vit.layernorm" in out
    assert sorted(p.name for p in model_dir.iterdir()) == before


def test_apply_then_inspect(model_dir, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert main(["apply", str(model_dir), "-p", "ggem:p_init=2,learn_p=false", "-o", str(out_dir)]) == 0
    assert (out_dir / "preprocessor_config.json").exists()
    model = surgery.load(out_dir)
    assert surgery.history(model)[0].options == {"groups": None, "p_init": 2.0, "eps": 1e-6, "learn_p": False}
    x = images()
    source = surgery.apply(surgery.load(model_dir), [("ggem", {"p_init": 2.0, "learn_p": False})])
    assert torch.equal(model(pixel_values=x).logits, source(pixel_values=x).logits)
    capsys.readouterr()
    assert main(["inspect", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "vit, 1 surgery step(s)" in out and "1. ggem 0.1.0 (vision-surgery)  " in out
    assert "p_init=2.0" in out and "learn_p=False" in out and "rewrites: vit.layernorm" in out
    assert main(["inspect", str(out_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"][0]["plugin"] == "ggem"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["apply", "{model}", "-p", "gem", "-o", "{tmp}/x"], r"no surgery plugin named 'gem'.*Did you mean 'ggem'\?"),
        (
            ["apply", "{model}", "-p", "ggem:p_init=-2", "-o", "{tmp}/x"],
            r"ggem: option 'p_init' got -2.0; allowed: a number > 0",
        ),
        (
            ["apply", "{model}", "-p", "ggem:pinit=2", "-o", "{tmp}/x"],
            r"unknown option 'pinit'.*Did you mean 'p_init'\?",
        ),
        (["apply", "{model}", "-p", "ggem:p_init", "-o", "{tmp}/x"], r"write options as NAME:key=value"),
        (["plan", "{tmp}/does-not-exist", "-p", "ggem"], r"does-not-exist"),
        (["inspect", "{tmp}/does-not-exist"], r"does-not-exist"),
    ],
)
def test_bad_input_is_one_clear_line(model_dir, tmp_path, capsys, argv, message):
    import re

    argv = [a.format(model=model_dir, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("surgery: error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "x").exists()


def test_traceback_flag_reraises(model_dir):
    with pytest.raises(surgery.UnknownPluginError):
        main(["--traceback", "plan", str(model_dir), "-p", "gem"])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ggem", ("ggem", {})),
        ("ggem:groups=4,p_init=2.5", ("ggem", {"groups": "4", "p_init": "2.5"})),
        ("drop_layers:layers=[1,2],x=y", ("drop_layers", {"layers": "[1,2]", "x": "y"})),
    ],
)
def test_parse_plugin_spec(text, expected):
    assert parse_plugin_spec(text) == expected


def test_parse_plugin_spec_without_name():
    with pytest.raises(ConfigError, match=r"the plugin name is missing"):
        parse_plugin_spec(":a=1")


def test_apply_with_calibration(model_dir, tmp_path, capsys):
    assert main(["apply", str(model_dir), "-p", "quantize:calibration_batches=2", "-o", str(tmp_path / "q")]) == 2
    assert "quantize needs calibration data" in capsys.readouterr().err
    assert (
        main(
            [
                "apply",
                str(model_dir),
                "-p",
                "quantize:calibration_batches=2",
                "--calibration",
                "digits",
                "-o",
                str(tmp_path / "q"),
            ]
        )
        == 0
    )
    model = surgery.load(tmp_path / "q")
    layer = parts(model).part("mlp_in")
    assert float(layer.input_quant.scale) != 1.0 and int(layer.input_quant.observer_enabled) == 0  # calibrated


def test_calibration_takes_the_data_specs_of_data(model_dir, tmp_path, capsys):
    """--calibration DIR: the first images of the folder's train split, through the model's processor."""
    from test_imagesets import write_imagefolder

    from surgery.data.imagesets import calibration_batches
    from surgery.data.processor import load_processor

    data = write_imagefolder(tmp_path / "images", classes=("a", "b"), per_class=5)
    assert (
        main(["apply", str(model_dir), "-p", "quantize", "--calibration", str(data), "-o", str(tmp_path / "q")]) == 0
    )
    expected = surgery.apply(
        surgery.load(model_dir), ["quantize"], calibration=calibration_batches(str(data), load_processor(model_dir))
    )
    assert sum(len(b) for b in calibration_batches(str(data), load_processor(model_dir))) == 10
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(surgery.load(tmp_path / "q")(pixel_values=x).logits, expected(pixel_values=x).logits)
    assert (
        main(
            [
                "apply",
                str(model_dir),
                "-p",
                "quantize",
                "--calibration",
                str(tmp_path / "nowhere"),
                "-o",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "could not load the Hub dataset" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_recover_trains_saves_records_and_resumes(digits, tmp_path, capsys, monkeypatch):
    folder = digits[0]
    rewritten, recovered = tmp_path / "ggem", tmp_path / "recovered"
    assert main(["apply", str(folder), "-p", "ggem", "-o", str(rewritten)]) == 0
    assert main(["recover", str(rewritten), "--data", "digits", "-o", str(recovered)]) == 2  # recorded by name only
    assert f"was made from the local model '{folder.name}'" in capsys.readouterr().err
    monkeypatch.chdir(folder.parent)  # where the base model is: found by its recorded name
    assert (
        main(
            [
                "recover",
                str(rewritten),
                "--data",
                "digits",
                "-o",
                str(recovered),
                "--epochs",
                "1",
                "--warmup-epochs",
                "1",
                "--lr",
                "1e-3",
            ]
        )
        == 0
    )
    assert "recovered" in capsys.readouterr().out
    log = json.loads((recovered / "recovery_log.json").read_text())
    figures = json.loads((recovered / "surgery_results.json").read_text())
    assert [r["stage"] for r in log["history"]] == ["new parameters", "all parameters"]
    # epochs monitored on the validation split; the test split measured once, after recovery, and reported
    from surgery.evaluation.measure import dataset_accuracy

    assert log["accuracy"] == dataset_accuracy(recovered, "digits", "validation")["accuracy"]
    assert figures["accuracy"] == dataset_accuracy(recovered, "digits", "test")["accuracy"]
    assert figures["accuracy_after_surgery"] == dataset_accuracy(rewritten, "digits", "test")["accuracy"]
    assert figures["accuracy_before"] == dataset_accuracy(folder, "digits", "test")["accuracy"]
    assert "360 test images" in figures["dataset"] and "validation" in figures["recovery"]["monitored"]["on"]
    assert figures["recovery"]["monitored"]["accuracy"] == log["accuracy"]
    assert figures["recovery"]["teacher"] == folder.name  # the base model recorded in the recipe, by name
    reloaded = surgery.load(recovered)
    assert [s.plugin for s in surgery.history(reloaded)] == ["ggem"]
    text = surgery.card(recovered, measure=False).read_text()
    assert "## Recovery" in text and f"| after recovery | {figures['accuracy'] * 100:.2f} % |" in text
    assert "The epochs were monitored on" in text

    assert (
        main(
            [
                "recover",
                str(rewritten),
                "--data",
                "digits",
                "-o",
                str(recovered),
                "--epochs",
                "2",
                "--warmup-epochs",
                "1",
                "--resume",
                "--eval-split",
                "none",
            ]
        )
        == 0
    )
    log = json.loads((recovered / "recovery_log.json").read_text())
    assert [r["epoch"] for r in log["history"]] == [3] and log["resumed_from"].endswith("epoch-2")


def test_recover_on_data_without_a_validation_split_says_so_and_reports_the_test_split(digits, tmp_path, capsys):
    from test_imagesets import write_imagefolder

    from surgery.evaluation.measure import dataset_accuracy

    folder = digits[0]
    data = write_imagefolder(tmp_path / "images", classes=tuple("0123456789"), per_class=2)
    rewritten, recovered = tmp_path / "ggem", tmp_path / "recovered"
    assert main(["apply", str(folder), "-p", "ggem", "-o", str(rewritten)]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "recover",
                str(rewritten),
                "--data",
                str(data),
                "-o",
                str(recovered),
                "--epochs",
                "1",
                "--warmup-epochs",
                "0",
                "--teacher",
                str(folder),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "has no split 'validation'" in err and "No per-epoch evaluation (pass --eval-split" in err
    figures = json.loads((recovered / "surgery_results.json").read_text())
    assert figures["dataset"] == "images, split 'test', 20 images" and figures["recovery"]["monitored"]["on"] is None
    assert figures["accuracy"] == dataset_accuracy(recovered, str(data), "test")["accuracy"]
    assert (
        main(
            [
                "recover",
                str(rewritten),
                "--data",
                str(data),
                "-o",
                str(tmp_path / "x"),
                "--eval-split",
                "validation",
                "--teacher",
                str(folder),
                "--epochs",
                "1",
            ]
        )
        == 2
    )  # asked for by name: it must exist
    assert "has no split 'validation'" in capsys.readouterr().err


def test_recover_without_a_recorded_base_model_asks_for_a_teacher(model_dir, tmp_path, capsys):
    model = surgery.load(model_dir)
    model.config._name_or_path = ""
    surgery.apply(model, "ggem").save_pretrained(tmp_path / "m")
    assert main(["recover", str(tmp_path / "m"), "--data", "digits", "-o", str(tmp_path / "o")]) == 2
    assert "--teacher" in capsys.readouterr().err


def test_recover_runs_data_parallel_under_torchrun(digits, tmp_path):
    """Two CPU processes (gloo): each takes half of every epoch's batches; the main process saves."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    folder = digits[0]
    rewritten, recovered = tmp_path / "ggem", tmp_path / "recovered"
    assert main(["apply", str(folder), "-p", "ggem", "-o", str(rewritten)]) == 0
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "-m",
        "surgery.cli",
        "recover",
        str(rewritten),
        "--data",
        "digits",
        "-o",
        str(recovered),
        "--epochs",
        "1",
        "--eval-split",
        "none",
        "--teacher",
        str(folder),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = json.loads((recovered / "recovery_log.json").read_text())
    assert log["processes"] == 2 and log["history"][0]["steps"] == 18  # ceil(1149 / 32 / 2)
    surgery.load(recovered)


def test_recover_with_lora_keeps_or_merges_the_adapter(digits, tmp_path, capsys):
    from peft import PeftModel

    folder = digits[0]
    rewritten = tmp_path / "ggem"
    assert main(["apply", str(folder), "-p", "ggem", "-o", str(rewritten)]) == 0
    for merge in ("true", "false"):
        out = tmp_path / f"lora-{merge}"
        assert (
            main(
                [
                    "recover",
                    str(rewritten),
                    "--data",
                    "digits",
                    "-o",
                    str(out),
                    "--epochs",
                    "1",
                    "--teacher",
                    str(folder),
                    "--eval-split",
                    "test",
                    "--lora",
                    f"r=4,alpha=8,targets=attention+mlp,merge={merge}",
                ]
            )
            == 0
        )
        log = json.loads((out / "recovery_log.json").read_text())
        assert log["lora"]["outcome"] == ("merged" if merge == "true" else "adapter")
        assert 0 < log["trainable_parameters"] < log["parameters"]
        text = surgery.card(out, measure=False).read_text()
        assert "LoRA adapters (PEFT; rank 4, alpha 8.0" in text
        model = surgery.load(out)
        if merge == "false":
            assert "kept beside the model, in `adapter/`" in text
            assert isinstance(model, PeftModel)  # surgery.load gives the model with its adapter
        else:
            assert not (out / "adapter").exists() and "merged into the weights" in text
        labels = digits[
            3
        ]  # the reloaded model (and adapter) is the one recover evaluated (preprocessing may round apart)
        assert accuracy(model.eval(), digits[2], labels) == pytest.approx(log["accuracy"], abs=1.01 / len(labels))
    assert (
        main(
            [
                "recover",
                str(rewritten),
                "--data",
                "digits",
                "-o",
                str(tmp_path / "x"),
                "--teacher",
                str(folder),
                "--lora",
                "r=0",
            ]
        )
        == 2
    )
    assert "recover lora: option 'r' got 0" in capsys.readouterr().err
    for command in (
        ["eval", "--data", "digits"],
        ["export", "--to", "onnx", "-o", str(tmp_path / "onnx")],
        ["apply", "-p", "ggem", "-o", str(tmp_path / "y")],
    ):
        assert main([command[0], str(tmp_path / "lora-false"), *command[1:]]) == 2  # would leave the adapter out
        assert "holds a LoRA adapter" in capsys.readouterr().err


def test_families_prints_the_table_and_its_json(capsys):
    assert main(["families"]) == 0
    out = capsys.readouterr().out
    assert "| method | ViT | ViT-MSN | DeiT | Swin | Swinv2 | DINOv2 | DINOv2 with registers |" in out
    assert main(["families", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["families"]["swinv2"]["traits"] == [
        "cosine_attention",
        "no_prefix",
        "post_norm",
        "relative_position_bias",
        "windowed",
    ]
    (bivit,) = [c for c in data["support"] if c["method"] == "bivit" and c["model_type"] == "swinv2"]
    assert bivit["supported"] is False and bivit["notes"][0][0] == "cosine_attention"
    assert main(["list", "--json"]) == 0
    (merge,) = [m for m in json.loads(capsys.readouterr().out) if m["name"] == "token_merge"]
    assert merge["model_types"] == ["*"] and "dinov2_with_registers" in merge["families"]
    assert "swin" in merge["families"] and "swinv2" not in merge["families"]  # Swin with unmerge=True


def test_version_names_surgery_and_the_stack_it_runs_in(capsys):
    import platform

    import transformers

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == (
        f"surgery {surgery.__version__} (transformers {transformers.__version__}, "
        f"torch {torch.__version__}, Python {platform.python_version()})"
    )


def test_env_reports_versions_cpu_and_plugins_as_text_and_json(capsys):
    import transformers

    assert main(["env", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)  # nothing else on stdout
    assert env["surgery"] == surgery.__version__ and env["versions"]["transformers"] == transformers.__version__
    assert env["versions"]["torch"] == torch.__version__ and env["cpu"]["torch_threads"] == torch.get_num_threads()
    assert set(env["plugins"]) == {m.name for m in surgery.list_methods()}
    assert main(["env"]) == 0
    text = capsys.readouterr().out
    assert f"- transformers: {transformers.__version__}" in text and "int8 instructions: " in text
    assert all(f"{m.name} ({m.package} {m.version})" in text for m in surgery.list_methods())


def test_ctrl_c_is_one_line_and_status_130(capsys, monkeypatch):
    import surgery.cli.catalog_commands as commands
    from surgery.cli import parser

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(parser, "cmd_list", interrupted)
    assert main(["list"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "surgery: interrupted (list)\n" and captured.out == ""
    with pytest.raises(KeyboardInterrupt):
        main(["--traceback", "list"])
    assert commands.cmd_list is not interrupted
