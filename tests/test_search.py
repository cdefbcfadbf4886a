"""The recipe search: its space from the methods' declarations, composition by the host's rules,
budgets, determinism under a seed, resuming after a kill, refusals, and small end-to-end searches.

The end-to-end searches run on the tiny digits ViT (the ``digits`` fixture) with ``objective="flops"``
where they compare runs: FLOPs and accuracy are exact, so which candidates the sampler proposes
depends on the seed alone (latency is measured too, but timings vary run to run).
"""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import pytest

import surgery
from surgery.cli.main import main
from surgery.core.searchable import SearchSpace
from surgery.errors import ConfigError
from surgery.recipe_search import report
from surgery.recipe_search.cache import CACHE_FILE, STALE_FILE
from surgery.recipe_search.space import Space
from surgery.recipe_search.trial import Bench, unpack
from conftest import tiny


def quiet(*_):
    pass


def small(folder, output=None, data="digits", **options):
    settings = dict(
        runtime="torch",
        objective="flops",
        flops=0.9,
        max_drop=5.0,
        trials=6,
        repeats=1,
        progress=False,
        include=["token_merge", "quantize"],
        output=output,
        log=quiet,
    )
    settings.update(options)
    return surgery.search(folder, data, **settings)


# -- the space --------------------------------------------------------------------------------
def test_the_space_is_every_declared_method_that_plans_and_no_set_breaks_the_hosts_rules():
    model = tiny("vit")
    host = surgery.get_host()
    space = Space.build(model, max_steps=2)
    declared = {name for name, m in host.methods.items() if m.search is not None}
    assert set(space.methods) | {n for n in space.left_out if "+" not in n} >= declared
    for name in declared - set(space.methods):
        assert space.left_out[name]  # every method left out says why
    for combo, order in space.combos.items():
        for a in order:
            for b in order:
                assert not host.methods[a].conflict_with(host.methods[b]), (
                    f"{combo} combines {a} with {b}, which conflict"
                )
        surgery.plan(model, list(order))  # the order the space recorded plans
    # declared conflicts are left out with the host's own reason
    conflicting = [
        (a, b)
        for a in space.methods
        for b in space.methods
        if a < b and (host.methods[a].conflict_with(host.methods[b]) or host.methods[b].conflict_with(host.methods[a]))
    ]
    assert conflicting
    for a, b in conflicting:
        assert f"{a}+{b}" not in space.combos and space.left_out[f"{a}+{b}"]


def test_a_family_a_method_refuses_leaves_it_out_with_the_reason():
    space = Space.build(tiny("swinv2"), max_steps=1)
    assert "token_prune" not in space.methods and "cosine" in space.left_out["token_prune"].lower()
    assert "token_merge" not in space.methods and "cosine" in space.left_out["token_merge"].lower()


def test_option_values_a_family_requires_are_held_fixed_in_every_candidate():
    """Swin and BEiT take token reduction with unmerge=True only: the search tries it so, and replays it."""
    for arch in ("swin", "beit"):
        model = tiny(arch)
        space = Space.build(model, max_steps=1, include=["token_merge", "ggem"])
        assert "token_merge" in space.methods and space.required == {"token_merge": {"unmerge": True}}
        candidates = [c for c in space.starting_points() if c.steps[0][0] == "token_merge"] + [
            space.probe("token_merge")
        ]
        assert candidates and all(dict(c.steps[0][1])["unmerge"] is True for c in candidates)
        again = space.from_steps(candidates[-1].specs())
        assert again == candidates[-1] and space.params(again) == {
            "recipe": "token_merge",
            "token_merge.r": 8,
            "token_merge.branches": 0,
        }
        assert space.describe()["required"] == {"token_merge": {"unmerge": True}}
        surgery.apply(model, candidates[-1].specs())  # the candidate applies
    assert Space.build(tiny("vit"), max_steps=1).required == {}


@dataclasses.dataclass(frozen=True)
class _Options(surgery.SurgeryConfig):
    plugin: ClassVar[str] = "noop"
    k: int = 1

    def validate(self):
        if self.k < 1:
            raise self.invalid("k", self.k, "an integer >= 1")


def _method(**search):
    return surgery.SurgeryMethod(
        name="noop",
        summary="",
        config_class=_Options,
        apply=lambda m, c, a: surgery.Rewrite([]),
        search=SearchSpace(**search),
    )


