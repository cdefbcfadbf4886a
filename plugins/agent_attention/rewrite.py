"""Replace the chosen blocks' self-attention cores with Agent Attention, and put them back."""

from __future__ import annotations

import math

from torch import nn

from surgery.core.anatomy import Anatomy
from surgery.core.method import Rewrite
from surgery.core.parts import BlockParts
from surgery.plugins.agent_attention.config import AgentAttentionConfig
from surgery.plugins.agent_attention.layers import AgentAttention
from surgery.toolkit.attention import (
    all_but_last_stage,
    attend_globally,
    install_core,
    is_hierarchical,
    select_layers,
    stage_of,
)
from surgery.toolkit.modules import Changes

SWIN_AGENTS_BY_STAGE = (9, 16, 49, 49)  # Agent-Swin T/S/B: AGENT.NUM = 9-16-49-49


def apply(model: nn.Module, config: AgentAttentionConfig, anatomy: Anatomy) -> Rewrite:
    blocks = anatomy.blocks(model)
    changes = Changes(model)
    for index in select_layers(config.layers, len(blocks), _default_layers(blocks), config):
        parts = blocks[index]
        grid = parts.grid
        if parts.windowed:  # the paper's Agent-Swin attends over the whole stage map, not windows
            agents = config.agents or min(SWIN_AGENTS_BY_STAGE[min(stage_of(parts, blocks), 3)], _largest_square(grid))
            attend_globally(changes, parts)
        else:
            agents = config.agents or min(81 if parts.width >= 768 else 49, _largest_square(grid))
        if agents > grid[0] * grid[1]:
            raise config.invalid(
                "agents",
                agents,
                f"at most the {grid[0] * grid[1]} patches of block {index}'s "
                f"{grid[0]}x{grid[1]} grid (agents pool the patches)",
            )
        new = AgentAttention(
            parts.attention,
            agents,
            grid,
            anatomy.prefix_tokens_of(model.config),
            bias_size=config.bias_size,
            prefix_bias=config.prefix_bias,
            init=config.init,
            dropout=parts.attention.dropout,
        )
        install_core(changes, parts, new)
    return changes.rewrite()


def _default_layers(blocks: list[BlockParts]) -> list[int]:
    """The paper's choice: Swin every stage but the last; DeiT-B (width 768+) the first 4; else all."""
    if is_hierarchical(blocks):
        return all_but_last_stage(blocks)
    if blocks and blocks[0].width >= 768:
        return list(range(min(4, len(blocks))))
    return list(range(len(blocks)))


def _largest_square(grid: tuple[int, int]) -> int:
    """The paper's default agent counts are capped at the largest square that fits the patch grid
    (a tiny model's 8x8 grid cannot pool into 81 agents); an explicit ``agents`` is never changed."""
    return math.isqrt(grid[0] * grid[1]) ** 2
