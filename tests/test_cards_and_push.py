"""Model cards from hub_cards/ templates, and a real upload to a Hub stand-in on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

import surgery
from surgery.publish.card_figures import PLOT_FILE
from surgery.publish.cards import BEGIN, END, card
from surgery.cli import main
from surgery.publish.hub import PushError, push

from conftest import tiny
from fakehub import FakeHub

TOKEN = "hf_test_token"


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "vit-tome-ggem"
    model = tiny("vit")
    model.config._name_or_path = "google/vit-base-patch16-224"
    surgery.apply(model, [("token_merge", {"r": 4}), ("ggem", {"groups": 2})]).save_pretrained(folder)
    return folder


RESULTS = {
    "accuracy": 0.9528,
    "accuracy_before": 0.9639,
    "latency_ms_before": 2.0,
    "latency_ms": 1.1,
    "dataset": "sklearn digits",
}


def test_card_metadata_sections_and_figures(saved):
    path = card(saved, results=RESULTS, model_id="me/vit-tome-ggem")
    parsed = ModelCard.load(path)
    data = parsed.data.to_dict()
    assert (
        data["library_name"] == "vision-surgery"
        and "transformers" in data["tags"]
        and data["pipeline_tag"] == "image-classification"
    )
    assert data["license"] == "apache-2.0" and data["base_model"] == "google/vit-base-patch16-224"
    assert {"surgery", "token_merge", "ggem", "vit"} <= set(data["tags"])
    (result,) = parsed.data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_name) == ("accuracy", 0.9528, "sklearn digits")
    text = parsed.text
    assert "### token_merge: ToMe token merging" in text and "### ggem: Group Generalized Mean pooling" in text
    assert "channels are split into 2 groups" in text
    assert "| accuracy | 96.39% | 95.28% |" in text and "| latency per image | 2.00 ms | 1.10 ms |" in text
    assert "| parameters | - |" in text and "| GFLOPs per image | - |" in text
    assert f"![accuracy and latency before and after surgery]({PLOT_FILE})" in text
    assert (saved / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        'surgery.load("me/vit-tome-ggem")' in text
        and 'AutoModelForImageClassification.from_pretrained("me/vit-tome-ggem")' in text
    )
    assert "None in this repository (PyTorch safetensors only)." in text


def test_card_lists_exported_formats_and_skips_plot_without_figures(saved):
    (saved / "onnx").mkdir()
    (saved / "onnx" / "model.onnx").write_bytes(b"onnx")
    text = card(saved, measure=False).read_text()
    assert "- ONNX: `onnx/model.onnx` (optimum.onnxruntime.ORTModelForImageClassification)" in text
    assert "![" not in text and not (saved / PLOT_FILE).exists()
    assert "| parameters | 0.0" in text  # counted from the safetensors header without loading


def test_regenerating_keeps_the_users_text(saved):
    path = card(saved, measure=False)
    original = path.read_text()
    header_end = original.index(BEGIN)
    edited = original[:header_end] + "Intro written by me.\n\n" + original[header_end:] + "\n## My notes\nKeep this.\n"
    path.write_text(edited)
    again = card(saved, results=RESULTS, measure=False).read_text()
    assert "Intro written by me." in again and again.index("Intro written by me.") < again.index(BEGIN)
    assert again.rstrip().endswith("## My notes\nKeep this.")
    assert again.count(BEGIN) == 1 and again.count(END) == 1 and "| accuracy | 96.39% | 95.28% |" in again


class CardSection:
    @surgery.hookimpl
    def surgery_card_sections(self, folder, steps):
        return [f"## Deployment notes\n\nTested with {len(steps)} step(s) from {os.path.basename(folder)}."]


def test_plugins_add_card_sections(saved, host_with):
    host_with(CardSection())
    text = card(saved, measure=False).read_text()
    assert "## Deployment notes\n\nTested with 2 step(s) from vit-tome-ggem." in text
    assert text.index("## Deployment notes") < text.index(END)


def test_card_cli(saved, capsys, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(RESULTS))
    assert (
        main(
            [
                "card",
                str(saved),
                "--results",
                str(results),
                "--no-measure",
                "--model-id",
                "me/x",
                "--license",
                "mit",
                "--dataset",
                "ylecun/mnist",
                "--base-model",
                "facebook/deit-tiny-patch16-224",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    data = ModelCard.load(saved / "README.md").data.to_dict()
    assert (data["license"], data["datasets"], data["base_model"]) == (
        "mit",
        ["ylecun/mnist"],
        "facebook/deit-tiny-patch16-224",
    )
    assert main(["card", str(tmp_path / "missing")]) == 2
    assert "is not a saved model folder (no config.json)" in capsys.readouterr().err


def test_push_uploads_every_file_byte_for_byte(saved, tmp_path, online):
    card(saved, results=RESULTS, model_id="me/vit-tome-ggem", measure=False)
    with FakeHub(tmp_path / "hub", token=TOKEN) as hub:
        url = push(saved, "me/vit-tome-ggem", token=TOKEN, endpoint=hub.url, private=True)
        assert hub.unknown == []
        remote = hub.repo("me/vit-tome-ggem")
        local_files = sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file())
        assert sorted(hub.commits[0]["files"]) == local_files
        for name in local_files:
            assert (remote / name).read_bytes() == (saved / name).read_bytes(), name
        assert (remote / ".private").read_text() == "True"
        assert url.startswith("https://huggingface.co/me/vit-tome-ggem/commit/")
        assert ModelCard.load(remote / "README.md").data.to_dict()["tags"][0] == "surgery"
        reloaded = surgery.load(remote)
        assert [s.plugin for s in surgery.history(reloaded)] == ["token_merge", "ggem"]
        push(saved, "me/vit-tome-ggem", token=TOKEN, endpoint=hub.url)  # updating an existing repo works
        with pytest.raises(PushError, match=r"the repository me/vit-tome-ggem already exists \(drop --new"):
            push(saved, "me/vit-tome-ggem", token=TOKEN, endpoint=hub.url, new=True)
        with pytest.raises(PushError, match=r"refused the token .* \(HTTP 401\)"):
            push(saved, "me/other", token="hf_wrong", endpoint=hub.url)


def test_push_cli_through_hf_endpoint(saved, tmp_path):
    with FakeHub(tmp_path / "hub", token=TOKEN) as hub:
        env = dict(
            os.environ, HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, HF_HUB_DISABLE_UPDATE_CHECK="1", HF_HUB_OFFLINE="0"
        )
        result = subprocess.run(
            [sys.executable, "-m", "surgery.cli", "push", str(saved), "org/model"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert "run `surgery card" in result.stderr  # no README.md yet: a note, not an error
        assert (hub.repo("org/model") / "model.safetensors").read_bytes() == (saved / "model.safetensors").read_bytes()
        hf_order = subprocess.run(
            [sys.executable, "-m", "surgery.cli", "push", "org/model-2", str(saved)],
            capture_output=True,
            text=True,
            env=env,
        )  # `hf upload REPO FOLDER`'s order
        assert hf_order.returncode == 0, hf_order.stderr
        assert (hub.repo("org/model-2") / "model.safetensors").read_bytes() == (
            saved / "model.safetensors"
        ).read_bytes()


def test_push_errors_are_one_line(saved, capsys, monkeypatch, online):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(saved.parent / "empty-hf-home"))
    assert main(["push", str(saved), "me/x"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login`.")
    )
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert main(["push", str(saved), "me/x", "--token", TOKEN]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Hub at http://127.0.0.1:{port}: the network is down" in err and "Traceback" not in err


def test_push_needs_exactly_one_folder_among_its_two_arguments(saved, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["push", "me/x", "me/y"]) == 2
    assert "neither 'me/x' nor 'me/y' is a folder here" in capsys.readouterr().err
    (tmp_path / "me" / "x").mkdir(parents=True)
    assert main(["push", str(saved), "me/x"]) == 2
    assert "are folders here, so which one is the repository id is ambiguous" in capsys.readouterr().err


def test_push_refuses_offline_mode(saved):
    with pytest.raises(PushError, match=r"offline mode is on \(HF_HUB_OFFLINE=1\)"):
        push(saved, "me/x", token=TOKEN)


def test_a_local_base_is_named_portably_and_the_card_says_how_to_install(tmp_path):
    base = tmp_path / "secret" / "place" / "my-vit"
    tiny("vit").save_pretrained(base)
    model = surgery.load(base)
    surgery.apply(model, ["ggem"]).save_pretrained(tmp_path / "out")
    from surgery.recovery import RecoveryConfig, RecoveryResult

    result = RecoveryResult(config=RecoveryConfig().to_dict(), new_parameters=[], accuracy=0.9)
    text = card(tmp_path / "out", measure=False, results=result.figures(str(base), "digits", "digits")).read_text()
    assert str(tmp_path) not in text and "`my-vit` (a local model)" in text
    assert "pip install vision-surgery" in text and "pip install surgery " not in text


def test_the_card_says_what_each_step_does_with_the_familys_traits(tmp_path):
    """From the plugins' declarations (trait_notes), for this model's family only."""
    model = surgery.apply(tiny("dinov2-registers"), [("token_merge", {"r": 4}), "ggem"])
    model.save_pretrained(tmp_path)
    text = card(tmp_path, measure=False).read_text()
    assert "On DINOv2 with registers: cls mean readout: the head's mean runs over the reduced tokens" in text
    assert "registers: register tokens are prefix tokens: never reduced, kept in front" in text
    assert "cls mean readout: the cls half of the read-out becomes the GGeM pool; the mean half stays" in text
    surgery.apply(tiny("vit"), ["ggem"]).save_pretrained(tmp_path / "vit")
    assert "On ViT" not in card(tmp_path / "vit", measure=False).read_text()  # nothing to say on a plain ViT


def test_eval_and_bench_take_a_hub_id_and_print_json(digits, tmp_path, online):
    """A model named by Hub id (the loopback stand-in) is scored and timed, the JSON is valid on stdout,
    and the figures are not written anywhere (no local folder to keep them beside)."""
    folder = digits[0]
    with FakeHub(tmp_path / "hub", token=TOKEN) as hub:
        push(folder, "me/digits", token=TOKEN, endpoint=hub.url)
        env = dict(
            os.environ,
            HF_ENDPOINT=hub.url,
            HF_HUB_OFFLINE="0",
            HF_HOME=str(tmp_path / "hf-home"),
            HF_HUB_DISABLE_UPDATE_CHECK="1",
            HF_TOKEN=TOKEN,
        )
        runs = {
            command: subprocess.run(
                [sys.executable, "-m", "surgery.cli", *command],
                capture_output=True,
                text=True,
                env=env,
                timeout=300,
                cwd=tmp_path,
            )
            for command in (
                ("eval", "me/digits", "--data", "digits", "--json"),
                ("bench", "me/digits", "--repeats", "2"),
            )
        }
    for command, run in runs.items():
        assert run.returncode == 0, (command, run.stderr[-2000:])
        assert "not recorded: me/digits is a Hub id" in run.stderr, (command, run.stderr[-500:])
    scored = json.loads(runs[("eval", "me/digits", "--data", "digits", "--json")].stdout)
    from surgery.evaluation.measure import dataset_accuracy

    assert scored["accuracy"] == dataset_accuracy(folder, "digits", "test")["accuracy"]
    timed = json.loads(runs[("bench", "me/digits", "--repeats", "2")].stdout)
    assert timed["latency_ms"] > 0 and not list(tmp_path.glob("**/surgery_results.json"))