def test_a_declared_space_is_checked_against_the_methods_options():
    with pytest.raises(
        ConfigError,
        match=r"method 'noop': its search space names the option 'kk', which _Options lacks.*Did you mean 'k'",
    ):
        _method(options={"kk": (1, 2)})
    with pytest.raises(
        ConfigError,
        match=r"method 'noop': its search space tries k=0, which the method refuses: noop: option 'k' got 0",
    ):
        _method(options={"k": (0, 2)})
    with pytest.raises(ConfigError, match=r"option 'k' lists no values"):
        SearchSpace(options={"k": ()})
    with pytest.raises(ConfigError, match=r"option 'k' has the value \{1: 2\}"):
        SearchSpace(options={"k": ({1: 2},)})
    assert _method(options={"k": (1, 2, 3)}).search.size() == 3
    with pytest.raises(ConfigError, match=r"quiet names 'kk', which is not among its options: k.*Did you mean 'k'"):
        SearchSpace(options={"k": (1, 2)}, quiet={"kk": 1})
    with pytest.raises(ConfigError, match=r"quiet gives 'k' the value 3, which is not among its values: \[1, 2\]"):
        SearchSpace(options={"k": (1, 2)}, quiet={"k": 3})
    with pytest.raises(ConfigError, match=r"fastest names 'kk', which is not among its options: k.*Did you mean 'k'"):
        SearchSpace(options={"k": (1, 2)}, fastest={"kk": 1})
    with pytest.raises(ConfigError, match=r"fastest gives 'k' the value 3, which is not among its values: \[1, 2\]"):
        SearchSpace(options={"k": (1, 2)}, fastest={"k": 3})
    assert SearchSpace(options={"k": (1, 2), "j": ("a", "b")}, fastest={"k": 2}).fastest_point() == {"k": 2, "j": "a"}


def test_labels_leave_out_the_options_a_space_declares_quiet():
    """quantize declares its "nothing chosen" values; a list read back from JSON matches its tuple."""
    from surgery.recipe_search.space import Candidate

    steps = (
        (
            "quantize",
            (
                ("activations", "int8"),
                ("float_blocks", []),
                ("float_roles", ("mlp_out",)),
                ("attention", "float"),
                ("patch_embed", "int8"),
            ),
        ),
        ("token_merge", (("r", 8),)),
    )
    assert (
        Candidate(steps).label
        == "quantize(activations=int8, float_roles=('mlp_out',), patch_embed=int8) + token_merge(r=8)"
    )
    assert Candidate((("not_installed", (("a", "float"),)),)).label == "not_installed(a=float)"  # no space: all shown


def test_refusals_name_the_field_the_value_and_what_is_allowed(digits):
    folder = digits[0]
    cases = [
        (dict(runtime="onxx"), r"'runtime' got 'onxx'; allowed: torch, onnx, openvino.*Did you mean 'onnx'"),
        (dict(objective="latncy"), r"'objective' got 'latncy'.*Did you mean 'latency'"),
        (dict(latency=1.5), r"'latency' got 1.5; allowed: a ratio to the original in \(0, 1\]"),
        (dict(trials=0), r"'trials' got 0; allowed: an integer >= 1"),
        (dict(image_size=64), r"'image_size' got 64, but the model is built for 32 px"),
        (dict(include=["token_marge"]), r"no installed method 'token_marge'.*Did you mean 'token_merge'"),
        (dict(max_drop=-1.0), r"'max_drop' got -1.0"),
    ]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message):
            small(folder, **options)
    with pytest.raises(ConfigError, match=r"needs a 'validation' split"):
        surgery.search(folder, {"test": digits[2:]}, log=quiet)


def test_include_exclude_and_max_steps_narrow_the_space():
    model = tiny("vit")
    narrowed = Space.build(model, max_steps=1, include=["token_merge", "quantize"], exclude=["quantize"])
    assert list(narrowed.methods) == ["token_merge"] and list(narrowed.combos) == ["token_merge"]
    assert all("+" not in combo for combo in Space.build(model, max_steps=1).combos)
    with pytest.raises(ConfigError, match=r"search: max_steps must be at least 1, got 0"):
        Space.build(model, max_steps=0)


