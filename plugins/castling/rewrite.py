"""Replace the chosen blocks' self-attention cores with linear-angular attention, and back.

Swin blocks keep their windows: the attention runs within each window, and the relative position
bias of the replaced module is dropped.
"""

from __future__ import annotations

from torch import nn

from surgery.anatomy import Anatomy
from surgery.attention import heads_of, patch_grid, select_layers, style_of
from surgery.method import Rewrite
from surgery.plugins.castling.config import CastlingConfig
from surgery.plugins.castling.layers import LinearAngularAttention


def chosen_blocks(model: nn.Module, config: CastlingConfig, anatomy: Anatomy) -> list[int]:
    count = len(anatomy.find(model, "block"))
    return select_layers(config.layers, count, list(range(count)), config)


def apply(model: nn.Module, config: CastlingConfig, anatomy: Anatomy) -> Rewrite:
    attentions = anatomy.find(model, "attention")
    blocks = [module for _, module in anatomy.find(model, "block")]
    undo = []
    for index in chosen_blocks(model, config, anatomy):
        name, old = attentions[index]
        tokens = _sequence_length(model.config, blocks[index], style_of(anatomy))
        if config.kernel_size > 2 * tokens - 1:
            raise config.invalid("kernel_size", config.kernel_size, f"an odd integer up to {2 * tokens - 1} (block "
                                 f"{index} convolves a sequence of {tokens} tokens; longer kernels never touch one)")
        new = LinearAngularAttention(
            old.query, old.key, old.value, heads_of(old), anatomy.prefix_tokens, style_of(anatomy),
            kernel_size=config.kernel_size, sparse_reg=config.sparse_reg, sparse_threshold=config.sparse_threshold,
            aux_weight=config.aux_weight, init=config.init,
        )
        model.set_submodule(name, new.train(old.training))
        undo.append((name, old))
    return Rewrite(targets=[name for name, _ in undo], undo=undo)


def revert(model: nn.Module, rewrite: Rewrite) -> None:
    for name, old in rewrite.undo:
        model.set_submodule(name, old)


def _sequence_length(config, block: nn.Module, style: str) -> int:
    """Tokens the depthwise conv runs over: the patches of the image (ViT/DeiT) or of a window (Swin)."""
    if style == "swin":
        window = getattr(block, "window_size", config.window_size)
        return int(window) ** 2 if isinstance(window, int) else int(window[0]) * int(window[1])
    rows, columns = patch_grid(config)
    return rows * columns
