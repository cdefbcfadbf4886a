"""The proof table: every plugin and the main combinations on the built-in digits ViT.

For each row: test accuracy of the original model, right after surgery (training-free) and after
recovery (`surgery.recover`, distillation from the original), with GFLOPs per image, checkpoint
size and latency (batch of 64 test digits, medians over repeats, every model timed side by side in
one run). int8 rows quantize last, after the float steps have been recovered (post-training
quantization, calibrated on 256 training digits). Targets are checked from the measured numbers.

Recipes are chosen on the validation split (288 digits): each recovered row tries the learning rates
in ``LEARNING_RATES`` and keeps the one with the best validation accuracy (the first on a tie); the
test split (360 digits) is measured once, for the chosen recipe only.

    python benchmarks/proof_table.py              # about 40 minutes on 2 CPU cores (15 of them the runtimes)
    python benchmarks/proof_table.py --only ggem  # rows whose name contains "ggem"
    python benchmarks/proof_table.py --arch dinov2   # the same rows on the digits DINOv2 (about 30 minutes)
    python benchmarks/proof_table.py --report-only   # proof_table.md again from the .json files
    python benchmarks/proof_table.py --task shapes --skip-runtimes   # the proving ground (5,000 test images)

Writes benchmarks/results/proof_table.md, .json and .png; ``--arch A`` writes proof_table_A.json and
.md (rows the family refuses are left out, the runtimes are the ViT-B/16 ones and not run again), and
proof_table.md then shows A's accuracies in two more columns. ``--task shapes`` runs the rows on the
proving ground's ViT (surgery.data.shapes) and writes proof_table_shapes.*: recovery sees the first
``SHAPES_TRAIN`` training images for ``SHAPES_EPOCHS`` epochs (a budget for 2 CPU cores), and every
accuracy comes with its paired comparison to the original on the same 5,000 test images (difference
with a bootstrap 95 % interval, exact McNemar).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoImageProcessor

import surgery
from surgery.core.support import support
from surgery.data.tasks import task_tensors
from surgery.demo.zoo import ARCHITECTURES
from surgery.demo.run import DEMO_RECOVERY
from surgery.demo.model import default_model
from surgery.evaluation.accuracy import predict_logits
from surgery.data.imagesets import task_dataset
from surgery.evaluation.measure import checkpoint_figures
from surgery.evaluation.paired import correct_of
from surgery.recovery import recover

from surgery.evaluation.flops import model_flops

import speed_table
from _common import RESULTS, markdown_table, time_side_by_side, write_report
from _proof_report import write_task_report

# Recovery recipes (surgery.recover options): shared defaults, then per method; the learning rate is
# chosen per row on the validation split from LEARNING_RATES.
LEARNING_RATES = (5e-4, 1e-3)
# --task shapes: recovery on the first SHAPES_TRAIN training images for SHAPES_EPOCHS epochs (one warm-up
# epoch where the recipe has warm-up), at SHAPES_LR unless --lrs names others
SHAPES_TRAIN, SHAPES_EPOCHS, SHAPES_LR = 6000, 2, (5e-4,)
SHAPES_TOME_R = 11  # about half the FLOPs on the shapes ViT (6 blocks), where r=20 is on the digits ViT (4 blocks)
BASE = {"epochs": 15, "lr": 5e-4, "distill_weight": 0.5, "temperature": 2.0}
RECIPES = {
    "ggem": {**BASE, **DEMO_RECOVERY},  # the recipe `surgery demo` uses: 2 warm-up epochs, shift 0.125
    "token_merge": {**BASE, "epochs": 10},
    "agent_attention": {**BASE, "warmup_epochs": 2, "shift": 0.125},
    "castling": {**BASE, "epochs": 20, "warmup_epochs": 2, "lr": 1e-3},
    "castling_no_aux": {**BASE, "epochs": 20, "warmup_epochs": 2},
    "bivit_w1a32": {**BASE, "epochs": 20},
    "bivit_w1a1": {**BASE, "epochs": 30, "lr": 1e-3},
    "ecoformer": {**BASE, "epochs": 20},  # no new parameters to warm up; the official: 30 epochs after the switch
}


@dataclasses.dataclass
class Row:
    name: str
    steps: list[Any]  # float steps, applied first and recovered
    recipe: dict[str, Any] | None  # recovery options, None = training-free only
    quantize: bool = False  # an int8 `quantize` step after recovery
    target: str = ""  # what the issue asks, checked by `check`
    check: Any = None  # (original, after surgery, after recovery, flops ratio) -> bool
    runtime: str | None = None  # the speed_table case that times this method at ViT-B/16 size


def at_least_original(o, s, r, f):
    return r is not None and r >= o


def within(points, after="recovery"):
    def check(o, s, r, f):
        value = r if after == "recovery" else s
        return value is not None and value >= o - points / 100

    return check


def tome_target(o, s, r, f):
    return f >= 2.0 and s >= o - 0.01


ROWS = [
    Row("ggem", ["ggem"], RECIPES["ggem"], target="recovered >= original", check=at_least_original, runtime="ggem"),
    Row(
        "token_merge r=20",
        [("token_merge", {"r": 20})],
        RECIPES["token_merge"],
        target=">= 2x fewer FLOPs, within 1 pt training-free",
        check=tome_target,
        runtime="token_merge r=16",
    ),
    Row(
        "token_transform flops=0.5",
        [("token_transform", {"flops": 0.5})],
        RECIPES["token_merge"],
        target=">= 2x fewer FLOPs, within 1 pt training-free",
        check=tome_target,
        runtime="token_transform flops=0.5",
    ),
    Row(
        "token_prune flops=0.5",
        [("token_prune", {"flops": 0.5})],
        RECIPES["token_merge"],
        runtime="token_prune flops=0.5",
    ),
    Row(
        "agent_attention",
        ["agent_attention"],
        RECIPES["agent_attention"],
        target="recovered >= original",
        check=at_least_original,
        runtime="agent_attention",
    ),
    Row(
        "castling",
        ["castling"],
        RECIPES["castling"],
        target="recovered within 1 pt",
        check=within(1),
        runtime="castling",
    ),
    Row(
        "castling, no auxiliary branch",
        [("castling", {"sparse_reg": False})],
        RECIPES["castling_no_aux"],
        target="(ablation) within 1 pt",
        check=within(1),
        runtime="castling",
    ),  # the branch is training-only
    Row("ecoformer", ["ecoformer"], RECIPES["ecoformer"], target="recovered within 1 pt", check=within(1)),
    Row(
        "int8 (quantize)",
        [],
        None,
        quantize=True,
        target="within 0.5 pt",
        check=within(0.5, after="surgery"),
        runtime="int8 (quantize)",
    ),
    Row(
        "bivit W1A32",
        [("bivit", {"activations": "full"})],
        RECIPES["bivit_w1a32"],
        target="recovered within 1 pt",
        check=within(1),
        runtime="bivit W1A32",
    ),
    Row(
        "bivit W1A1",
        ["bivit"],
        RECIPES["bivit_w1a1"],
        target="recovered within 5 pt",
        check=within(5),
        runtime="bivit W1A1",
    ),
    Row("token_merge r=20 + ggem", [("token_merge", {"r": 20}), "ggem"], RECIPES["ggem"]),
    Row("agent_attention + int8", ["agent_attention"], RECIPES["agent_attention"], quantize=True),
    Row(
        "token_merge r=20 + int8", [("token_merge", {"r": 20})], None, quantize=True, runtime="token_merge r=16 + int8"
    ),
]


def run_row(row: Row, folder: Path, data: dict[str, Any], out: Path) -> tuple[dict[str, Any], torch.nn.Module]:
    pixels, labels = data["test"]
    teacher = surgery.load(folder)
    model = surgery.load(folder)
    calibration = data["calibration"]
    # every row gets the calibration digits: quantize fits its scales and ecoformer learns its hashes on them
    # (without them the first test batch would)
    surgery.apply(model, row.steps + (["quantize"] if row.quantize else []), calibration=calibration)
    correct_surgery = correct_of(predict_logits(model, pixels), labels)
    after_surgery = float(correct_surgery.mean())
    recovered, seconds, final, correct_recovered = None, None, model, None
    recipe, validation, tried = row.recipe, None, {}
    if row.recipe is not None:
        options = data["budget"](row.recipe)  # the row's recipe within the task's training budget
        for lr in data["learning_rates"]:  # chosen on validation; the test split is not looked at here
            candidate = surgery.load(folder)
            surgery.apply(candidate, row.steps, calibration=calibration)
            result = recover(
                candidate,
                teacher,
                data["train_set"],
                data["validation_set"],
                processor=data["processor"],
                progress=False,
                **{**options, "lr": lr},
            )
            tried[lr] = result.accuracy
            if validation is None or result.accuracy > validation:
                final, validation, seconds, recipe = candidate, result.accuracy, result.seconds, {**options, "lr": lr}
        if row.quantize:
            surgery.apply(final, "quantize", calibration=calibration)
        correct_recovered = correct_of(predict_logits(final, pixels), labels)
        recovered = float(correct_recovered.mean())
    final.save_pretrained(out)
    flops = model_flops(final, pixels[:1])
    return {
        "name": row.name,
        "steps": [s.to_dict() for s in surgery.history(final)],
        "recipe": recipe,
        "validation_by_lr": tried,
        "validation": validation,
        "after_surgery": after_surgery,
        "after_recovery": recovered,
        "recovery_seconds": seconds,
        "gflops": flops / 1e9,
        "checkpoint_mb": checkpoint_figures(out)["checkpoint_mb"],
        **code_products(final, pixels[:1]),
        "machine": _machine(),
        "correct": {
            "after_surgery": pack(correct_surgery),
            "after_recovery": None if correct_recovered is None else pack(correct_recovered),
        },
    }, final


def pack(correct) -> str:
    """Per-image right/wrong as base64 of packed bits (kept in the .json for the paired statistics)."""
    import base64

    import numpy as np

    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode()


def unpack(packed: str, images: int):
    import base64

    import numpy as np

    bits = np.unpackbits(np.frombuffer(base64.b64decode(packed), dtype=np.uint8))[:images]
    return bits.astype(np.float64)


def _machine() -> str:
    from surgery.publish.export import cpu_description

    cpu = cpu_description()
    return f"{cpu['model']}, {cpu['torch_capability']}, int8 flags: {cpu['int8_flags']}"


def machines_note(rows: list[dict[str, Any]]) -> str:
    """Which rows ran where, when ``--only`` runs merged rows from another machine into the table."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(r.get("machine") or "the machine of the full run (before rows recorded theirs)", []).append(
            r["name"]
        )
    if len(groups) < 2:
        return ""
    return (
        " Rows were measured on different machines (accuracy and latency ratios are each from their own run): "
        + "; ".join(f"{machine}: {', '.join(names)}" for machine, names in groups.items())
        + "."
    )