def test_a_spent_time_budget_stops_before_the_next_trial(digits):
    lines = []
    result = small(digits[0], None, time_budget=0.0, log=lines.append)
    assert "search: the time budget (0 min) is spent after 0 trial(s)" in lines and result.candidates == []
    assert result.chosen is None and "none was measured" in result.message


# -- budgets, front, pick ----------------------------------------------------------------------
def _record(label, cost, accuracy, status="ok"):
    return {
        "label": label,
        "status": status,
        "latency_ratio": cost,
        "flops_ratio": cost,
        "size_ratio": cost,
        "accuracy": accuracy,
    }


def test_the_front_and_the_pick_follow_the_budget():
    records = [
        _record("a", 0.9, 0.95),
        _record("b", 0.6, 0.94),
        _record("c", 0.4, 0.90),
        _record("d", 0.7, 0.93),
        _record("e", 0.3, 0.99, status="slower"),
    ]
    assert [r["label"] for r in report.front(records, "latency")] == ["c", "b", "a"]  # d is dominated by b; e is off
    within = report.Budget("latency", latency=0.7, max_drop=1.0)
    assert report.pick(records, within, 0.95)["label"] == "b"  # the most accurate within 0.7x and 1 point
    assert (
        report.pick(records, report.Budget("latency", max_drop=6.0), 0.95)["label"] == "c"
    )  # no cost budget: the cheapest
    impossible = report.Budget("latency", latency=0.2, max_drop=1.0)
    assert report.pick(records, impossible, 0.95) is None
    assert (
        report.closest(records, impossible, 0.95)["label"] == "b"
    )  # the least over the latency budget within 1 point
    assert report.closest(records, report.Budget("latency", latency=0.2, max_drop=0.0), 0.95)["label"] == "a"
    assert report.Budget("latency", latency=0.5).violations(_record("x", 0.6, 0.9), 0.95) == pytest.approx(
        {"latency_ratio": 0.1, "accuracy_drop": 4.0}
    )


FLOAT = {
    "float_blocks": [],
    "float_roles": [],
    "attention": "float",
    "patch_embed": "float",
}  # quantize's per-layer choices: every linear int8


def test_pairs_of_front_points_whose_methods_compose_are_measured_next():
    space = Space.build(tiny("vit"), max_steps=2, include=["token_merge", "token_prune", "quantize"])
    singles = [
        dict(_record("m8", 0.7, 0.95), steps=[["token_merge", {"r": 8}]]),
        dict(_record("m16", 0.5, 0.94), steps=[["token_merge", {"r": 16}]]),
        dict(_record("p", 0.45, 0.93), steps=[["token_prune", {"flops": 0.5}]]),
        dict(_record("q", 0.8, 0.96), steps=[["quantize", {"activations": "int8", **FLOAT}]]),
        dict(_record("worse", 0.9, 0.90), steps=[["quantize", {"activations": "none", **FLOAT}]]),
    ]  # off the front
    labels = [c.label for c in space.compositions(singles, "latency")]
    # token_merge and token_prune declare a conflict, and a method never pairs with itself
    assert labels == [
        "quantize(activations=int8) + token_prune(flops=0.5)",
        "quantize(activations=int8) + token_merge(r=16)",
        "quantize(activations=int8) + token_merge(r=8)",
    ]  # in the order the host plans them


# -- end to end --------------------------------------------------------------------------------
def test_a_search_picks_within_budget_saves_the_pick_and_reports_once_on_test(digits, tmp_path):
    result = small(digits[0], tmp_path / "out", trials=8)
    chosen = result.chosen
    assert chosen is not None and chosen["status"] == "ok"
    assert chosen["flops_ratio"] <= 0.9 and (result.original["accuracy"] - chosen["accuracy"]) * 100 <= 5.0
    assert chosen in result.front
    int8 = next(c for c in result.candidates if c["label"] == "quantize(activations=int8)")
    assert int8["size_ratio"] < 0.7  # the saved checkpoint's bytes: int8 weights, no observer state
    out = tmp_path / "out"
    saved = json.loads((out / "search.json").read_text())
    assert saved["chosen"]["label"] == chosen["label"] and len(saved["candidates"]) == len(result.candidates)
    assert "**pick**" in (out / "search.md").read_text() and (out / "search_front.png").stat().st_size > 0
    for path in out.rglob("*"):  # names and Hub ids only: the folder is pushed as it is
        if path.suffix in (".json", ".md"):
            assert str(tmp_path) not in path.read_text() and str(digits[0]) not in path.read_text(), path.name
    reloaded = surgery.load(out)  # a normal surgery folder: the pick's recipe, weights and processor
    host = surgery.get_host()  # the options the pick names, with those it left unset as the family set them
    assert [[s.plugin, dict(s.options)] for s in surgery.history(reloaded)] == [
        [p, host.method(p).resolved(host.method(p).make_config(o), host.anatomy("vit")).to_dict()]
        for p, o in chosen["steps"]
    ]
    assert "How this recipe was found" in (out / "README.md").read_text()
    assert result.test["images"] == 360 and 0.0 <= result.test["pick"] <= 1.0
    # the pick's recorded right/wrong answers are those of the saved model on the search split
    from surgery.data.tasks import task_tensors
    from surgery.evaluation.accuracy import predict_logits

    x, y = task_tensors(out, "validation", "digits")
    assert (predict_logits(reloaded, x).argmax(-1) == y).numpy().tolist() == unpack(chosen["correct"], len(y)).tolist()


