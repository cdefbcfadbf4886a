"""What a search leaves in its output folder: the pick as a normal surgery folder (weights, recipe,
image processor, card with the front), ``search.json`` (every candidate), ``search.md`` (the front
as a table), ``search_front.png``, and the resumable cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from surgery.evaluation.measure import record
from surgery.recipe_search import report

RUNTIME_WORDS = {
    "torch": "PyTorch eager (CPU)",
    "onnx": "ONNX Runtime (CPU provider, surgery's ONNX export)",
    "openvino": "OpenVINO (CPU, f32 precision hint, surgery's export)",
}


def write_outputs(output: Path, result: Any, source: Path | None, data: Any) -> None:
    summary = result.summary
    settings = summary["settings"]
    output.mkdir(parents=True, exist_ok=True)
    report.write(output, summary)
    report.plot(result.candidates, result.chosen, settings["objective"], result.original, output / "search_front.png")
    if result.model is None:
        return
    from surgery.checkpoint.saving import save, save_from
    from surgery.publish.cards import card

    if source is not None:
        save_from(result.model, output, source=source)
    else:
        save(result.model, output)
    test = result.test
    machine = summary["machine"]
    figures: dict[str, Any] = {
        "search": {
            "candidates": len(result.candidates),
            "methods": list(summary["space"]["methods"]),
            "max_steps": settings["max_steps"],
            "runtime_words": RUNTIME_WORDS[settings["runtime"]],
            "machine": f"{machine['model']} ({machine['threads']} threads)",
            "batch_size": settings["batch_size"],
            "image_size": settings["image_size"],
            "seed": settings["seed"],
            "search_split": f"the {data.name} validation split ({len(data.search[1])} images)",
            "budget": summary["budget"],
            "recover_epochs": settings["recover_epochs"],
            "table": report.table(result.candidates, result.chosen, settings["objective"], result.original),
        },
    }
    if test is not None:
        figures.update(
            {
                "accuracy": test["pick"],
                "accuracy_before": test["original"],
                "dataset": f"{data.name}, test split, {test['images']} images (measured once, after the search)",
            }
        )
    record(output, figures)
    card(output, model_id=output.resolve().name)
