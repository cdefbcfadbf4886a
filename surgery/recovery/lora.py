"""LoRA recovery through PEFT: which layers get adapters, how they train, and the two outcomes.

``surgery.recover(model, teacher, train, lora={"r": 8})`` wraps the rewritten model with PEFT's LoRA
on the layers the anatomy names (``targets``: roles such as ``query`` or the groups ``attention`` and
``mlp``; never module names typed by hand), trains the adapters together with the parameters the
surgery added (those train fully, as in the warm-up stage), and then either

- ``merge=True`` (default): merges the adapters into the weights. The model is a normal surgery model
  again, which saves and reloads exactly; or
- ``merge=False``: keeps them. ``result.adapter`` is the ``PeftModel``; ``surgery.save(result.adapter,
  folder)`` writes the model to ``folder`` and the adapter to ``folder/adapter``, and
  ``surgery.load(folder)`` is the trained model (the PeftModel, its adapter checked).

Binary and int8 linears (:class:`surgery.toolkit.adapters.LatentWeight`) cannot absorb an update
kept beside them: merged into the latent weight it is binarized or quantized with the rest. With
``merge=True`` their update is therefore trained *inside* the layer: its forward runs on the weight
``W + scale * B @ A`` (straight-through, like the latent weight itself), so the merge gives exactly
the model that was trained. With ``merge=False`` they get PEFT's standard LoRA (the update in float
beside the binary/int8 layer, as QLoRA does), which is what ``PeftModel.from_pretrained`` rebuilds;
such an adapter is not merged. PEFT's names (``base_model.model.``, ``.base_layer``) are seen
through wherever surgery compares a model with its teacher.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
from torch import nn

from surgery.core.anatomy import ROLE_GROUPS, Anatomy
from surgery.core.options import SurgeryConfig
from surgery.core.specs import parse_options
from surgery.errors import ConfigError, SurgeryError, did_you_mean
from surgery.toolkit.adapters import LatentWeight, is_latent, is_peft_model

GROUPS = {"attention": ROLE_GROUPS["attention_linears"], "mlp": ROLE_GROUPS["mlp_linears"]}
ROLES = ROLE_GROUPS["linears"]
WRAPPER_SEGMENTS = ("base_layer", "original_module")
FULLY = ("classifier", "norms")


@dataclasses.dataclass(frozen=True)
class LoraOptions(SurgeryConfig):
    """LoRA of :func:`surgery.recover` (``lora=`` / ``--lora r=8,alpha=16,targets=attention+mlp``).

    Attributes:
        r: rank of each update.
        alpha: scale numerator (the update is ``alpha / r * B @ A``).
        dropout: dropout on the adapters' input (0 for binary/int8 layers when merging: their update is
            inside the layer, with no input of its own to drop).
        targets: anatomy roles (query, key, value, qkv, attn_output, mlp_in, mlp_out) or the groups
            ``attention`` (all attention projections) and ``mlp``.
        merge: merge the adapters into the weights after training (True) or keep them (False).
        train: what else trains fully, besides the parameters the surgery added: ``classifier`` (the
            anatomy's head) and ``norms`` (every LayerNorm's scale and shift), or neither (``[]``).
    """

    plugin = "recover lora"

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("attention",)
    merge: bool = True
    train: tuple[str, ...] = ("classifier", "norms")

    def validate(self) -> None:
        if self.r < 1:
            raise self.invalid("r", self.r, "an integer >= 1")
        if self.alpha <= 0:
            raise self.invalid("alpha", self.alpha, "a number > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise self.invalid("dropout", self.dropout, "a number in [0, 1)")
        if not self.targets:
            raise self.invalid("targets", self.targets, "at least one role or group")
        known = [*GROUPS, *ROLES]
        for target in self.targets:
            if target not in known:
                error = self.invalid("targets", target, ", ".join(known))
                raise ConfigError(error.args[0] + did_you_mean(target, known))
        for extra in self.train:
            if extra not in FULLY:
                error = self.invalid("train", extra, ", ".join(FULLY))
                raise ConfigError(error.args[0] + did_you_mean(extra, FULLY))

    @classmethod
    def parse(cls, value: Any) -> LoraOptions | None:
        """``None``/``False`` (no LoRA), ``True`` (defaults), a dict, a ``LoraOptions``, or the command
        line's ``"r=8,alpha=16,targets=attention+mlp"``."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        if isinstance(value, str):
            options = parse_options(value, "recover lora", "key=value,... (e.g. r=8,alpha=16,targets=attention+mlp)")
            lists = {
                key: tuple(t for t in options.pop(key).split("+") if t)
                for key in ("targets", "train")
                if key in options
            }
            return dataclasses.replace(cls.from_strings(options), **lists)
        raise ConfigError(
            f"recover: lora must be True, a dict of LoraOptions fields or LoraOptions, got {type(value).__name__}"
        )


# -- PEFT's names ------------------------------------------------------------------------------------
def base_of(model: nn.Module) -> nn.Module:
    """The transformers model under a ``PeftModel`` (the model itself otherwise)."""
    return model.get_base_model() if is_peft_model(model) else model


def canonical(name: str) -> str:
    """A parameter's name as in the model without adapters: PEFT's ``base_model.model.`` prefix, its
    ``.base_layer``/``.original_module`` wrappers and ``modules_to_save.<adapter>`` copies seen through."""
    parts = name.split(".")
    if parts[:2] == ["base_model", "model"]:
        parts = parts[2:]
    out, skip = [], False
    for part in parts:
        if skip:
            skip = False
            continue
        if part == "modules_to_save":
            skip = True
            continue
        if part not in WRAPPER_SEGMENTS:
            out.append(part)
    return ".".join(out)