@pytest.mark.slow  # 50 s on 2 cores; the killed-and-resumed search below reaches the same front with the same seed
def test_the_same_seed_proposes_the_same_candidates(digits, tmp_path):
    # 16 starting points (token_merge alone at 9 values, quantize's 5 options swept: 7), then pairs and the sampler's proposals
    first = small(digits[0], tmp_path / "a", trials=20)
    second = small(digits[0], tmp_path / "b", trials=20)
    keys = [json.loads((tmp_path / name / CACHE_FILE).read_text())["trials"] for name in ("a", "b")]
    assert keys[0] == keys[1] and len(keys[0]) == 20
    assert [c["label"] for c in first.candidates] == [c["label"] for c in second.candidates]
    assert any("+" in c["label"] for c in first.candidates)
    small(digits[0], tmp_path / "c", trials=20, seed=1)
    other = json.loads((tmp_path / "c" / CACHE_FILE).read_text())["trials"]
    assert other[:16] == keys[0][:16] and other != keys[0]  # the same starting points, then other proposals


def test_a_killed_search_resumes_measures_nothing_twice_and_reaches_the_same_front(digits, tmp_path, monkeypatch):
    whole = small(digits[0], tmp_path / "whole", trials=18)
    measure, calls = Bench.measure, []

    def dying(self, candidate, *args):  # killed while measuring the 17th candidate, after the starting points
        calls.append(candidate.key)
        if len(calls) == 17:
            raise KeyboardInterrupt
        return measure(self, candidate, *args)

    monkeypatch.setattr(Bench, "measure", dying)
    with pytest.raises(KeyboardInterrupt):
        small(digits[0], tmp_path / "killed", trials=18)
    cached = json.loads((tmp_path / "killed" / CACHE_FILE).read_text())
    assert len(cached["measured"]) == 16
    monkeypatch.setattr(Bench, "measure", measure)
    measured_again = []
    monkeypatch.setattr(Bench, "measure", lambda self, c, *a: measured_again.append(c.key) or measure(self, c, *a))
    lines = []
    resumed = small(digits[0], tmp_path / "killed", trials=18, log=lines.append)
    assert any("resuming from" in line and "16 candidate(s) measured" in line for line in lines), lines
    *searched, rebuilt = measured_again  # the last one builds the pick again, to save it
    assert not set(searched) & set(cached["measured"])
    assert json.loads(rebuilt) == resumed.chosen["steps"]
    assert (
        json.loads((tmp_path / "killed" / CACHE_FILE).read_text())["trials"]
        == json.loads((tmp_path / "whole" / CACHE_FILE).read_text())["trials"]
    )
    assert [(r["label"], r["flops_ratio"], r["accuracy"]) for r in resumed.front if r["status"] == "ok"] == [
        (r["label"], r["flops_ratio"], r["accuracy"]) for r in whole.front
    ]


def test_a_changed_setting_sets_the_cache_aside_and_says_which(digits, tmp_path):
    small(digits[0], tmp_path / "out", trials=2)
    lines = []
    small(digits[0], tmp_path / "out", trials=2, batch_size=2, log=lines.append)
    assert any("made for another batch_size" in line for line in lines)
    assert (tmp_path / "out" / STALE_FILE).exists()


