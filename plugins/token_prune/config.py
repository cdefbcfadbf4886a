"""Options of top-k token pruning: the shared reduction schedule only."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from surgery.toolkit.reduction_config import ReductionConfig


@dataclasses.dataclass(frozen=True)
class TokenPruneConfig(ReductionConfig):
    """Token pruning (one-to-one): r, inflect, r_per_layer, flops, prop_attn as every reduction has."""

    plugin: ClassVar[str] = "token_prune"
