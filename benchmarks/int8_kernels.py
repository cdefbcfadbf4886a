"""Which int8 kernel surgery's quantize runs on, per instruction set, and what it gives against
fp32 and ``quantize_dynamic`` in PyTorch eager.

Each instruction set runs in its own process, capped with the libraries' own switches
(``ONEDNN_MAX_CPU_ISA``, ``FBGEMM_ENABLE_INSTRUCTIONS``, ``MKL_ENABLE_INSTRUCTIONS``,
``ATEN_CPU_CAPABILITY``), so one machine stands in for CPUs it can emulate (those at or below its
own). Per setting: every kernel on one ViT-B MLP linear (1576 x 768 -> 3072, batch 8) beside the
fp32 matmul, whether each is exact there, which kernel surgery chose and why, and the whole ViT-B/16
(224 px, batch 8) in fp32, surgery int8 on the chosen kernel, surgery int8 forced onto oneDNN (what
it ran before the choice existed) and ``torch.ao.quantization.quantize_dynamic``, side by side.

    python benchmarks/int8_kernels.py [--repeats 5] [--threads 2] [--only avx2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys

import torch

SETTINGS = {
    "native": {},
    "avx512_vnni": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX512_E1"},
    "avx512 (no VNNI)": {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX512",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
    },
    "avx2 (no VNNI)": {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
    },
}


def child(repeats: int) -> dict:
    """Run in the capped process: the measurements, as JSON-ready values."""
    import surgery
    from surgery.plugins.quantize import kernels
    from surgery.plugins.quantize.engine import Int8Linear

    from _common import time_side_by_side, vit_base

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1576, 768, generator=generator)
    w_int8 = torch.randint(-128, 128, (3072, 768), generator=generator, dtype=torch.int8)
    w_scale = torch.rand(3072, generator=generator) * 0.01 + 0.001
    bias = torch.randn(3072, generator=generator)
    weight = w_int8.float() * w_scale[:, None]
    exact = {name: kernels.exact(kernel, 127) for name, kernel in kernels.KERNELS.items()}
    shapes = [(768, 768), (768, 3072), (3072, 768)]
    chosen = {f"{i} -> {o}": kernels.choice(127, i, o) for i, o in shapes}
    fc1 = chosen["768 -> 3072"][0]
    layer_runs = {"fp32 matmul": lambda: torch.nn.functional.linear(x, weight, bias)}
    for name, kernel in kernels.KERNELS.items():
        if kernel.available():
            layer = Int8Linear(
                kernel,
                kernel.prepack(w_int8, w_scale),
                w_scale,
                torch.zeros(3072, dtype=torch.long),
                torch.tensor(1 / 0.05),
                0.05,
                64,
                0,
                127,
            )
            layer_runs[f"{name} int8"] = lambda layer=layer: layer(x, bias)
    with torch.inference_mode():
        layer_seconds = time_side_by_side(layer_runs, repeats=repeats)

    images = torch.randn(8, 3, 224, 224, generator=generator)
    base = vit_base()
    int8 = surgery.apply(copy.deepcopy(base), "quantize", calibration=[images[:4]]).eval()
    forced = copy.deepcopy(int8)
    picks = sorted({kernel.name for kernel, _ in chosen.values() if kernel is not None}) or ["simulation"]
    models = {"fp32": base, f"surgery quantize ({' + '.join(picks)})": int8}
    if exact.get("onednn") and picks != ["onednn"]:
        for module in forced.modules():
            if hasattr(module, "int8_kernel"):
                module.int8_kernel = "onednn"
        models["surgery quantize (onednn, forced)"] = forced
    models["torch quantize_dynamic"] = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(base), {torch.nn.Linear}, dtype=torch.qint8
    )

    def run(model):
        with torch.inference_mode():
            return model(pixel_values=images).logits

    runs = {name: (lambda m=model: run(m)) for name, model in models.items()}
    model_seconds = time_side_by_side(runs, repeats=repeats)
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "exact": exact,
        "chosen": fc1.name if fc1 else None,
        "why": {shape: f"{k.name if k else None} ({reason})" for shape, (k, reason) in chosen.items()},
        "layer_ms": {k: v * 1000 for k, v in layer_seconds.items()},
        "model_ms": {k: v * 1000 for k, v in model_seconds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="one setting: " + ", ".join(SETTINGS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print("RESULT " + json.dumps(child(args.repeats)))
        return
    from _common import markdown_table, write_report

    results = {}
    for name, caps in SETTINGS.items():
        if args.only and not name.startswith(args.only):
            continue
        command = [sys.executable, __file__, "--child", "--repeats", str(args.repeats), "--threads", str(args.threads)]
        done = subprocess.run(command, env={**os.environ, **caps}, capture_output=True, text=True)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{name}: the child failed\n{done.stderr[-3000:]}")
        results[name] = json.loads(line[len("RESULT ") :])
        print(name, results[name], flush=True)
    layer_rows, model_rows = [], []
    for name, result in results.items():
        fp32 = result["layer_ms"]["fp32 matmul"]
        for label, ms in result["layer_ms"].items():
            kernel = label.split(" ")[0]
            verdict = (
                "" if label == "fp32 matmul" else ("exact" if result["exact"].get(kernel) else "NOT exact: never used")
            )
            mark = " (chosen)" if kernel == result["chosen"] else ""
            layer_rows.append([name, label + mark, f"{ms:.1f}", f"{fp32 / ms:.2f}x", verdict])
        base = result["model_ms"]["fp32"]
        for label, ms in result["model_ms"].items():
            model_rows.append([name, label, f"{ms:.0f}", f"{base / ms:.2f}x"])
    caps = "; ".join(
        f"{name}: " + (" ".join(f"{k}={v}" for k, v in c.items()) or "no caps")
        for name, c in SETTINGS.items()
        if name in results
    )
    body = (
        f"Settings (each in its own process): {caps}. {args.threads} threads, {args.repeats} side-by-side repeats "
        "after 2 warm-up rounds (medians). A capped setting emulates an older CPU on this one; the kernels' "
        "own dispatch follows the caps.\n\n"
        "One ViT-B MLP linear, 1576 x 768 -> 3072, 7-bit activation codes (quantize's default):\n\n"
        + markdown_table(["instruction set", "kernel", "ms", "vs fp32", "self-check"], layer_rows)
        + "\n\n'(chosen)' marks the kernel surgery measured fastest for this shape. The choice for each ViT-B "
        "linear shape, and why:\n\n"
        + "\n".join(f"- {name}, {shape}: {why}" for name, r in results.items() for shape, why in r["why"].items())
        + "\n\nViT-B/16 shape (random weights), 224 px, batch 8, `torch.inference_mode()`:\n\n"
        + markdown_table(["instruction set", "model (PyTorch eager)", "ms / batch", "vs fp32"], model_rows)
    )
    write_report("int8_kernels", "int8 kernels per instruction set: the choice and what it gives", body)


if __name__ == "__main__":
    main()
