"""ViT (and ViT-MSN, its self-supervised pre-training with the same modules), DeiT (plain and distilled
heads) and Swin, in transformers 4.57's layout and in the >= 5.9 layout
(``layers.N.attention.{q,k,v,o}_proj``, ``mlp.fc1/fc2``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from surgery.core.anatomy import Anatomy, Layout
from surgery.core.layout import BlockLayout

_SEPARATE_QKV = {"query": "query", "key": "key", "value": "value"}

# transformers 4.57 ViTLayer / DeiTLayer: pre-norm, the output projection outside the core
VIT_BLOCK_457 = BlockLayout(
    norm1="layernorm_before",
    attention="attention.attention",
    projections=_SEPARATE_QKV,
    heads="num_attention_heads",
    head_dim="attention_head_size",
    dropout="dropout_prob",
    output="attention.output.dense",
    output_dropout="attention.output.dropout",
    norm2="layernorm_after",
    mlp_in="intermediate.dense",
    activation="intermediate.intermediate_act_fn",
    mlp_out="output.dense",
    mlp_dropout="output.dropout",
    mask_argument="head_mask",
    core_returns="pair",
)


def swin_position_bias(core: nn.Module, call: Mapping[str, Any]) -> torch.Tensor:
    """(1, heads, N, N) relative position bias of a 4.57 ``SwinSelfAttention`` for its window."""
    size = core.window_size[0] * core.window_size[1]
    bias = core.relative_position_bias_table[core.relative_position_index.view(-1)].view(size, size, -1)
    return bias.permute(2, 0, 1).unsqueeze(0)


def swin_position_index(tensors) -> torch.Tensor | None:
    """Swin's (W*W, W*W) relative position index for the window its bias table describes ((2W-1)^2
    rows): the buffer 4.57 checkpoints hold and >= 5.9 recomputes. None where the block has no table
    (an attention swap removed it)."""
    table = tensors.get("attention.self.relative_position_bias_table")
    if table is None:
        return None
    side = (round(table.shape[0] ** 0.5) + 1) // 2
    coords = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (side - 1)
    return relative[..., 0] * (2 * side - 1) + relative[..., 1]


# transformers 4.57 SwinLayer: windowed (shifted) attention with a relative position bias, drop path
SWIN_BLOCK_457 = BlockLayout(
    norm1="layernorm_before",
    attention="attention.self",
    projections=_SEPARATE_QKV,
    heads="num_attention_heads",
    head_dim="attention_head_size",
    dropout="dropout",
    output="attention.output.dense",
    output_dropout="attention.output.dropout",
    norm2="layernorm_after",
    mlp_in="intermediate.dense",
    activation="intermediate.intermediate_act_fn",
    mlp_out="output.dense",
    mlp_dropout="output.dropout",
    drop_path="drop_path",
    mask_argument="window_mask",
    core_returns="single",
    window_size="window_size",
    shift_size="shift_size",
    resolution="input_resolution",
    position_bias=swin_position_bias,
    tensors={"position_bias_table": "attention.self.relative_position_bias_table"},
    saved_buffers={"attention.self.relative_position_index": swin_position_index},
)


# transformers >= 5.9 ViTLayer / DeiTLayer: the core owns q/k/v/o projections, MLP as mlp.fc1/fc2,
# one block-level dropout after the attention and after the MLP; no encoder module (the model loops)
_CORE_OWNS_OUTPUT = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj"}
VIT_BLOCK_59 = BlockLayout(
    norm1="layernorm_before",
    attention="attention",
    projections=_CORE_OWNS_OUTPUT,
    heads="num_attention_heads",
    head_dim="head_dim",
    dropout="attention_dropout",
    output_dropout="dropout",
    norm2="layernorm_after",
    mlp_in="mlp.fc1",
    activation="mlp.activation_fn",
    mlp_out="mlp.fc2",
    mlp_dropout="dropout",
    mask_argument="none",
    core_returns="pair",
)

# transformers >= 5.9 SwinLayer: the same windows and shifts, the core owns its projections and
# computes the relative position bias in a submodule
SWIN_BLOCK_59 = BlockLayout(
    norm1="layernorm_before",
    attention="attention",
    projections=_CORE_OWNS_OUTPUT,
    heads="num_attention_heads",
    head_dim="head_dim",
    dropout="attention_dropout",
    output_dropout="dropout",
    norm2="layernorm_after",
    mlp_in="mlp.fc1",
    activation="mlp.activation_fn",
    mlp_out="mlp.fc2",
    mlp_dropout="dropout",
    drop_path="drop_path",
    mask_argument="window_mask",
    core_returns="pair",
    window_size="window_size",
    shift_size="shift_size",
    resolution="input_resolution",
    position_bias=lambda core, call: core.relative_position_bias(),
    tensors={"position_bias_table": "attention.relative_position_bias.relative_position_bias_table"},
)


def _vit_roles(
    backbone: str, encoder: str, block: str, layout: BlockLayout, classifiers: tuple[str, ...]
) -> dict[str, tuple[str, ...]]:
    """ViT / DeiT roles: the same patch embedding, final norm and heads in both layouts; the encoder and
    the blocks where the layout puts them."""
    return {
        "encoder": (encoder,),
        **layout.roles(block),
        "patch_embed": (f"{backbone}.embeddings.patch_embeddings.projection",),
        "final_norm": (f"{backbone}.layernorm",),
        "classifier": classifiers,
    }


def _swin_roles(layout: BlockLayout) -> dict[str, tuple[str, ...]]:
    """Swin roles: one module tree in both layouts; only the blocks' insides differ."""
    return {
        "encoder": ("swin.encoder",),
        **layout.roles("swin.encoder.layers.*.blocks.*"),
        "patch_embed": ("swin.embeddings.patch_embeddings.projection",),
        "final_norm": ("swin.layernorm",),
        "pooler": ("swin.pooler",),
        "classifier": ("classifier",),
    }


