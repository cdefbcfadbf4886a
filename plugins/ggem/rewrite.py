"""Wire GGeM in front of the classifier, and take it out again."""

from __future__ import annotations

from torch import nn

from surgery.core.anatomy import Anatomy
from surgery.core.method import Rewrite
from surgery.plugins.ggem.config import GGeMConfig
from surgery.plugins.ggem.layers import GGeMNormedPooler, GGeMPooler, GGeMReadout, GroupGeM
from surgery.toolkit.modules import Changes
from surgery.toolkit.tokens import token_sizes


def apply(model: nn.Module, config: GGeMConfig, anatomy: Anatomy) -> Rewrite:
    """Replace the cls read-out (ViT/DeiT: the final norm) or the pooler (Swin) with GGeM. DINOv2's head
    reads [cls, mean of the patch tokens]: GGeM takes the cls half, the mean half stays (our choice: the
    paper replaces a cls or a GAP read-out, not both); registers are prefix tokens and never pooled.
    BEiT's pooler normalises the mean of the patch tokens: GGeM takes the mean's place, the norm stays."""
    width = anatomy.readout_width(model.config)
    groups = config.groups or anatomy.readout_heads(model.config)
    if width % groups:
        divisors = [d for d in range(1, width + 1) if width % d == 0]
        raise config.invalid("groups", groups, f"a divisor of the feature width {width}: {divisors}")
    normed_pool = "normed_mean_pool" in anatomy.traits  # BEiT: the pooler's LayerNorm follows the mean
    norm_name, norm = anatomy.one(model, "pooler_norm" if normed_pool else "final_norm")
    reference = next(norm.parameters())
    pool = GroupGeM(width, groups, config.p_init, config.eps, config.learn_p).to(reference.device, reference.dtype)
    changes = Changes(model)
    prefix = anatomy.prefix_tokens_of(model.config)
    if normed_pool:
        changes.replace(anatomy.one(model, "pooler")[0], GGeMNormedPooler(norm, pool, prefix))
    elif anatomy.readout == "cls":
        changes.replace(norm_name, GGeMReadout(norm, pool, prefix, token_sizes(model)))
    else:
        changes.replace(anatomy.one(model, "pooler")[0], GGeMPooler(pool))
    return changes.rewrite()