def test_an_impossible_budget_names_the_closest_point_and_saves_no_model(digits, tmp_path):
    lines = []
    result = small(digits[0], tmp_path / "out", trials=4, flops=0.05, max_drop=0.0, log=lines.append)
    assert result.chosen is None and result.model is None
    assert "no candidate meets flops <= 0.05x, at most 0 accuracy points lost; the closest: " in result.message
    assert result.message in lines
    assert (tmp_path / "out" / "search.json").exists() and not (tmp_path / "out" / "config.json").exists()


def test_methods_that_need_recovery_are_recovered_only_when_they_can_reach_the_front(digits, tmp_path):
    recovered = small(digits[0], None, include=["ggem"], flops=None, max_drop=50.0, trials=1, recover_epochs=1)
    (record,) = recovered.candidates
    assert record["needs_recovery"] and record["recovered"] and record["recovery"]["epochs"] == 1
    assert record["accuracy"] != record["accuracy_before_recovery"]  # ggem's readout was trained
    # token_merge r=2 (measured first: training-free) holds the original's accuracy at fewer FLOPs
    skipped = small(
        digits[0], None, include=["ggem", "token_merge"], flops=None, max_drop=50.0, trials=10, recover_epochs=1
    )
    ggem = next(r for r in skipped.candidates if r["label"] == "ggem")
    merge = next(r for r in skipped.candidates if r["label"] == "token_merge(r=2)")
    assert merge["accuracy"] >= skipped.original["accuracy"]
    assert (
        ggem["status"] == "not recovered" and "already holds the original's accuracy at a lower cost" in ggem["reason"]
    )
    off = small(digits[0], None, include=["ggem"], flops=None, trials=1)
    assert (
        off.candidates[0]["status"] == "not recovered"
        and off.candidates[0]["reason"] == "recovery is off (recover_epochs=0)"
    )
    with pytest.raises(ConfigError, match=r"recover_epochs needs a 'train' split"):
        surgery.search(digits[0], {"validation": (digits[2], digits[3])}, recover_epochs=1, log=quiet)


def test_lora_recovery_inside_the_search_is_merged_recorded_and_saved_as_measured(digits, tmp_path):
    from surgery.data.tasks import task_tensors
    from surgery.evaluation.accuracy import predict_logits

    result = small(
        digits[0],
        tmp_path / "out",
        include=["ggem"],
        flops=None,
        max_drop=100.0,
        trials=1,
        recover_epochs=1,
        lora="r=4,alpha=8",
    )  # one epoch: the point is the plumbing, not the accuracy
    (record,) = result.candidates
    assert record["recovered"] and record["recovery"]["lora"]["r"] == 4 and record["recovery"]["lora"]["merge"] is True
    assert result.chosen is not None and result.chosen["label"] == "ggem", result.message
    reloaded = surgery.load(tmp_path / "out")  # merged: a plain surgery model, no PEFT layers
    assert not any("lora_" in name for name, _ in reloaded.named_parameters())
    x, y = task_tensors(tmp_path / "out", "validation", "digits")
    assert (predict_logits(reloaded, x).argmax(-1) == y).numpy().tolist() == unpack(record["correct"], len(y)).tolist()
    with pytest.raises(ConfigError, match=r"search: 'lora' got merge=False; allowed: merge=True"):
        small(digits[0], None, include=["ggem"], trials=1, recover_epochs=1, lora={"merge": False})
    with pytest.raises(ConfigError, match=r"search: 'lora' was given but 'recover_epochs' is 0"):
        small(digits[0], None, include=["ggem"], trials=1, lora=True)
    with pytest.raises(ConfigError, match=r"recover lora"):
        small(digits[0], None, include=["ggem"], trials=1, recover_epochs=1, lora="rank=4")


def test_a_local_imagefolder_is_searched_through_the_models_processor(digits, tmp_path):
    from surgery.data.digits import digits_splits
    from surgery.data.tasks import task_tensors

    folder = digits[0]
    for split in ("validation", "test"):
        chosen = digits_splits()[split]
        for index in range(40):
            target = tmp_path / "data" / split / str(chosen.labels[index])
            target.mkdir(parents=True, exist_ok=True)
            chosen.images[index].save(target / f"{index}.png")
    result = small(folder, None, data=str(tmp_path / "data"), trials=2, include=["token_merge"], flops=0.95)
    x, y = task_tensors(folder, "validation", "digits", limit=40)
    from surgery.evaluation.accuracy import predict_logits

    expected = (predict_logits(surgery.load(folder), x).argmax(-1) == y).numpy()
    # the same 40 images (the imagefolder lists them by class folder), labels mapped by name
    assert unpack(result.original["correct"], 40).sum() == expected.sum()
    assert result.original["accuracy"] == pytest.approx(expected.mean())
    assert result.test is None or result.test["images"] == 40


