"""The package metadata states ranges a library can live with; the exact tested sets live in constraints/."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
REQUIREMENTS = PROJECT["dependencies"] + [r for extra in PROJECT["optional-dependencies"].values() for r in extra]
NAME = re.compile(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("requirement", REQUIREMENTS)
def test_requirements_are_ranges_with_a_lower_bound(requirement):
    if requirement.startswith(f"{PROJECT['name']}["):  # one extra naming others
        return
    assert "==" not in requirement and "~=" not in requirement, f"{requirement}: a library states ranges, not pins"
    assert ">=" in requirement, f"{requirement}: give the oldest version surgery works with"


def _pins(name: str) -> dict[str, str]:
    pinned = {}
    for line in (REPO / "constraints" / name).read_text().splitlines():
        if line and not line.startswith("#"):
            package, _, version = line.partition("==")
            pinned[canonical(package)] = version
    return pinned


def _named(extras: tuple[str, ...]) -> set[str]:
    requirements = PROJECT["dependencies"] + [r for extra in extras for r in PROJECT["optional-dependencies"][extra]]
    return {canonical(NAME.match(r).group(1)) for r in requirements if not r.startswith(f"{PROJECT['name']}[")}


@pytest.mark.parametrize(
    ("constraints", "extras", "transformers"),
    [
        ("tf4.57-optimum.txt", ("onnx", "openvino", "test", "optimum-tf457"), "4.57.6"),
        ("latest.txt", ("onnx", "openvino", "test"), "5."),
    ],
)
def test_the_constraints_pin_everything_the_metadata_names(constraints, extras, transformers):
    pinned = _pins(constraints)
    named = _named(extras)
    assert named <= set(pinned), sorted(named - set(pinned))
    assert pinned["torch"] == "2.13.0" and pinned["transformers"].startswith(transformers)


def test_the_newest_set_is_transformers_5_with_huggingface_hub_2_and_no_optimum():
    pinned = _pins("latest.txt")
    assert int(pinned["transformers"].split(".")[0]) >= 5 and int(pinned["huggingface-hub"].split(".")[0]) >= 2
    assert not {"optimum", "optimum-onnx", "optimum-intel"} & set(pinned)


# an extra whose name says which transformers it needs (optimum-tf457): the only kind allowed to change one
NEEDS_TRANSFORMERS = re.compile(r"-tf\d+$")


def test_installing_into_the_tested_environment_changes_nothing_but_surgery():
    """pip's resolver, offline, against what is installed: surgery's ranges, with every extra (read from
    pyproject.toml, so a new extra is covered), admit every installed version (on the newest set:
    transformers 5.x and huggingface_hub 2.x), so nothing would be upgraded or downgraded. Only an
    extra named for the transformers it needs is left out where that transformers is not installed."""
    import transformers

    tf457 = transformers.__version__.startswith("4.57.")
    chosen = [extra for extra in PROJECT["optional-dependencies"] if tf457 or not NEEDS_TRANSFORMERS.search(extra)]
    assert {"onnx", "openvino", "export"} <= set(chosen)
    extras = ",".join(chosen)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-index",
            "--no-build-isolation",
            "--quiet",
            "--report",
            "-",
            "-e",
            f"{REPO}[{extras}]",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    installs = [
        (item["metadata"]["name"], item["metadata"]["version"]) for item in json.loads(result.stdout)["install"]
    ]
    assert [name for name, _ in installs] == ["vision-surgery"], installs
