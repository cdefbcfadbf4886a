"""Every installed method in PyTorch, eager and compiled, against fp32 and PyTorch's own dynamic int8.

A ViT-B/16 shape (random weights), 224 px, batch 8, ``torch.inference_mode()``, every variant timed
side by side in one run (medians over repeats after warm-up; the first warm-up call of a compiled
model compiles it, and its seconds are reported apart):
- fp32: the unmodified model;
- every installed plugin with its defaults (calibrated on 4 of the images where it takes data), plus
  bivit W1A32 (binary weights, float activations; its default is W1A1) and surgery's int8 with
  ``int8_engine = False`` (the fake-quant simulation training uses, eager only);
- ``torch.ao.quantization.quantize_dynamic`` int8 on every ``nn.Linear`` (the peer a PyTorch user would
  pick; eager only: its modules are not meant for ``torch.compile``).
Compiled: ``torch.compile`` with Inductor and ``torch._inductor.config.freezing = True`` (weights as
constants, so Inductor prepacks them and lowers PyTorch 2's int8 pattern to oneDNN's int8 kernels).
A method that fails to compile is reported with its error, not dropped.

    python benchmarks/pytorch_speed.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import copy
import time

import torch
from torch._inductor import config as inductor

import surgery

from _common import markdown_table, time_side_by_side, timing_arguments, vit_base, write_report


def simulated(model):
    for module in model.modules():
        if hasattr(module, "int8_engine"):
            module.int8_engine = False
    return model


def variants(base, calibration) -> dict[str, tuple[torch.nn.Module, bool]]:
    """name -> (model, whether to compile it too)."""
    models = {"fp32": (base, True)}
    for method in surgery.list_methods():
        if method.refusal(surgery.get_host().anatomy(base.config.model_type)) is None:
            models[f"{method.name} (defaults)"] = (surgery.apply(copy.deepcopy(base), [method.name], calibration=calibration).eval(), True)
    models["bivit W1A32"] = (surgery.apply(copy.deepcopy(base), [("bivit", {"activations": "full"})]).eval(), True)
    models["quantize, simulated"] = (simulated(surgery.apply(copy.deepcopy(base), "quantize", calibration=calibration).eval()), False)
    models["torch quantize_dynamic int8"] = (torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(base), {torch.nn.Linear}, dtype=torch.qint8), False)
    return models


def main() -> None:
    args = timing_arguments()
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    models = variants(vit_base(), [x[:4]])

    def run(model):
        with torch.inference_mode():
            return model(pixel_values=x).logits

    runs, compile_seconds, failures, differences = {}, {}, {}, {}
    for name, (model, compile_too) in models.items():
        runs[name] = lambda m=model: run(m)
        if not compile_too:
            continue
        torch._dynamo.reset()
        compiled = torch.compile(model)
        start = time.perf_counter()
        try:
            with inductor.patch(freezing=True):
                out = run(compiled)
        except Exception as error:  # reported in the table
            failures[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
            continue
        compile_seconds[name] = time.perf_counter() - start
        differences[name] = float((out - run(model)).abs().max())
        runs[name + " [compiled]"] = lambda c=compiled: run(c)
        print(f"compiled {name} in {compile_seconds[name]:.0f} s; max |logit difference| to eager {differences[name]:.1e}")

    with inductor.patch(freezing=True):
        seconds = time_side_by_side(runs, repeats=args.repeats)
    eager_fp32, compiled_fp32 = seconds["fp32"], seconds.get("fp32 [compiled]")
    rows = []
    for name in models:
        row = [name, f"{seconds[name] * 1000:.0f}", f"{eager_fp32 / seconds[name]:.2f}x"]
        if name + " [compiled]" in seconds:
            fast = seconds[name + " [compiled]"]
            row += [f"{fast * 1000:.0f}", f"{compiled_fp32 / fast:.2f}x", f"{eager_fp32 / fast:.2f}x",
                    f"{compile_seconds[name]:.0f}", f"{differences[name]:.1e}"]
        else:
            row += [failures.get(name, "not compiled"), "", "", "", ""]
        rows.append(row)
    body = (
        f"ViT-B/16 shape (random weights), 224 px, batch 8, {args.threads} threads, `torch.inference_mode()`, "
        f"{args.repeats} side-by-side repeats after 2 warm-up rounds (medians). Compiled: `torch.compile` (Inductor) "
        "with `torch._inductor.config.freezing = True`; 'compile s' is the first call's seconds, 'max diff' the largest "
        "logit difference to the same model in eager mode.\n\n"
        + markdown_table(["model", "eager ms", "eager vs fp32 eager", "compiled ms", "compiled vs fp32 compiled",
                          "compiled vs fp32 eager", "compile s", "max diff"], rows)
    )
    write_report("pytorch_speed", "Every method in PyTorch, eager and compiled", body)


if __name__ == "__main__":
    main()