def code_products(model: torch.nn.Module, pixels: torch.Tensor) -> dict[str, int]:
    """For EcoFormer rows: per image, the products with +-1 hash codes (multiplications in float,
    accumulations on hardware that adds codes) and the q k^T / P v multiplications of the softmax
    attention those blocks replaced."""
    from surgery.plugins.ecoformer.layers import EcoFormerAttention

    tokens = {}

    def seen(module, args) -> None:
        tokens.setdefault(module, args[0].shape[1])

    hooks = [m.register_forward_pre_hook(seen) for m in model.modules() if isinstance(m, EcoFormerAttention)]
    try:
        with torch.no_grad():
            model(pixel_values=pixels)
    finally:
        for hook in hooks:
            hook.remove()
    if not tokens:
        return {}
    return {
        "code_products": sum(m.code_products(n) for m, n in tokens.items()),
        "softmax_multiplications": sum(2 * m.num_heads * n * n * m.head_dim for m, n in tokens.items()),
    }


def applies(row: Row, model: torch.nn.Module) -> bool:
    """Whether the model's family takes every step of ``row`` (the plugins' declarations)."""
    host = surgery.get_host()
    anatomy = host.anatomy(model.config.model_type)
    plugins = [s if isinstance(s, str) else s[0] for s in row.steps] + (["quantize"] if row.quantize else [])
    return all(support(host.method(p), anatomy).supported for p in plugins)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit", choices=ARCHITECTURES, help="the digits model's family (default vit)")
    parser.add_argument(
        "--task", default="digits", choices=("digits", "shapes"), help="the built-in task (default digits)"
    )
    parser.add_argument("--lrs", type=float, nargs="+", help="learning rates to choose from on validation")
    parser.add_argument("--report-only", action="store_true", help="write proof_table.md again from the .json files")
    parser.add_argument("--only", help="run only the rows whose name contains this text")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--skip-runtimes",
        action="store_true",
        help="leave out the ViT-B/16 latency in each runtime (about 15 minutes of the run)",
    )
    args = parser.parse_args()
    if args.report_only and args.task == "shapes":
        saved = json.loads((RESULTS / "proof_table_shapes.json").read_text())
        write_task_report("shapes", saved["original"], saved["rows"], saved["latency_s"])
        return
    if args.report_only:
        saved = json.loads((RESULTS / "proof_table.json").read_text())
        report(saved["original"], restored(saved["rows"]), saved["latency_s"], saved["runtimes_vit_b16"])
        return
    torch.manual_seed(0)
    folder = default_model(args.arch, task_name=args.task)
    shapes = args.task == "shapes"
    data = {
        "test": task_tensors(folder, "test", args.task),
        "train_set": task_dataset(args.task, "train", SHAPES_TRAIN if shapes else None),
        "validation_set": task_dataset(args.task, "validation"),
        "processor": AutoImageProcessor.from_pretrained(folder, use_fast=False),
        "calibration": task_tensors(folder, "train", args.task, limit=256)[0].split(32),
        "learning_rates": tuple(args.lrs or (SHAPES_LR if shapes else LEARNING_RATES)),
        "budget": shapes_budget if shapes else dict,
    }
    pixels, labels = data["test"]
    original = surgery.load(folder)
    reference = correct_of(predict_logits(original, pixels), labels)
    base = {"accuracy": float(reference.mean()), "correct": pack(reference), "images": len(labels)}
    with tempfile.TemporaryDirectory() as tmp:
        original.save_pretrained(Path(tmp) / "original")
        base["checkpoint_mb"] = checkpoint_figures(Path(tmp) / "original")["checkpoint_mb"]
        base["gflops"] = model_flops(original, pixels[:1]) / 1e9
        rows, models = [], {"original": original}
        rows_here = [for_shapes(r) for r in ROWS] if shapes else ROWS
        chosen = [r for r in rows_here if (not args.only or args.only in r.name) and applies(r, original)]
        for index, row in enumerate(chosen):
            print(f"[{index + 1}] {row.name} ...", flush=True)
            record, model = run_row(row, folder, data, Path(tmp) / f"row{index}")
            record["target"], record["check"], record["runtime"] = row.target, row.check, row.runtime
            rows.append(record)
            models[row.name] = model
            print(
                f"    after surgery {record['after_surgery']:.2%}, after recovery "
                f"{record['after_recovery'] if record['after_recovery'] is None else format(record['after_recovery'], '.2%')}",
                flush=True,
            )
    batch = pixels[:64]
    with torch.inference_mode():
        for model in models.values():
            model.eval()
        times = time_side_by_side(
            {name: (lambda m=m: m(pixel_values=batch)) for name, m in models.items()}, repeats=args.repeats
        )
    models.clear()
    runtimes = None
    saved_name = (
        f"proof_table_{args.task}" if shapes else "proof_table" if args.arch == "vit" else f"proof_table_{args.arch}"
    )
    if args.only and (RESULTS / f"{saved_name}.json").is_file():  # the other rows stay as their own run left them
        base, rows, times, runtimes = merge_saved(RESULTS / f"{saved_name}.json", base, rows, times)
    if shapes:
        write_task_report(args.task, base, [{k: v for k, v in r.items() if k != "check"} for r in rows], times)
        return
    if args.arch != "vit":
        write_arch_report(args.arch, base, rows, times)
        return
    if args.only:
        report(base, rows, times, runtimes)
        return
    if not args.skip_runtimes:
        print("latency at ViT-B/16 size in each runtime (benchmarks/speed_table.py) ...", flush=True)
        wanted = {r["runtime"] for r in rows}
        runtimes = speed_table.measure(tuple(c for c in speed_table.CASES if c.name in wanted), repeats=5)
    report(base, rows, times, runtimes)


