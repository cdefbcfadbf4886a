"""surgery bench / surgery eval: figures of a saved model, merged into surgery_results.json."""

from __future__ import annotations

import json

import pytest

import surgery
from surgery.cli import main
from surgery.evaluation.accuracy import accuracy
from surgery.evaluation.measure import RESULTS_FILE, checkpoint_figures, record

from conftest import images, tiny


def test_checkpoint_figures_count_every_saved_tensor(tmp_path):
    model = surgery.apply(tiny("vit"), "ggem")
    model.save_pretrained(tmp_path)
    figures = checkpoint_figures(tmp_path)
    assert figures["parameters"] == sum(t.numel() for t in model.state_dict().values())
    assert figures["checkpoint_mb"] == pytest.approx((tmp_path / "model.safetensors").stat().st_size / 1e6)


def test_bench_and_eval_record_figures_for_the_card(digits, tmp_path, capsys):
    folder, _, pixels, labels = digits
    out = tmp_path / "model"
    surgery.apply(surgery.load(folder), "ggem").save_pretrained(out)
    (out / "preprocessor_config.json").write_text((folder / "preprocessor_config.json").read_text())
    record(out, {"accuracy_before": 0.5})
    assert main(["bench", str(out), "--repeats", "3"]) == 0
    assert main(["eval", str(out), "--data", "digits"]) == 0
    figures = json.loads((out / RESULTS_FILE).read_text())
    assert figures["accuracy_before"] == 0.5  # kept
    assert figures["gflops"] > 0 and figures["latency_ms"] > 0 and figures["parameters"] > 0
    assert figures["accuracy"] == pytest.approx(accuracy(surgery.load(out), pixels, labels))
    assert "accuracy" in capsys.readouterr().out
    assert (
        main(["bench", str(out), "--repeats", "1"]) == 0
        and main(["eval", str(out), "--data", "digits", "--json"]) == 0
    )
    stdout = capsys.readouterr().out  # two JSON documents and nothing else: bench's, then eval's
    bench, end = json.JSONDecoder().raw_decode(stdout)
    assert bench["parameters"] == figures["parameters"]
    assert json.loads(stdout[end:])["accuracy"] == figures["accuracy"]
    text = surgery.card(out, measure=False).read_text()
    assert f"| accuracy | 50.00% | {figures['accuracy']:.2%} |" in text


def test_eval_on_an_imagefolder_matches_the_tensor_path(digits, tmp_path):
    from surgery.data.digits import digits_split

    folder, _, pixels, labels = digits
    _, test = digits_split()
    for index in range(30):
        target = tmp_path / "data" / "test" / str(test.labels[index])
        target.mkdir(parents=True, exist_ok=True)
        test.images[index].save(target / f"{index}.png")
    assert main(["eval", str(folder), "--data", str(tmp_path / "data"), "--split", "test"]) == 0
    figures = json.loads((folder / RESULTS_FILE).read_text())
    assert figures["accuracy"] == pytest.approx(accuracy(surgery.load(folder), pixels[:30], labels[:30]))
    assert figures["dataset"] == "data, split 'test', 30 images"  # a local folder by its name, never its path
    (folder / RESULTS_FILE).unlink()


@pytest.mark.parametrize("steps", [[], ["quantize"], ["bivit"], [("token_merge", {"r": 4})]])
def test_runtime_figures_count_flops_of_every_kind_of_model(steps):
    from surgery.evaluation.flops import model_flops
    from surgery.evaluation.measure import runtime_figures

    model = tiny("vit")
    calibration = [images(4)] if steps == ["quantize"] else None
    surgery.apply(model, steps, calibration=calibration)
    figures = runtime_figures(model, repeats=2)
    assert figures["gflops"] * 1e9 == model_flops(model, images(1)) > 0
    assert all(p.requires_grad for p in model.parameters() if p.is_floating_point())
