"""The schedule options every token-reduction plugin shares, the FLOPs target that sets them, and the method
fields they share (:func:`reduction_fields`: refused traits, options by trait, roles, conflicts).

``r`` tokens removed per block with ToMe's ``inflect`` schedule, an explicit ``r_per_layer``, or
``flops``: the fraction of the blocks' matmul FLOPs to keep (0.6 = 40 % fewer), for which the
smallest constant-r schedule (with ``inflect``) is solved from the model's width, MLP size and token
count at its configured image size, with the patch embedding and the head (which no reduction
changes) on both sides of the ratio and the reduction's own work (scores, similarities) counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from surgery.core.options import SurgeryConfig
from surgery.core.parts import BlockParts
from surgery.errors import did_you_mean
from surgery.toolkit.reduction import BlockCost, patch_embedding_flops, schedule, solve_r


@dataclasses.dataclass(frozen=True)
class ReductionConfig(SurgeryConfig):
    """Attributes:
    r: patch tokens removed per block (capped at what a block can remove).
    inflect: the r schedule as in ToMe's ``parse_r``: 0 constant; -1 decreasing from 2r to 0;
        1 increasing from 0 to 2r; values between interpolate.
    r_per_layer: an explicit r for each block (zero-padded to the depth); overrides r/inflect.
    flops: the fraction of the blocks' FLOPs to keep (in (0, 1]); solves r (overrides it).
    prop_attn: proportional attention, log(token size) added to the attention logits.
    unmerge: reduce, compute, unmerge (as ToMe for Stable Diffusion): each block reduces r tokens of
        its input, runs attention and the MLP on the rest and gives every token back the outputs it
        went into, so every block keeps its token count and order (backbones, dense features; a
        pruned token passes the block unchanged). r is per block, not cumulative. False: the reducing
        blocks. None (default): the family decides: True where it needs its token map (BEiT's
        relative position bias), else False; the recipe records the value that ran.
    branches: with ``unmerge=True``, the branches that run on the reduced tokens: "both" (default),
        "mlp" (attention on every token, only the MLP reduced: ToMe for SD's ``merge_mlp``) or
        "attention" (ToMe for SD's default, ``merge_attn``); the other branch runs on every token.
    """

    r: int = 8
    inflect: float = 0.0
    r_per_layer: tuple[int, ...] | None = None
    flops: float | None = None
    prop_attn: bool = True
    unmerge: bool | None = None
    branches: str = "both"
    legacy_defaults: ClassVar[dict] = {"unmerge": False}  # recipes from before the option: the reducing blocks

    def validate(self) -> None:
        validate_schedule(self)
        if self.flops is not None and not 0.0 < self.flops <= 1.0:
            raise self.invalid("flops", self.flops, "a fraction of the FLOPs to keep, in (0, 1] (0.6 = 40 % fewer)")
        if self.flops is not None and self.r_per_layer is not None:
            raise self.invalid("flops", self.flops, "None when r_per_layer is given (each sets the whole schedule)")
        if self.flops is not None and self.unmerge:
            raise self.invalid(
                "flops",
                self.flops,
                "None with unmerge=True (the FLOPs target solves the reducing "
                "blocks' schedule); give r, tokens reduced in every block",
            )

    def removals(
        self,
        blocks: list[BlockParts],
        prefix: int,
        cap: Callable[[int, int], int],
        config: Any = None,
        overhead: Callable[[int, int], float] | None = None,
    ) -> list[int]:
        """Tokens removed in each block; ``cap(tokens, r)`` is what a block can remove; ``config``
        (the model's) sizes the patch embedding and head, ``overhead(tokens in, tokens out)`` is the
        reduction's own FLOPs in a block, for the FLOPs target."""
        if self.flops is None:
            return checked_schedule(self, len(blocks))
        costs = [BlockCost(b.width, b.part("mlp_in").out_features) for b in blocks]
        patches = blocks[0].grid[0] * blocks[0].grid[1]
        fixed = 0.0 if config is None else patch_embedding_flops(config, patches, blocks[0].width)
        try:
            r, _ = solve_r(self.flops, costs, patches + prefix, self.inflect, cap, fixed, overhead)
        except ValueError as error:
            raise self.invalid("flops", self.flops, f"a fraction this model reaches: {error}") from None
        return schedule(r, self.inflect, None, len(blocks))


BRANCHES = ("both", "attention", "mlp")


def unmerging(config: SurgeryConfig) -> bool:
    """``config.unmerge``, set: None (the family decides) is resolved by ``surgery.apply`` and a recipe's
    replay (``SurgeryMethod.resolved``) before a plugin's ``apply`` runs; a direct call must set it. A
    ``branches`` other than "both" needs it True (the reducing blocks reduce between the branches)."""
    if config.unmerge is None:
        raise config.invalid(
            "unmerge",
            None,
            "True or False in a direct call of the plugin's apply (None, the "
            "family's choice, is set by surgery.apply and the recipe's replay)",
        )
    if not config.unmerge and config.branches != "both":
        raise config.invalid(
            "branches",
            config.branches,
            "'both' with unmerge=False (the reducing blocks reduce "
            "between attention and MLP); set unmerge=True to reduce one branch",
        )
    return config.unmerge


def checked_schedule(config: SurgeryConfig, num_layers: int) -> list[int]:
    """The schedule of ``config``'s ``r``, ``inflect`` and ``r_per_layer`` for ``num_layers`` blocks,
    refusing an ``r_per_layer`` longer than the model."""
    if config.r_per_layer is not None and len(config.r_per_layer) > num_layers:
        raise config.invalid("r_per_layer", list(config.r_per_layer), f"at most {num_layers} values (one per block)")
    return schedule(config.r, config.inflect, config.r_per_layer, num_layers)


def validate_schedule(config: SurgeryConfig) -> None:
    """The checks of ``r``, ``inflect``, ``r_per_layer`` (ToMe's options) and ``branches``, shared by every reduction."""
    if config.r < 0:
        raise config.invalid("r", config.r, "an integer >= 0")
    if not -1.0 <= config.inflect <= 1.0:
        raise config.invalid("inflect", config.inflect, "a number in [-1, 1] (0 constant, -1 decreasing)")
    if config.r_per_layer is not None and any(v < 0 for v in config.r_per_layer):
        raise config.invalid("r_per_layer", list(config.r_per_layer), "integers >= 0, one per block")
    if config.branches not in BRANCHES:
        raise config.invalid(
            "branches",
            config.branches,
            f"one of {', '.join(map(repr, BRANCHES))} (with unmerge=True, the "
            f"branches run on the reduced tokens){did_you_mean(config.branches, BRANCHES)}",
        )


SEARCHED_R = (2, 4, 6, 8, 10, 12, 16, 20, 24)  # r per block (per window on Swin) the search tries
SEARCHED_BRANCHES = ("both", "mlp")


def unmerge_search(windows: bool = False, r_for_flops: bool = False) -> dict[str, dict[str, tuple[Any, ...]]]:
    """The search's options on the families that take token reduction with ``unmerge=True`` only (a relative position
    bias; with ``windows``, Swin's windows): which branches run on the reduced tokens (``SEARCHED_BRANCHES``: "mlp"
    keeps accuracy where "both" loses it on the digits and shapes Swins, "both" is the faster) and, with
    ``r_for_flops``, r instead of the FLOPs target that mode refuses (``SearchSpace.trait_options``)."""
    options = {"branches": SEARCHED_BRANCHES, **({"flops": (), "r": SEARCHED_R} if r_for_flops else {})}
    return {trait: options for trait in ("relative_position_bias", *(("windowed",) if windows else ()))}


MEAN_READOUT = "the head's mean runs over the reduced tokens (unweighted by size: the model's own mean)"
ONE_REDUCTION = "one token reduction per model: both reduce the tokens of the same blocks between attention and MLP"


def reduction_fields(
    linear_attention: str, windowed: str, needs_prefix: bool = False, windows: bool = False
) -> dict[str, Any]:
    """The method fields a token-reduction plugin shares with the others (for ``define_method``).

        Refused: windows (``windowed``: why not Swin; with ``windows``, the builder takes ``groups`` and windowed
        families are taken with ``unmerge=True``: :mod:`surgery.toolkit.windows`), a relative position bias
        (taken with ``unmerge=True``), cosine attention, and with ``needs_prefix`` (importance from the prefix
        tokens' attention) a family without a cls token in the reducing blocks (taken with ``unmerge=True``, scored by
    every token's attention). ``unmerge`` left unset takes the value the family
        needs (``auto_options``). Also the roles the swaps claim, and the conflicts with the linear attentions
        (``linear_attention``: why) and with every other reduction."""
    refused = {
        "windowed": windowed,
        "relative_position_bias": (
            "the bias is indexed by each token's grid position, and a token reduced "
            "between attention and MLP has none for the blocks after it"
        ),
        "cosine_attention": "the reducing attention computes scaled dot-product logits, not cosine ones",
    }
    if needs_prefix:
        refused["no_prefix"] = (
            "the reducing blocks score tokens by the attention the prefix tokens pay them, and there are none "
            "(unmerge=True scores them by the attention every token pays them)"
        )
    return {
        "refused_traits": refused,
        "trait_options": {
            "relative_position_bias": {"unmerge": True},
            **({"windowed": {"unmerge": True}} if windows else {}),
            **({"no_prefix": {"unmerge": True}} if needs_prefix else {}),
        },
        "auto_options": {"unmerge": False},  # None: True where a trait above needs it, else the reducing blocks
        "trait_notes": {
            "relative_position_bias": (
                "every block keeps its tokens and their grid positions, and the reduced "
                "tokens attend with the bias reduced as they are (a merged token takes "
                "the mean of its members' pairs)"
            ),
            "registers": (
                "register tokens are prefix tokens: never reduced, kept in front (their attention counts in "
                "the importance scores, as the cls token's does)"
            ),
            **(
                {
                    "no_prefix": (
                        "with no cls token, a token's importance is the attention every token (of its window) pays "
                        "it, averaged over heads and queries, from the block's normed input before attention"
                    )
                }
                if needs_prefix
                else {}
            ),
            "cls_mean_readout": MEAN_READOUT,
            "mean_readout": MEAN_READOUT,
            **(
                {
                    "windowed": (
                        "every window reduces its own tokens (r per window), and no reduced token mixes two "
                        "shifted-window regions (a merge: while r leaves pairs within one), so the windows, the "
                        "shift mask and the patch merging between stages stay"
                    )
                }
                if windows
                else {}
            ),
        },
        "roles": ("encoder", "block", "attention", "parts", "mlp_in", "mlp_out"),  # the reducing block runs the MLP
        # by capability: every linear attention (agent attention, castling, ecoformer, a third party's) and
        # every other token reduction
        "conflicts": {"linear_attention": linear_attention, "token_reduction": ONE_REDUCTION},
        "provides": ("token_reduction",),
    }