def _vit_like(
    model_type: str,
    backbone: str,
    prefix_tokens: int,
    classifiers: tuple[str, ...],
    prefix_parameters: tuple[str, ...],
    family: str,
) -> Anatomy:
    layout_59 = Layout(
        name="transformers >= 5.9",
        roles=_vit_roles(backbone, backbone, f"{backbone}.layers.*", VIT_BLOCK_59, classifiers),
        block=VIT_BLOCK_59,
        prefix_parameters=prefix_parameters,
    )
    return Anatomy(
        model_type=model_type,
        roles=_vit_roles(backbone, f"{backbone}.encoder", f"{backbone}.encoder.layer.*", VIT_BLOCK_457, classifiers),
        prefix_tokens=prefix_tokens,
        readout="cls",
        readout_heads=lambda config: config.num_attention_heads,
        readout_width=lambda config: config.hidden_size,
        block=VIT_BLOCK_457,
        prefix_parameters=prefix_parameters,
        layouts=(layout_59,),
        family=family,
    )


def _swin() -> Anatomy:
    return Anatomy(
        model_type="swin",
        roles=_swin_roles(SWIN_BLOCK_457),
        prefix_tokens=0,
        readout="pool",
        readout_heads=lambda config: config.num_heads[-1],
        readout_width=lambda config: int(config.embed_dim * 2 ** (len(config.depths) - 1)),
        block=SWIN_BLOCK_457,
        layouts=(Layout(name="transformers >= 5.9", roles=_swin_roles(SWIN_BLOCK_59), block=SWIN_BLOCK_59),),
        traits=frozenset({"windowed", "relative_position_bias", "no_prefix"}),
        family="Swin",
    )


def vit_swin_anatomies() -> list[Anatomy]:
    return [
        _vit_like(
            "vit",
            "vit",
            prefix_tokens=1,
            classifiers=("classifier",),
            prefix_parameters=("vit.embeddings.cls_token",),
            family="ViT",
        ),
        _vit_like(
            "vit_msn",
            "vit",
            prefix_tokens=1,
            classifiers=("classifier",),
            prefix_parameters=("vit.embeddings.cls_token",),
            family="ViT-MSN",
        ),
        _vit_like(
            "deit",
            "deit",
            prefix_tokens=2,
            classifiers=("classifier", "cls_classifier", "distillation_classifier"),
            prefix_parameters=("deit.embeddings.cls_token", "deit.embeddings.distillation_token"),
            family="DeiT",
        ),
        _swin(),
    ]
