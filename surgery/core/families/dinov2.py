"""DINOv2 and DINOv2 with registers, in transformers 4.57's layout and in the >= 5.x one.

What the family does beside ViT: layer scale (``layer_scale1/2``, per-channel) and stochastic depth on
both residual branches, ``norm1/norm2`` instead of ``layernorm_before/after``, an MLP ``mlp.fc1/fc2``
in both layouts, and a head on ``[cls, mean of the patch tokens]`` after the final norm. The
registers variant puts ``num_register_tokens`` learned tokens after cls: prefix tokens that no
method may reduce and the head never reads. From transformers 5.x the core owns ``q/k/v/o_proj``
(no separate output module and no block-level dropout); the encoder stays.

Not covered: the SwiGLU MLP (``use_swiglu_ffn=True``, the giant checkpoints): its ``weights_in`` /
``weights_out`` play no role here, so the anatomy check refuses such a model and names the missing
``mlp_in``.
"""

from __future__ import annotations

from surgery.core.anatomy import Anatomy, Layout
from surgery.core.layout import BlockLayout

_RESIDUALS = dict(
    norm1="norm1",
    norm2="norm2",
    layer_scale1="layer_scale1",
    layer_scale2="layer_scale2",
    drop_path="drop_path",
    mlp_in="mlp.fc1",
    mlp_out="mlp.fc2",
)

DINOV2_BLOCK_457 = BlockLayout(
    attention="attention.attention",
    projections={"query": "query", "key": "key", "value": "value"},
    heads="num_attention_heads",
    head_dim="attention_head_size",
    dropout="dropout_prob",
    output="attention.output.dense",
    output_dropout="attention.output.dropout",
    activation="mlp.activation",
    mask_argument="head_mask",
    core_returns="pair",
    **_RESIDUALS,
)

DINOV2_BLOCK_5 = BlockLayout(
    attention="attention",
    projections={"query": "q_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj"},
    heads="num_attention_heads",
    head_dim="head_dim",
    dropout="attention_dropout",
    activation="mlp.activation_fn",
    mask_argument="none",
    core_returns="pair",
    **_RESIDUALS,
)


def _roles(backbone: str, layout: BlockLayout) -> dict[str, tuple[str, ...]]:
    return {
        "encoder": (f"{backbone}.encoder",),
        **layout.roles(f"{backbone}.encoder.layer.*"),
        "patch_embed": (f"{backbone}.embeddings.patch_embeddings.projection",),
        "final_norm": (f"{backbone}.layernorm",),
        "classifier": ("classifier",),
    }


def _dinov2(model_type: str, backbone: str, registers: bool) -> Anatomy:
    prefix_parameters = (f"{backbone}.embeddings.cls_token",) + (
        (f"{backbone}.embeddings.register_tokens",) if registers else ()
    )
    traits = {"layer_scale", "cls_mean_readout"} | ({"registers"} if registers else set())
    return Anatomy(
        model_type=model_type,
        family="DINOv2 with registers" if registers else "DINOv2",
        roles=_roles(backbone, DINOV2_BLOCK_457),
        prefix_tokens=(lambda config: 1 + int(config.num_register_tokens)) if registers else 1,
        readout="cls",
        readout_heads=lambda config: config.num_attention_heads,
        readout_width=lambda config: config.hidden_size,
        block=DINOV2_BLOCK_457,
        prefix_parameters=prefix_parameters,
        layouts=(Layout("transformers >= 5", _roles(backbone, DINOV2_BLOCK_5), DINOV2_BLOCK_5, prefix_parameters),),
        traits=frozenset(traits),
    )


def dinov2_anatomies() -> list[Anatomy]:
    return [
        _dinov2("dinov2", "dinov2", registers=False),
        _dinov2("dinov2_with_registers", "dinov2_with_registers", registers=True),
    ]