def for_shapes(row: Row) -> Row:
    """``row`` with ToMe's r set for about half the FLOPs of the shapes ViT."""
    steps = [
        ("token_merge", {**s[1], "r": SHAPES_TOME_R}) if isinstance(s, tuple) and s[0] == "token_merge" else s
        for s in row.steps
    ]
    return dataclasses.replace(row, name=row.name.replace("r=20", f"r={SHAPES_TOME_R}"), steps=steps)


def shapes_budget(recipe: dict[str, Any]) -> dict[str, Any]:
    """A digits recipe cut to the shapes budget: SHAPES_EPOCHS epochs, one of them warm-up where it has one."""
    budget = {**recipe, "epochs": SHAPES_EPOCHS}
    if "warmup_epochs" in recipe:
        budget.update(epochs=SHAPES_EPOCHS - 1, warmup_epochs=1)
    return budget


def restored(saved_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows read back from a .json file: their target checks attached again, and the learning rates
    (JSON keys are strings) back to numbers."""
    checks = {row.name: row.check for row in ROWS}
    return [
        {
            **r,
            "check": checks.get(r["name"]),
            "validation_by_lr": {float(lr): acc for lr, acc in r["validation_by_lr"].items()},
        }
        for r in saved_rows
    ]


def merge_saved(path: Path, base: dict[str, Any], rows: list[dict[str, Any]], times: dict[str, float]):
    """``--only``: the rows just run put into the saved table (replacing rows of the same name, in the
    order of ROWS). The original's accuracy, FLOPs and size are the saved ones (the same model); a new
    row's latency is rescaled by saved / this run's original latency, so its speed-up is still the
    ratio to the original timed side by side in the same run."""
    saved = json.loads(path.read_text())
    scale = saved["latency_s"]["original"] / times["original"]
    fresh = {r["name"]: r for r in rows}
    kept = restored([r for r in saved["rows"] if r["name"] not in fresh])
    order = [row.name for row in ROWS]
    named = lambda r: r["name"].replace(f"r={SHAPES_TOME_R}", "r=20")  # noqa: E731  (the shapes rows' ToMe r)
    merged = sorted(kept + rows, key=lambda r: order.index(named(r)) if named(r) in order else len(order))
    latency = {**saved["latency_s"], **{name: times[name] * scale for name in fresh}}
    return saved["original"], merged, latency, saved.get("runtimes_vit_b16")


def write_arch_report(arch: str, base: dict[str, Any], rows: list[dict[str, Any]], times: dict[str, float]) -> None:
    """proof_table_<arch>.json and .md: the digits model of another family through the same rows."""
    records = [{k: v for k, v in r.items() if k != "check"} for r in rows]
    (RESULTS / f"proof_table_{arch}.json").write_text(
        json.dumps({"arch": arch, "original": base, "rows": records, "latency_s": times}, indent=2) + "\n"
    )
    table = [
        [
            r["name"],
            _pct(base["accuracy"]),
            _pct(r["after_surgery"]),
            _pct(r["after_recovery"]),
            _pct(r["validation"]),
            f"{base['gflops'] / r['gflops']:.2f}x",
            json.dumps(r["recipe"]),
        ]
        for r in rows
    ]
    header = [
        "row",
        "original",
        "after surgery",
        "after recovery",
        "validation (chosen lr)",
        "FLOPs reduction",
        "recipe",
    ]
    write_report(
        f"proof_table_{arch}",
        f"Proof table on the digits {arch} model",
        f"The proof table's rows on the built-in digits `{arch}` model (`surgery demo-model --arch {arch}`, "
        "trained on this machine; rows its family refuses are left out), same data, recipes and learning-rate "
        "choice on validation as the ViT table." + machines_note(rows) + "\n\n" + markdown_table(header, table),
    )


def other_families() -> dict[str, dict[str, Any]]:
    """The rows of every proof_table_<arch>.json beside the ViT one, by arch."""
    found = {}
    for arch in ARCHITECTURES:
        path = RESULTS / f"proof_table_{arch}.json"
        if arch != "vit" and path.is_file():
            found[arch] = json.loads(path.read_text())
    return found


def _refused(arch: str, plugins: tuple[str, ...]) -> bool:
    from surgery.demo.zoo import model_config

    host = surgery.get_host()
    anatomy = host.anatomy(model_config(arch, "tiny").model_type)
    return not all(support(host.method(p), anatomy).supported for p in plugins)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def report(
    base: dict[str, Any], rows: list[dict[str, Any]], times: dict[str, float], runtimes: dict[str, Any] | None
) -> None:
    def pays_off(row: dict[str, Any]) -> str:
        if runtimes is None or row["runtime"] not in runtimes:
            return "-"
        return f"{speed_table.pays_off(runtimes, row['runtime'])} ({row['runtime']})"

    others = other_families()
    by_name = {arch: {r["name"]: r for r in data["rows"]} for arch, data in others.items()}

    def other_cells(name: str | None, plugins: tuple[str, ...] = ()) -> list[str]:
        cells = []
        for arch, data in others.items():
            row = by_name[arch].get(name)
            if name is None:
                cells += ["-", _pct(data["original"]["accuracy"])]
            elif row is None:
                cells += ["refused" if _refused(arch, plugins) else "not run", "-"]
            else:
                cells += [_pct(row["after_surgery"]), _pct(row["after_recovery"])]
        return cells

    table = [
        [
            "original",
            "-",
            _pct(base["accuracy"]),
            "-",
            "-",
            "-",
            f"{base['gflops'] * 1e3:.2f}",
            "1.00x",
            f"{base['checkpoint_mb']:.3f}",
            f"{times['original'] * 1e3:.1f}",
            "1.00x",
            "-",
            "-",
            "-",
            *other_cells(None),
        ]
    ]
    for r in rows:
        o, s, rec = base["accuracy"], r["after_surgery"], r["after_recovery"]
        ratio = base["gflops"] / r["gflops"]
        verdict = "-" if r["check"] is None else ("met" if r["check"](o, s, rec, ratio) else "**missed**")
        table.append(
            [
                r["name"],
                " -> ".join(_describe(s) for s in r["steps"]),
                _pct(o),
                _pct(s),
                _pct(rec),
                _pct(r["validation"]),
                f"{r['gflops'] * 1e3:.2f}",
                f"{ratio:.2f}x",
                f"{r['checkpoint_mb']:.3f}",
                f"{times[r['name']] * 1e3:.1f}",
                f"{times['original'] / times[r['name']]:.2f}x",
                pays_off(r),
                r["target"] or "-",
                verdict,
                *other_cells(r["name"], tuple(s["plugin"] for s in r["steps"])),
            ]
        )
    header = [
        "row",
        "steps",
        "original",
        "after surgery",
        "after recovery",
        "validation (chosen lr)",
        "MFLOPs/image",
        "FLOPs reduction",
        "checkpoint MB",
        "latency ms (64 images)",
        "speed-up",
        "pays off in (ViT-B/16, vs fp32 there)",
        "target",
        "verdict",
    ] + [f"{arch} {when}" for arch in others for when in ("after surgery", "after recovery")]
    recipes = "\n".join(
        f"- {r['name']}: {json.dumps(r['recipe'])} ({r['recovery_seconds']} s); validation accuracy by "
        f"lr: {', '.join(f'{lr:g}: {_pct(acc)}' for lr, acc in r['validation_by_lr'].items())}"
        for r in rows
        if r["recipe"]
    )
    counted = [r for r in rows if r.get("code_products")]
    recipes += "".join(
        f"\n\n{r['name']}: per image, {r['code_products'] / 1e6:.3f} M of its {r['gflops'] * 1e3:.2f} MFLOPs are products "
        f"with +-1 hash codes, which hardware that accumulates codes does without multiplying; they replace "
        f"{r['softmax_multiplications'] / 1e6:.3f} M multiplications of softmax attention (q k^T and P v) in those blocks."
        for r in counted
    )
    body = (
        "Built-in digits ViT (4 blocks, width 64, 65 tokens at 32x32 px; shipped with the package), 360 test "
        "digits (1 digit = 0.28 pt). Recovery: `surgery.recover` with distillation from the original model on the "
        "1149 training digits; the learning rate of each row is chosen on the 288 validation digits, and the "
        "test split is measured once, for the chosen recipe; "
        "int8 rows quantize after recovery, calibrated on 256 training digits. Latency: one batch of 64, "
        "median over repeats, every model timed side by side in one run (CPU, PyTorch eager; a 65-token model "
        "this small is dominated by per-layer overhead, so latency ratios understate the FLOPs ratios). int8 runs on oneDNN's int8 kernels in PyTorch. "
        'The "pays off in" column says where each method is fast: the same method at ViT-B/16 size in each runtime '
        "(below the table). "
        "Training results depend on the CPU (AVX2, AVX-512 and AMX round differently), so recovered "
        "accuracies vary by a few digits between machines; the environment is printed below."
        + "".join(
            f' The {arch} columns: the same rows on the digits {arch} model (proof_table_{arch}.md; "refused" where '
            "that family refuses a step)."
            for arch in others
        )
        + machines_note(rows)
        + "\n\n"
        + markdown_table(header, table)
        + "\n\n![accuracy per row](proof_table.png)\n\nRecovery recipes (`surgery.recover` options):\n\n"
        + recipes
        + (
            ""
            if runtimes is None
            else '\n\n## Where each method pays off\n\nThe "pays off in" column: each method on a ViT-B/16 shape (random '
            "weights) at the size it is meant for, in PyTorch eager and compiled, ONNX Runtime and OpenVINO, each runtime "
            "timed side by side with fp32 in the same run (`benchmarks/speed_table.py`; token_merge at ViT-B/16 uses r=16, ToMe's "
            "setting, where the digits model uses r=20):\n\n" + speed_table.table(runtimes)
        )
    )
    (RESULTS / "proof_table.json").write_text(
        json.dumps(
            {
                "original": base,
                "rows": [{k: v for k, v in r.items() if k != "check"} for r in rows],
                "latency_s": times,
                "runtimes_vit_b16": runtimes,
            },
            indent=2,
        )
        + "\n"
    )
    plot(base, rows)
    write_report("proof_table", "Proof table: accuracy before surgery, after it and after recovery", body)


def _describe(step: dict[str, Any]) -> str:
    options = step.get("options") or {}
    shown = {k: v for k, v in options.items() if k in ("r", "activations")}
    return step["plugin"] + ("(" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")" if shown else "")


def plot(base: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=120)
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["after_surgery"] * 100 for r in rows], width=0.4, label="right after surgery")
    ax.bar([x + 0.2 for x in xs], [(r["after_recovery"] or 0) * 100 for r in rows], width=0.4, label="after recovery")
    ax.axhline(base["accuracy"] * 100, color="black", linestyle="--", linewidth=1, label="original")
    ax.set_xticks(list(xs), names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "proof_table.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
