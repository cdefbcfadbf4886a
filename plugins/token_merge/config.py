"""Options of token merging, with ToMe's defaults."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from surgery.core.options import SurgeryConfig
from surgery.toolkit.reduction_config import checked_schedule, validate_schedule


@dataclasses.dataclass(frozen=True)
class ToMeConfig(SurgeryConfig):
    """Token merging (ToMe).

    Attributes:
        r: tokens merged away per block (ToMe's ``r``; 13-16 for ViT-B/16 at 224 in the paper).
        inflect: the r schedule as in ToMe's ``parse_r``: 0 (default) keeps r constant; -1 is the
            paper's decreasing schedule (2r in the first block down to 0 in the last); 1 increases
            from 0 to 2r; values between interpolate.
        r_per_layer: an explicit r for each block (zero-padded to the depth); overrides r/inflect.
        prop_attn: proportional attention, log(token size) added to the attention logits (True for
            supervised models; the paper turns it off for off-the-shelf MAE models).
        unmerge: merge, compute, unmerge (ToMe for Stable Diffusion): each block merges r tokens of its
            input, runs attention and the MLP on the merged set, and copies each merged output back to
            every token merged into it, so every block keeps its full token count and order (hidden
            states and feature maps stay whole: backbones, dense prediction). r is then per block, not
            cumulative, and capped at half the patch tokens. False: ToMe's reducing blocks. None (default):
            the family decides: True where it needs its token map (Swin's windows, BEiT's relative position
            bias), else False; the recipe records the value that ran.
        branches: with ``unmerge=True``, the branches that run on the merged tokens: "both" (default),
            "mlp" (attention on every token, only the MLP merged: ToMe for SD's ``merge_mlp``) or
            "attention" (ToMe for SD's default, ``merge_attn``); the other branch runs on every token.
    """

    plugin: ClassVar[str] = "token_merge"

    r: int = 8
    inflect: float = 0.0
    r_per_layer: tuple[int, ...] | None = None
    prop_attn: bool = True
    unmerge: bool | None = None
    branches: str = "both"
    legacy_defaults: ClassVar[dict] = {"unmerge": False}  # recipes from before the option: ToMe's reducing blocks

    def validate(self) -> None:
        validate_schedule(self)

    def schedule(self, num_layers: int) -> list[int]:
        """r for each of ``num_layers`` blocks (ToMe's ``parse_r``)."""
        return checked_schedule(self, num_layers)