def is_adapter_parameter(name: str) -> bool:
    return any(part.startswith("lora_") for part in name.split("."))


# -- targets -----------------------------------------------------------------------------------------
def target_modules(model: nn.Module, anatomy: Anatomy, targets: tuple[str, ...]) -> list[str]:
    """Full module names of the Linears the ``targets`` roles name in ``model``."""
    roles = [role for target in targets for role in GROUPS.get(target, (target,))]
    layout_roles = set(anatomy.layout_of(model).roles)
    names: list[str] = []
    for role in dict.fromkeys(roles):
        if role not in layout_roles:
            continue
        for name, module in anatomy.find(model, role):
            if type(module) is not nn.Linear and not is_latent(module):
                raise SurgeryError(
                    f"recover lora: {name} ({role}) is a {type(module).__name__}, not a Linear "
                    "whose update can be merged (a plain nn.Linear, or a layer marked LatentWeight); "
                    "leave the role out of targets"
                )
            names.append(name)
    if not names:
        raise SurgeryError(
            f"recover lora: targets {list(targets)} name no Linear in this {anatomy.model_type} model; "
            f"its roles are {sorted(layout_roles & set(ROLES))}"
        )
    return names


# -- wrapping, and the outcomes ----------------------------------------------------------------------
def fully_trained(model: nn.Module, anatomy: Anatomy, options: LoraOptions) -> set[str]:
    """Names of the parameters ``options.train`` trains fully (the head, the LayerNorms)."""
    modules = []
    if "classifier" in options.train:
        modules += [m for _, m in anatomy.find(model, "classifier")]
    if "norms" in options.train:
        modules += [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm))]
    ids = {id(p) for m in modules for p in m.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def wrap(model: nn.Module, options: LoraOptions, anatomy: Anatomy, new: set[str]) -> nn.Module:
    """``model`` wrapped by PEFT's LoRA on the targets (in place, as PEFT does); the parameters in
    ``new`` (canonical names) and those ``options.train`` names stay trainable where they were."""
    from peft import LoraConfig, get_peft_model

    names = target_modules(model, anatomy, options.targets)
    latent = [n for n in names if is_latent(model.get_submodule(n))]
    if latent and options.merge and options.dropout > 0:
        raise options.invalid(
            "dropout",
            options.dropout,
            f"0 when merging into binary/int8 layers such as {latent[0]} (their update trains inside the layer)",
        )
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    fully = set(new) | fully_trained(model, anatomy, options)
    config = LoraConfig(
        r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout, target_modules=names, bias="none"
    )
    if latent and options.merge:
        config._register_custom_module({LatentWeight: latent_lora_class()})
    peft_model = get_peft_model(model, config)
    for name, parameter in peft_model.named_parameters():
        if canonical(name) in fully and canonical(name) in trainable:
            parameter.requires_grad_(True)
    peft_model.surgery_trainable_before = trainable
    return peft_model


def finish(peft_model: nn.Module, options: LoraOptions) -> nn.Module:
    """Merged: the model with the updates in its weights and its ``requires_grad`` flags as before."""
    if not options.merge:
        return peft_model
    model = peft_model.merge_and_unload()
    for module in model.modules():  # PEFT merges through .data, which caches keyed on versions do not see
        if callable(getattr(module, "clear_inference_cache", None)):
            module.clear_inference_cache()
    return _restore_flags(peft_model, model)


def discard(peft_model: nn.Module) -> nn.Module:
    """After a failed run: PEFT's layers taken out again (not merged), the flags as they were."""
    return _restore_flags(peft_model, peft_model.unload())


def _restore_flags(peft_model: nn.Module, model: nn.Module) -> nn.Module:
    trainable = getattr(peft_model, "surgery_trainable_before", None)
    if trainable is not None:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in trainable)
    return model


def describe(peft_model: nn.Module, options: LoraOptions) -> dict[str, Any]:
    """What the card and the log say about the adapters."""
    targets = {canonical(n).split(".lora_")[0] for n, _ in peft_model.named_parameters() if is_adapter_parameter(n)}
    latent = any(is_latent(m) for m in base_of(peft_model).modules())
    return {
        **options.to_dict(),
        "outcome": "merged" if options.merge else "adapter",
        "modules": len(targets),
        "latent": latent and options.merge,
        "adapter_parameters": sum(p.numel() for n, p in peft_model.named_parameters() if is_adapter_parameter(n)),
    }


@functools.cache
def latent_lora_class() -> type:
    """PEFT's LoRA Linear whose update is added to the wrapped layer's latent weight before its own
    forward (binarization, quantization) runs: ``merge`` then reproduces the trained layer exactly."""
    from peft.tuners.lora.layer import Linear

    class LatentLoraLinear(Linear):
        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            active = [a for a in self.active_adapters if a in self.lora_A]
            if self.disable_adapters or self.merged or not active or kwargs.get("adapter_names") is not None:
                return super().forward(x, *args, **kwargs)
            base = self.get_base_layer()
            weight = base.weight
            for adapter in active:  # the same sum merge() writes into the weight, in the same order
                weight = weight + self.get_delta_weight(adapter)
            return torch.func.functional_call(base, {"weight": weight}, (x, *args), kwargs)

    LatentLoraLinear.__name__ = LatentLoraLinear.__qualname__ = "LatentLoraLinear"
    return LatentLoraLinear
