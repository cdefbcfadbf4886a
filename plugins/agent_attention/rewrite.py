"""Replace the chosen blocks' self-attention cores with Agent Attention, and put them back."""

from __future__ import annotations

import math

from torch import nn

from surgery.anatomy import Anatomy
from surgery.attention import heads_of, patch_grid, select_layers, stage_of, style_of
from surgery.method import Rewrite
from surgery.plugins.agent_attention.config import AgentAttentionConfig
from surgery.plugins.agent_attention.layers import AgentAttention

SWIN_AGENTS_BY_STAGE = (9, 16, 49, 49)  # Agent-Swin T/S/B: AGENT.NUM = 9-16-49-49
GLOBAL_WINDOW = 2**30  # a Swin block's window larger than any map: it attends over the whole map


def chosen_blocks(model: nn.Module, config: AgentAttentionConfig, anatomy: Anatomy) -> list[int]:
    """Indices of the blocks whose attention ``config`` replaces."""
    blocks = [module for _, module in anatomy.find(model, "block")]
    return select_layers(config.layers, len(blocks), _default_layers(model, blocks, style_of(anatomy)), config)


def apply(model: nn.Module, config: AgentAttentionConfig, anatomy: Anatomy) -> Rewrite:
    style = style_of(anatomy)
    blocks = [module for _, module in anatomy.find(model, "block")]
    attentions = anatomy.find(model, "attention")
    chosen = chosen_blocks(model, config, anatomy)
    undo = []
    for index in chosen:
        name, old = attentions[index]
        block = blocks[index]
        if style == "swin":
            grid = tuple(block.input_resolution)
            agents = config.agents or min(SWIN_AGENTS_BY_STAGE[min(stage_of(block, blocks), 3)], _largest_square(grid))
            undo.append((name, old, block, (block.window_size, block.shift_size)))
            block.window_size, block.shift_size = GLOBAL_WINDOW, 0
        else:
            grid = patch_grid(model.config)
            agents = config.agents or min(81 if model.config.hidden_size >= 768 else 49, _largest_square(grid))
            undo.append((name, old, block, None))
        if agents > grid[0] * grid[1]:
            raise config.invalid("agents", agents, f"at most the {grid[0] * grid[1]} patches of block {index}'s "
                                 f"{grid[0]}x{grid[1]} grid (agents pool the patches)")
        new = AgentAttention(
            old.query, old.key, old.value, heads_of(old), agents, grid, anatomy.prefix_tokens, style,
            bias_size=config.bias_size, prefix_bias=config.prefix_bias, init=config.init, dropout=_dropout(old),
        )
        model.set_submodule(name, new.train(old.training))
    return Rewrite(targets=[name for name, *_ in undo], undo=undo)


def revert(model: nn.Module, rewrite: Rewrite) -> None:
    for name, old, block, window in rewrite.undo:
        model.set_submodule(name, old)
        if window is not None:
            block.window_size, block.shift_size = window


def _default_layers(model: nn.Module, blocks: list[nn.Module], style: str) -> list[int]:
    """The paper's choice: Swin every stage but the last; DeiT-B (width 768+) the first 4; else all."""
    if style == "swin":
        last = max(stage_of(b, blocks) for b in blocks)
        return [i for i, b in enumerate(blocks) if stage_of(b, blocks) < last] or list(range(len(blocks)))
    if model.config.hidden_size >= 768:
        return list(range(min(4, len(blocks))))
    return list(range(len(blocks)))


def _dropout(attention: nn.Module) -> float:
    if hasattr(attention, "dropout_prob"):
        return float(attention.dropout_prob)
    return float(getattr(getattr(attention, "dropout", None), "p", 0.0))


def _largest_square(grid: tuple[int, int]) -> int:
    """The paper's default agent counts are capped at the largest square that fits the patch grid
    (a tiny model's 8x8 grid cannot pool into 81 agents); an explicit ``agents`` is never changed."""
    return math.isqrt(grid[0] * grid[1]) ** 2
