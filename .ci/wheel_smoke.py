"""Run by .ci/check_wheel in a fresh venv holding only the built wheel (not editable), from a folder
outside the repository: the package data ships (the demo model's assets, the card templates, every
built-in plugin), and a plugin applies, saves and reloads exactly."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import surgery
from surgery.demo.zoo import build_model

assert "site-packages" in surgery.__file__, f"surgery imported from {surgery.__file__}, not the installed wheel"
listed = json.loads(
    subprocess.run(
        [str(Path(sys.executable).parent / "surgery"), "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
)
names = sorted(item["name"] for item in listed) if isinstance(listed, list) else sorted(listed)
assert len(names) >= 9, names
with tempfile.TemporaryDirectory() as folder:
    model = surgery.apply(build_model("vit", "tiny", image_size=32, seed=0), [("token_merge", {"r": 2}), "ggem"])
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    surgery.save(model, folder)
    reloaded = surgery.load(folder)
    assert torch.equal(reloaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits)
    surgery.card(folder)  # the card templates (hub_cards) ship
    assert "pip install vision-surgery" in (Path(folder) / "README.md").read_text()
with tempfile.TemporaryDirectory() as home:  # the built-in model's assets ship (copied, never trained here)
    import os

    os.environ["SURGERY_HOME"] = home
    from surgery.demo.model import default_model

    built_in = default_model(progress=False)
    scored = subprocess.run(
        [str(Path(sys.executable).parent / "surgery"), "eval", str(built_in), "--data", "digits", "--json"],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert scored.returncode == 0 and json.loads(scored.stdout)["accuracy"] > 0.9, (
        scored.stdout,
        scored.stderr[-2000:],
    )
print(f"wheel ok: surgery {surgery.__version__}, {len(names)} plugins ({', '.join(names)})")
