"""Shared fixtures: tiny models from configs, and a fresh plugin host per test that needs one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # run by pytest-xdist (-n): one of several processes sharing the cores
if WORKER:
    import tempfile

    if "SURGERY_HOME" not in os.environ:  # a model cache per worker: two never copy the shipped models at once
        os.environ["SURGERY_HOME"] = tempfile.mkdtemp(prefix=f"surgery-home-{WORKER}-")

import pytest
import torch

if WORKER:
    torch.set_num_threads(1)  # one thread per worker: two workers on two cores, not four threads
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # and so the command-line runs the tests start

from surgery.core.host import Host, build_host, set_host
from surgery.demo.zoo import build_model

from surgery.demo.zoo import ARCHITECTURES

ARCHS = list(
    ARCHITECTURES
)  # every built-in family: vit, vit-msn, deit, deit-distilled, swin, dinov2, dinov2-registers


def supported(plugin: str, archs=None, options=None) -> list[str]:
    """The architectures (of ``archs``, default all) whose family ``plugin`` declares it supports with
    ``options`` (default: its defaults; a family may need some, as BEiT needs token reduction's
    ``unmerge=True``, which it takes when the option is left unset): the table-driven tests run each plugin over these, and test_families checks the
    others are refused."""
    import surgery

    host = surgery.get_host()
    method = host.method(plugin)
    config = method.config_class(**(options or {}))
    found = []
    for arch in archs or ARCHS:
        anatomy = host.anatomy(tiny(arch).config.model_type)
        try:  # the options left unset as the family sets them (a FLOPs target refuses BEiT's unmerge=True)
            if method.refusal(anatomy, method.resolved(config, anatomy)) is None:
                found.append(arch)
        except surgery.ConfigError:
            continue
    return found


def takes(arch: str, steps: list) -> bool:
    """Whether ``arch``'s family takes every step of ``steps`` (names or ``(name, options)`` pairs), as declared."""
    return all(arch in (supported(s, [arch]) if isinstance(s, str) else supported(s[0], [arch], s[1])) for s in steps)


def data_for(steps) -> dict:
    """``apply``'s calibration keyword for ``steps`` whose methods cannot do without data (quantize's
    W8A8), else nothing: the others keep their own first-batch behaviour (EcoFormer learns its hash)."""
    import surgery

    host = surgery.get_host()
    for spec in steps:
        name, options = (spec, {}) if isinstance(spec, str) else spec
        method = host.method(name)
        if method.needs_data is not None and method.needs_data(method.make_config(options)):
            return {"calibration": [images(4, seed=s) for s in range(2)]}
    return {}


def tiny(arch: str, seed: int = 0, **overrides):
    return build_model(arch, "tiny", image_size=32, seed=seed, **overrides)


def untie(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Attention as a trained model's, for rankings by it: the prefix tokens (cls, distillation,
    registers) get values of their own (an untrained DeiT's are zeros, so the cls token attends to every patch
    equally) and the query and key weights are scaled up 4x (an untrained model's attention is
    nearly uniform, so its importance scores differ by less than the rounding of another runtime,
    which then keeps other tokens)."""
    import surgery

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        anatomy = surgery.get_host().anatomy(model.config.model_type)
        for _, parameter in anatomy.prefix_token_parameters(model):
            parameter.add_(torch.randn(parameter.shape, generator=generator))
        for block in anatomy.blocks(model):
            for role in ("query", "key"):
                if role in block.attention.projections:
                    block.attention.projection(role).weight.mul_(4.0)
    return model


def parts(model: torch.nn.Module, index: int = 0):
    """The anatomy's parts of block ``index`` (whatever layout this transformers uses)."""
    import surgery

    return surgery.get_host().anatomy(model.config.model_type).blocks(model)[index]


def core(model: torch.nn.Module, index: int = 0) -> torch.nn.Module:
    """The attention core of block ``index``: the module attention swaps replace."""
    return parts(model, index).attention.core


def images(batch: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def state_values(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def module_tree(model: torch.nn.Module) -> list[tuple[str, int, type]]:
    return [(name, id(module), type(module)) for name, module in model.named_modules()]


@pytest.fixture
def host_with():
    """``host_with(*plugins)``: make a host with the built-ins plus the given plugin objects current."""
    previous = []

    def make(*plugins) -> Host:
        extra = [(getattr(p, "__name__", f"test_plugin_{i}"), p, "test-package") for i, p in enumerate(plugins)]
        host = build_host(entry_points=[], extra=extra)
        previous.append(set_host(host))
        return host

    yield make
    if previous:
        set_host(previous[0])


DIGITS = Path(__file__).parent / "fixtures" / "digits"  # written by tests/fixtures/make_digits.py


def _digits_model(tmp_path_factory, arch: str):
    """The committed digits model of ``arch`` (tests/fixtures/digits: trained once, so every CPU and
    transformers version reads the same weights), copied once per run into a folder the pytest-xdist
    workers share."""
    from filelock import FileLock

    from surgery.data.digits import digits_split, encode
    from surgery.demo.zoo import image_processor

    root = tmp_path_factory.getbasetemp()
    root = root.parent if WORKER else root  # the run's folder above the workers' own
    folder = root / f"digits-{arch}-shared"
    with FileLock(str(folder) + ".lock"):
        if not (folder / "copied").exists():
            shutil.copytree(DIGITS / arch, folder, dirs_exist_ok=True)
            (folder / "copied").touch()
    processor = image_processor(32)
    train, test = digits_split()
    return folder, encode(train, processor)[0], *encode(test, processor)


@pytest.fixture(scope="session")
def digits_dinov2(tmp_path_factory):
    """The digits fixture's model as a DINOv2 with 4 registers (the same 24 epochs; 96.7 %)."""
    return _digits_model(tmp_path_factory, "dinov2-registers")


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """A tiny ViT trained briefly on the digits (24 epochs; 90.8 % on the test split): (folder, train pixels,
    test pixels, labels)."""
    return _digits_model(tmp_path_factory, "vit")


def cpu_metadata() -> dict[str, str]:
    """The CPU model and its int8 flags: two CPUs with one torch capability (AVX512) still pick
    different matmul kernels (seen: Intel Xeon with AMX and AMD EPYC round the same model apart)."""
    from surgery.publish.export import cpu_description

    cpu = cpu_description()
    return {"cpu": cpu["model"], "int8_flags": cpu["int8_flags"]}


@pytest.fixture
def online(monkeypatch):
    """The tests run with HF_HUB_OFFLINE=1; uploads to the loopback stand-in need it off."""
    from huggingface_hub import constants, utils

    reset_sessions = getattr(utils, "reset_sessions", None) or utils.close_session  # huggingface_hub < 1 / >= 1
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    reset_sessions()
    yield
    monkeypatch.undo()
    reset_sessions()


def assert_export_and_compile_match_eager(model: torch.nn.Module, x: torch.Tensor) -> None:
    """``torch.export`` and ``torch.compile`` (one graph, Dynamo's trace) give ``model``'s eager logits on ``x``."""
    with torch.no_grad():
        eager = model(pixel_values=x).logits
        exported = torch.export.export(model, (), {"pixel_values": x}).module()(pixel_values=x).logits
        compiled = torch.compile(model, backend="eager", fullgraph=True)(pixel_values=x).logits
    torch.testing.assert_close(exported, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
