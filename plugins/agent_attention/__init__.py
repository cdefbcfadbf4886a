"""``agent_attention``: Agent Attention in place of softmax self-attention (ViT, DeiT, Swin).

Han, Ye, Wang, Xia, Han, Song, Huang. "Agent Attention: On the Integration of Softmax and Linear
Attention". ECCV 2024, arXiv 2312.08874; official code LeapLabTHU/Agent-Attention (207ce3e).
Reuses query/key/value/output weights; new: agent biases and a 3x3 depthwise conv per block.
Needs fine-tuning: the paper trains from scratch; no training-free number is published.
"""

from __future__ import annotations

from surgery.core.searchable import SearchSpace
from surgery.plugins.agent_attention import rewrite
from surgery.plugins.agent_attention.config import AgentAttentionConfig
from surgery.toolkit.register import define_method, registration

METHOD = define_method(
    __name__,
    provides=("linear_attention",),  # replaces the softmax attention core (what other methods conflict with)
    summary="Agent Attention: two softmaxes through pooled agent tokens plus a depthwise conv on V",
    config_class=AgentAttentionConfig,
    trait_notes={
        "windowed": "attends over the whole stage map, not windows (the paper's Agent-Swin)",
        "relative_position_bias": "dropped with the replaced core: the agent biases take its place",
        "cosine_attention": "replaced with the core: agent attention's two softmaxes use scaled dot products",
        "registers": "register tokens are prefix tokens: they attend to and through the agents like cls",
    },
    apply=rewrite.apply,
    roles=("block", "attention", "parts"),
    paper="https://arxiv.org/abs/2312.08874",
    reference="https://github.com/LeapLabTHU/Agent-Attention (207ce3e)",
    search=SearchSpace(options={"layers": ("default", "all")}, fastest={"layers": "all"}, needs_recovery=True),
)


surgery_register_methods = registration(METHOD)
