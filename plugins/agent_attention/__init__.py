"""``agent_attention``: Agent Attention in place of softmax self-attention (ViT, DeiT, Swin).

Han, Ye, Wang, Xia, Han, Song, Huang. "Agent Attention: On the Integration of Softmax and Linear
Attention". ECCV 2024, arXiv 2312.08874; official code LeapLabTHU/Agent-Attention (207ce3e).
Reuses query/key/value/output weights; new: agent biases and a 3x3 depthwise conv per block.
Needs fine-tuning: the paper trains from scratch; no training-free number is published.
"""

from __future__ import annotations

from pathlib import Path

from surgery.attention import overlapping_attention_swaps
from surgery.hookspecs import hookimpl
from surgery.method import SurgeryMethod
from surgery.plugins.agent_attention import rewrite
from surgery.plugins.agent_attention.config import AgentAttentionConfig

METHOD = SurgeryMethod(
    name="agent_attention",
    summary="Agent Attention: two softmaxes through pooled agent tokens plus a depthwise conv on V",
    config_class=AgentAttentionConfig,
    model_types=("vit", "deit", "swin"),
    apply=rewrite.apply,
    revert=rewrite.revert,
    roles=("block", "attention"),
    version="0.1.0",
    card_template=str(Path(__file__).with_name("card.md.j2")),
    paper="https://arxiv.org/abs/2312.08874",
    reference="https://github.com/LeapLabTHU/Agent-Attention (207ce3e)",
)


@hookimpl
def surgery_register_methods() -> list[SurgeryMethod]:
    return [METHOD]


@hookimpl
def surgery_veto(model, steps, history) -> list[str]:
    """Attention swaps (agent_attention, castling) may share a model, never a block."""
    return overlapping_attention_swaps(model, steps, history)