def test_onnx_runtime_candidates_are_exported_checked_and_timed(digits, tmp_path):
    pytest.importorskip("onnxruntime")
    result = small(
        digits[0],
        None,
        runtime="onnx",
        objective="latency",
        flops=None,
        latency=None,
        trials=2,
        include=["token_merge"],
        min_speedup=None,
    )  # measure, whatever the tiny model's speed-up
    assert len(result.candidates) == 2 and result.summary["pays_off"] == {}
    assert all("export_max_abs_diff" in c and c["export_max_abs_diff"] < 1e-4 for c in result.candidates)
    assert all(c["latency_ratio"] > 0 and c["latency_ms_original"] > 0 for c in result.candidates)


def test_the_command_line_writes_the_pick_and_exits_1_when_nothing_fits(digits, tmp_path, capsys):
    args = [
        str(digits[0]),
        "--data",
        "digits",
        "--objective",
        "flops",
        "--flops",
        "0.95",
        "--max-drop",
        "5",
        "--trials",
        "3",
        "--repeats",
        "1",
        "--include",
        "token_merge",
        "-o",
    ]
    assert main(["search", *args, str(tmp_path / "ok")]) == 0
    assert "**pick**" in capsys.readouterr().out and (tmp_path / "ok" / "config.json").exists()
    assert (
        main(
            [
                "search",
                str(digits[0]),
                "--objective",
                "flops",
                "--flops",
                "0.05",
                "--max-drop",
                "0",
                "--trials",
                "2",
                "--repeats",
                "1",
                "--include",
                "token_merge",
                "--json",
                "-o",
                str(tmp_path / "none"),
            ]
        )
        == 1
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["chosen"] is None and summary["message"].startswith("search: no candidate meets")


def test_a_hub_dataset_is_searched_through_the_hub_api(digits, tmp_path):
    """``--data OWNER/NAME``: 🤗 datasets reads the dataset repo from the (loopback) Hub, with every
    route it takes known to the stand-in, and the search scores the same images as from disk."""
    import os
    import subprocess
    import sys

    from fakehub import FakeHub

    from surgery.data.imagesets import task_dataset
    from surgery.data.tasks import task_tensors
    from surgery.evaluation.accuracy import predict_logits

    with FakeHub(tmp_path / "hub") as hub:
        repo = hub.repo("me/digits-mini", "dataset") / "data"
        repo.mkdir(parents=True)
        for split in ("train", "validation", "test"):  # the layout `Dataset.push_to_hub` writes
            task_dataset("digits", split).select(range(40)).to_parquet(str(repo / f"{split}-00000-of-00001.parquet"))
        env = dict(
            os.environ,
            HF_ENDPOINT=hub.url,
            HF_HUB_OFFLINE="0",
            HF_DATASETS_OFFLINE="0",
            HF_HOME=str(tmp_path / "home"),
            HF_HUB_DISABLE_UPDATE_CHECK="1",
        )
        command = [
            sys.executable,
            "-m",
            "surgery.cli",
            "search",
            str(digits[0]),
            "--data",
            "me/digits-mini",
            "--objective",
            "flops",
            "--flops",
            "0.95",
            "--max-drop",
            "5",
            "--trials",
            "2",
            "--repeats",
            "1",
            "--include",
            "token_merge",
            "--json",
            "-o",
            str(tmp_path / "out"),
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert hub.unknown == [], hub.unknown
    assert done.returncode in (0, 1) and (tmp_path / "out" / "search.json").exists(), (
        done.stdout[-2000:] + done.stderr[-3000:]
    )
    record = json.loads((tmp_path / "out" / "search.json").read_text())
    x, y = task_tensors(digits[0], "validation", "digits", limit=40)
    expected = (predict_logits(surgery.load(digits[0]), x).argmax(-1) == y).float().mean().item()
    assert record["original"]["accuracy"] == pytest.approx(expected)
    assert record["data"]["name"] == "me/digits-mini" and record["data"]["images"]["validation"] == 40


def test_options_that_refuse_each_other_are_recorded_as_refused_with_the_reason(digits, tmp_path):
    """quantize's int8 attention with weight-only linears: the search records the mix and goes on."""
    from surgery.recipe_search.data import resolve
    from surgery.recipe_search.space import Candidate

    original = surgery.load(digits[0])
    bench = Bench(original, "torch", resolve("digits", digits[0], original.config), 4, tmp_path, repeats=1)
    steps = (("quantize", (("activations", "none"), ("attention", "int8"))),)
    record, model = bench.measure(Candidate(steps), None, lambda r: None)
    assert model is None and record["status"] == "refused"
    assert record["reason"].startswith("quantize: option 'attention' got 'int8'; allowed: \"float\" with weight-only")
    assert bench.speed(Candidate(steps))["reason"] == record["reason"]  # a probe the host refuses says why
    probe = bench.speed(Candidate((("token_merge", (("r", 8),)),)))
    assert probe["speed"] == pytest.approx(probe["latency_ms_original"] / probe["latency_ms"]) and probe["speed"] > 0


# -- where methods pay off ---------------------------------------------------------------------
def test_a_method_that_does_not_pay_off_on_the_runtime_is_left_out_before_the_search(
    digits, tmp_path, monkeypatch, capsys
):
    """Each method's fastest declared point is timed first (here: stand-in speeds, so the test does not
    depend on this machine's timings); one below min_speedup is left out with its speed as the reason."""
    speeds, probed = {"token_merge": 1.6, "quantize": 0.9}, []

    def speed(self, candidate):
        probed.append(candidate.label)
        return {"speed": speeds[candidate.steps[0][0]], "latency_ms": 1.0, "latency_ms_original": 1.0}

    monkeypatch.setattr(Bench, "speed", speed)
    result = small(digits[0], tmp_path / "out", objective="latency", flops=None, trials=3)
    assert probed == ["quantize(activations=int8)", "token_merge(r=24)"]  # each method alone at its fastest point
    reason = result.summary["space"]["left_out"]["quantize"]
    assert reason == (
        "does not pay off on torch here: its fastest declared point, quantize(activations=int8), ran at "
        "0.90x of the original's speed (min_speedup: 1.05x)"
    )
    assert (
        "token_merge+quantize" not in result.summary["space"]["sets"]
        and "quantize" not in result.summary["space"]["methods"]
    )
    assert result.candidates and all(c["steps"][0][0] == "token_merge" for c in result.candidates)
    assert result.summary["pays_off"]["quantize"] == {
        "label": "quantize(activations=int8)",
        "speed": 0.9,
        "latency_ms": 1.0,
        "latency_ms_original": 1.0,
    }
    assert (
        "| quantize | quantize(activations=int8) | 0.90x | no: left out |"
        in (tmp_path / "out" / "search.md").read_text()
    )
    small(digits[0], tmp_path / "out", objective="latency", flops=None, trials=3)
    assert len(probed) == 2  # resumed: the probes come from the cache
    assert any(
        c["label"].startswith("quantize")
        for c in small(digits[0], None, objective="latency", flops=None, trials=3, min_speedup=None).candidates
    )
    small(digits[0], None, trials=3)  # a FLOPs search: speed does not matter, nothing is probed
    assert len(probed) == 2
    args = [
        str(digits[0]),
        "--objective",
        "latency",
        "--min-speedup",
        "2",
        "--trials",
        "2",
        "--repeats",
        "1",
        "--include",
        "token_merge",
        "--include",
        "quantize",
        "-o",
        str(tmp_path / "none"),
    ]
    assert main(["search", *args]) == 1  # nothing pays off: nothing is searched, no model saved
    assert "search: no method pays off on torch here" in capsys.readouterr().out
    assert not (tmp_path / "none" / "config.json").exists()
    from surgery.cli.parser import build_parser
    from surgery.recipe_search.payoff import PAYS_OFF

    assert (
        build_parser().parse_args(["search", "m", "-o", "x"]).min_speedup == PAYS_OFF
    )  # the CLI's default is the rule's
    with pytest.raises(ConfigError, match=r"'min_speedup' got -1; allowed: a speed-up >= 0"):
        small(digits[0], None, objective="latency", min_speedup=-1)


def test_trait_options_change_a_methods_space_on_a_family_with_the_trait():
    """``trait_options`` adds, replaces or (with an empty tuple) takes out options on a family with the trait;
    quiet and fastest may name them and stay only where their option and value remain."""
    space = SearchSpace(
        options={"k": (1, 2), "j": ("a", "b")},
        quiet={"m": "x"},
        fastest={"k": 2, "m": "y"},
        trait_options={"windowed": {"m": ("x", "y")}, "registers": {"k": (), "j": ("c",)}},
    )
    assert space.for_traits(()) == SearchSpace(options={"k": (1, 2), "j": ("a", "b")}, fastest={"k": 2})
    on_windows = space.for_traits({"windowed", "cls_token"})
    assert on_windows.options == {"k": (1, 2), "j": ("a", "b"), "m": ("x", "y")}
    assert on_windows.quiet == {"m": "x"} and on_windows.fastest_point() == {"k": 2, "j": "a", "m": "y"}
    both = space.for_traits({"windowed", "registers"})
    assert both.options == {"j": ("c",), "m": ("x", "y")} and both.fastest == {"m": "y"} and both.size() == 2
    assert not both.trait_options
    with pytest.raises(ConfigError, match=r"option 'm' \(on windowed\) has the value \{1: 2\}"):
        SearchSpace(trait_options={"windowed": {"m": ({1: 2},)}})
    with pytest.raises(ConfigError, match=r"option 'm' \(on windowed\) lists a value twice"):
        SearchSpace(trait_options={"windowed": {"m": (1, 1)}})
    with pytest.raises(ConfigError, match=r"quiet gives 'm' the value 'z', which is not among its values"):
        SearchSpace(quiet={"m": "z"}, trait_options={"windowed": {"m": ("x", "y")}})
    with pytest.raises(ConfigError, match=r"its search space names the option 'kk', which _Options lacks"):
        _method(trait_options={"windowed": {"kk": (1,)}})
    with pytest.raises(ConfigError, match=r"its search space tries k=0, which the method refuses"):
        _method(trait_options={"windowed": {"k": (0,)}})
    with pytest.raises(ConfigError, match=r"trait_options names unknown trait\(s\) windows;.*Did you mean 'windowed'"):
        _method(trait_options={"windows": {"k": (1,)}})


def test_token_reduction_searches_its_branches_where_the_family_keeps_the_token_map():
    """On Swin and BEiT (unmerge=True only) the search tries which branches run reduced ("mlp" keeps accuracy
    where "both" loses it on Swin), and r where a FLOPs target is refused in that mode; on ViT neither. (Swin's
    relative position bias within windows is the trait that brings it there, besides the windows.)"""
    vit = Space.build(tiny("vit"), max_steps=1, include=["token_merge", "token_prune"])
    assert vit.spaces["token_merge"].options == {"r": (2, 4, 6, 8, 10, 12, 16, 20, 24)}
    assert vit.spaces["token_prune"].options == {"flops": (0.8, 0.65, 0.5, 0.35)}
    for arch in ("swin", "beit"):
        methods = ["token_merge", "token_prune", "token_transform"]
        model = tiny(arch)
        space = Space.build(model, max_steps=1, include=methods)
        assert sorted(space.methods) == methods, space.left_out
        for name in methods:
            assert (
                space.spaces[name].options["branches"] == ("both", "mlp") and "flops" not in space.spaces[name].options
            )
            assert space.probe(name).specs()[0][1]["branches"] == "both"  # the fastest point reduces both branches
            assert space.describe()["methods"][name]["options"]["branches"] == ["both", "mlp"]
        mlp = [c for c in space.starting_points() if dict(c.steps[0][1])["branches"] == "mlp"]
        assert sorted(c.steps[0][0] for c in mlp) == methods
        for candidate in mlp:
            assert candidate.label.startswith(f"{candidate.steps[0][0]}(") and "branches=mlp" in candidate.label
            assert space.from_steps(candidate.specs()) == candidate
            (step,) = surgery.history(surgery.apply(tiny(arch), candidate.specs()))
            assert (step.options["branches"], step.options["unmerge"]) == ("mlp", True)
        quiet = space.probe(methods[0]).label
        assert "branches" not in quiet and "unmerge=True" in quiet
