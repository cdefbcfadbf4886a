"""Where the roles live in each architecture: the one place that knows transformers' module paths.

Plugins never hard-code a module path; they ask the anatomy for a role (``"attention"``,
``"final_norm"``, ``"classifier"`` ...). When transformers renames its modules (5.9 did for ViT and
Swin), only the anatomies below change. Third-party plugins add architectures through the
``surgery_register_anatomies`` hook.

Roles are glob patterns over ``model.named_modules()`` names, where ``*`` matches one index
(``vit.encoder.layer.*.attention.attention``). Known roles:

============== ===========================================================================
encoder        the module that runs the blocks in sequence
block          one transformer block (ViT layer, Swin block)
attention      the self-attention core (query/key/value projections and the softmax)
query, key,    the query, key and value projections of the attention core
value
attn_output    the attention output projection
mlp_in         the first MLP linear
mlp_out        the second MLP linear
patch_embed    the patch-embedding convolution
final_norm     the LayerNorm after the last block
pooler         the pooling module in front of the classifier (Swin)
pooler_norm    the norm inside the pooler, after the mean (BEiT)
classifier     the classification head(s)
============== ===========================================================================

Beyond names, each anatomy describes its block's behaviour as a :class:`~surgery.core.parts.BlockLayout`,
and :meth:`Anatomy.blocks` hands plugins :class:`~surgery.core.parts.BlockParts` (norms, attention
projections, heads, MLP, layer scale, residual, windows, patch grid). One model type may have several
layouts (transformers 4.57 and >= 5.9 name ViT's modules differently): the first whose roles are found
in the model is used, so the choice comes from the model itself, never from a version string.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import weakref
from collections.abc import Callable, Mapping
from typing import Literal

from torch import nn

from surgery.core.layout import BlockLayout
from surgery.core.parts import BlockParts, block_parts
from surgery.errors import UnsupportedModelError, did_you_mean

# Role groups: names for sets of roles that methods treat alike, in the order they are rewritten.
# A layout with a fused projection lists "qkv" where the separate ones would be.
ROLE_GROUPS: Mapping[str, tuple[str, ...]] = {
    "attention_linears": ("query", "key", "value", "qkv", "attn_output"),
    "mlp_linears": ("mlp_in", "mlp_out"),
    "linears": ("query", "key", "value", "qkv", "attn_output", "mlp_in", "mlp_out"),
}


PROBE_ROLES = ("block", "attention", "query")

# What a family does that a method may not handle; anatomies declare theirs, methods refuse by them.
TRAITS: Mapping[str, str] = {
    "windowed": "attention within (shifted) windows of the patch grid (Swin)",
    "relative_position_bias": "a learned relative position bias added to the attention logits",
    "layer_scale": "per-channel scales on both residual branches",
    "registers": "register tokens after the cls token (more prefix tokens, never read by the head)",
    "cls_mean_readout": "the head reads the cls token and the mean of the patch tokens, after the final norm",
    "mean_readout": "the head reads the mean of all tokens after the final norm, with no cls token or pooler module",
    "no_prefix": "no cls token: nothing in front of the patch tokens",
    "cosine_attention": "attention logits are cosine similarities times a learned per-head scale",
    "post_norm": "the norm after each residual branch instead of before it",
    "normed_mean_pool": "the pooler normalises the mean of the patch tokens with its own LayerNorm; the final norm is an identity",
}


@dataclasses.dataclass(frozen=True)
class Layout:
    """One way a model type's modules are laid out: role patterns, the block's parts, the prefix tokens."""

    name: str
    roles: Mapping[str, tuple[str, ...]]
    block: BlockLayout | None = None
    prefix_parameters: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """The layout of one ``model_type``.

    Attributes:
        model_type: ``config.model_type`` this anatomy describes.
        roles: role name to one or more glob patterns over module names (the first layout).
        prefix_tokens: tokens before the patch tokens in the sequence (1 for ViT's cls, 2 for DeiT's
            cls and distillation tokens, 0 for Swin), or ``prefix_tokens(config) -> int`` where the
            config decides (DINOv2 with registers: 1 + num_register_tokens); read it with
            :meth:`prefix_tokens_of`.
        readout: ``"cls"`` when the classifier reads the sequence after ``final_norm`` (its prefix
            token(s); with the ``cls_mean_readout`` trait also the mean of the patch tokens, DINOv2;
            with ``mean_readout`` only the mean of all tokens),
            ``"pool"`` when it reads the output of ``pooler``.
        readout_heads: attention heads of the last stage (the default grouping for pooling).
        readout_width: channels of the features the classifier reads.
        block: the parts of one block in the first layout (None: roles only; plugins that build from
            parts refuse the model with the reason).
        prefix_parameters: glob patterns over parameter names of the learned prefix tokens (cls,
            distillation, registers) in the first layout.
        layouts: further layouts of the same model type, tried in order when the first one's roles
            are not in the model.
        name: what the first layout is called in messages.
        traits: what this family does that methods may refuse (:data:`TRAITS`).
        family: the family's name in tables and messages (default: the model type).
        parts_refusal: ``parts_refusal(config) -> reason or None``: a configuration of the family that
            the block parts do not describe (BEiT's shared position bias), refused by every method that
            builds from parts.
        binding: set by :meth:`bind` (the model, weakly, and its layout); never passed by hand.
    """

    model_type: str
    roles: Mapping[str, tuple[str, ...]]
    prefix_tokens: int | Callable[[object], int]
    readout: Literal["cls", "pool"]
    readout_heads: Callable[[object], int]
    readout_width: Callable[[object], int]
    block: BlockLayout | None = None
    prefix_parameters: tuple[str, ...] = ()
    layouts: tuple[Layout, ...] = ()
    name: str = "transformers 4.57"
    traits: frozenset[str] = frozenset()
    family: str = ""
    parts_refusal: Callable[[object], str | None] | None = None
    binding: tuple[weakref.ref, Layout] | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.traits) - set(TRAITS))
        if unknown:
            raise UnsupportedModelError(
                f"anatomy '{self.model_type}': unknown trait(s) {', '.join(unknown)}; "
                f"traits: {', '.join(TRAITS)}." + did_you_mean(unknown[0], TRAITS)
            )

    def prefix_tokens_of(self, config) -> int:
        """Tokens in front of the patch tokens for ``config`` (cls, distillation, registers)."""
        return int(self.prefix_tokens(config) if callable(self.prefix_tokens) else self.prefix_tokens)

    @property
    def title(self) -> str:
        return self.family or self.model_type

    # -- layouts --------------------------------------------------------------------------------
    def all_layouts(self) -> list[Layout]:
        return [Layout(self.name, self.roles, self.block, self.prefix_parameters), *self.layouts]

    def bind(self, model: nn.Module, layout: Layout | None = None) -> Anatomy:
        """This anatomy bound to ``model`` (as optimum's NormalizedConfig binds a config once): ``model``'s
        layout is resolved here, once, or given (a copy's is its original's), and every lookup on ``model``
        through the bound anatomy reuses it, also after a step renamed the modules that decided it (a
        probe role swapped for a module without a ``query``). Lookups on any other model resolve its own.
        ``Host.anatomy_of(model)`` gives the model's bound anatomy, bound at its first lookup; ``apply`` hands
        it to every step."""
        return dataclasses.replace(self, binding=(weakref.ref(model), layout or self.layout_of(model)))

    def layout_of(self, model: nn.Module) -> Layout:
        """The first layout whose probe roles (``block``, ``attention``, ``query`` where it has them;
        else any role) all match modules of ``model``: the model decides, never a version string. A base
        model or backbone (``ViTModel``, ``Dinov2Backbone``: no head, its modules at the top) gets the
        layouts without the base model's prefix, and without the roles outside it (the classifier).
        The model an anatomy is bound to (:meth:`bind`) gets the layout found then."""
        if self.binding is not None and self.binding[0]() is model:
            return self.binding[1]
        return self._find_layout(model)

    def _find_layout(self, model: nn.Module) -> Layout:
        names = [name for name, _ in model.named_modules()]
        layouts = self.all_layouts()
        prefix = getattr(model, "base_model_prefix", "")
        if prefix and getattr(model, "base_model", None) is model:
            layouts = [_headless(layout, prefix + ".") for layout in layouts]
        chosen = layouts[0]
        for layout in layouts:
            probe = [role for role in PROBE_ROLES if role in layout.roles] or list(layout.roles)[:1]
            if all(any(_compile(tuple(layout.roles[role])).fullmatch(n) for n in names) for role in probe):
                chosen = layout
                break
        return chosen

    def group(self, model: nn.Module, group: str) -> tuple[str, ...]:
        """The roles of ``group`` (:data:`ROLE_GROUPS`: "linears", "attention_linears", "mlp_linears")
        that ``model``'s layout has, in order."""
        if group not in ROLE_GROUPS:
            raise UnsupportedModelError(f"no role group '{group}'; groups: {', '.join(sorted(ROLE_GROUPS))}.")
        roles = self.layout_of(model).roles
        return tuple(role for role in ROLE_GROUPS[group] if role in roles)

    def find_group(self, model: nn.Module, group: str) -> list[tuple[str, nn.Module]]:
        """Every ``(name, module)`` playing a role of ``group``, role by role."""
        return [found for role in self.group(model, group) for found in self.find(model, role)]

    def find(self, model: nn.Module, role: str) -> list[tuple[str, nn.Module]]:
        """Every ``(name, module)`` that plays ``role`` in ``model``, in model order."""
        roles = self.layout_of(model).roles
        if role not in roles:
            raise UnsupportedModelError(
                f"the {self.model_type} anatomy has no role '{role}'; roles: {', '.join(sorted(roles))}."
            )
        pattern = _compile(tuple(roles[role]))
        return [(name, module) for name, module in model.named_modules() if pattern.fullmatch(name)]

    def one(self, model: nn.Module, role: str) -> tuple[str, nn.Module]:
        """The single module playing ``role``; an error if there is not exactly one."""
        found = self.find(model, role)
        if len(found) != 1:
            raise UnsupportedModelError(
                f"{type(model).__name__} ({self.model_type}): expected one '{role}' module matching "
                f"{self.layout_of(model).roles[role]}, found {len(found)}. Is this an image-classification model?"
            )
        return found[0]

    def check(self, model: nn.Module, roles: tuple[str, ...]) -> None:
        """Raise unless every role in ``roles`` is present in ``model``."""
        layout = self.layout_of(model)
        roles = tuple(r for role in roles for r in (self.group(model, role) if role in ROLE_GROUPS else (role,)))
        for role in roles:
            if role == "parts":
                if layout.block is None:
                    raise UnsupportedModelError(
                        f"{type(model).__name__} ({self.model_type}): the anatomy's layout '{layout.name}' names "
                        "modules only, not the parts of a block that this method builds from."
                    )
                self._check_parts_config(model)
                continue
            if not self.find(model, role):
                found = sorted({name.split(".")[0] for name, _ in model.named_modules() if name})
                raise UnsupportedModelError(
                    f"{type(model).__name__} ({self.model_type}) has no module for role '{role}' "
                    f"(looked for {', '.join(layout.roles.get(role, ()))} in the layouts "
                    f"{', '.join(repr(x.name) for x in self.all_layouts())}; its top-level modules: "
                    f"{', '.join(found) or 'none'}). surgery supports the *ForImageClassification classes of this architecture "
                    "(and, for the roles they have, its base model and backbone classes)."
                )

    # -- parts ----------------------------------------------------------------------------------
    def _check_parts_config(self, model: nn.Module) -> None:
        reason = self.parts_refusal(model.config) if self.parts_refusal is not None else None
        if reason:
            raise UnsupportedModelError(f"{type(model).__name__} ({self.model_type}): {reason}.")

    def blocks(self, model: nn.Module) -> list[BlockParts]:
        """The parts of every block, in model order."""
        layout = self.layout_of(model)
        if layout.block is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} ({self.model_type}): the layout '{layout.name}' "
                "does not describe its blocks' parts."
            )
        self._check_parts_config(model)
        grid = patch_grid(model.config)
        return [
            block_parts(i, name, module, layout.block, grid)
            for i, (name, module) in enumerate(self.find(model, "block"))
        ]

    def prefix_token_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The learned prefix tokens (cls, distillation, registers) as ``(name, parameter)``."""
        patterns = self.layout_of(model).prefix_parameters
        if not patterns:
            return []
        pattern = _compile(tuple(patterns))
        return [(name, p) for name, p in model.named_parameters() if pattern.fullmatch(name)]


def _headless(layout: Layout, prefix: str) -> Layout:
    """``layout`` for the base model itself: patterns under ``prefix`` without it; roles outside it dropped."""

    def strip(patterns: tuple[str, ...]) -> tuple[str, ...]:  # the base model itself is the root, ""
        return tuple(
            "" if p == prefix[:-1] else p[len(prefix) :] for p in patterns if p.startswith(prefix) or p == prefix[:-1]
        )

    roles = {role: strip(tuple(patterns)) for role, patterns in layout.roles.items()}
    return Layout(
        f"{layout.name}, base model",
        {r: p for r, p in roles.items() if p},
        layout.block,
        strip(layout.prefix_parameters),
    )


def patch_grid(config) -> tuple[int, int]:
    """Rows and columns of patches at the config's image size (``image_size``/``patch_size``: int or pair)."""
    image = config.image_size if isinstance(config.image_size, (tuple, list)) else (config.image_size,) * 2
    patch = config.patch_size if isinstance(config.patch_size, (tuple, list)) else (config.patch_size,) * 2
    return image[0] // patch[0], image[1] // patch[1]


@functools.lru_cache(maxsize=256)
def _compile(patterns: tuple[str, ...]) -> re.Pattern[str]:
    parts = [re.escape(p).replace(r"\*", r"[^.]+") for p in patterns]
    return re.compile("|".join(f"(?:{p})" for p in parts))
