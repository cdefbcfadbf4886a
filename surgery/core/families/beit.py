"""BEiT and data2vec-vision: ViT-like blocks with a relative position bias per block, layer scale and a
mean-pooled read-out.

What the family does beside ViT:

- a learned relative position bias per block (``use_relative_position_bias``): a table of
  (2H-1)(2W-1) + 3 rows per head (the three extra rows: cls to token, token to cls, cls to cls), added
  to the attention logits of the (N+1)^2 pairs, cls included (trait ``relative_position_bias``);
- layer scale ``lambda_1`` / ``lambda_2`` on both residual branches (trait ``layer_scale``);
- the read-out: the pooler takes the mean of the patch tokens (the cls token left out) and normalises
  it with its own LayerNorm; the final norm is an identity (``use_mean_pooling``, every published
  classification checkpoint; trait ``normed_mean_pool``);
- the key projection has no bias.

Layouts. transformers 4.57 lays both out like ViT 4.57 (``encoder.layer.N.attention.attention`` with
``query/key/value``, the bias table in the core's ``relative_position_bias``); data2vec-vision keeps
that layout in 5.x. BEiT >= 5 loops ``beit.layers.N`` itself, the core owns ``q/k/v/o_proj``, the
MLP is ``mlp.fc1/fc2``, one block-level dropout, a layer scale of 1.0 (a float) where 4.57 has none,
and the block computes the bias in its own ``relative_position_bias`` and passes it to the core as the
attention mask.

Not covered: a bias shared by all blocks (``use_shared_relative_position_bias``, the self-supervised
pre-training checkpoints): 4.57 hands it to the core as a positional argument and 5.x folds it into
the mask, so the parts refuse such a model rather than drop it silently.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from surgery.core.anatomy import Anatomy, Layout
from surgery.core.layout import BlockLayout


def beit_position_bias(core: nn.Module, call: Mapping[str, Any]) -> torch.Tensor | None:
    """(1, heads, N+1, N+1) relative position bias of a 4.57 ``BeitSelfAttention`` for the input the host
    passed (its ``resolution``, interpolated as the core does with ``interpolate_pos_encoding``), or
    None where the block has none. Without a resolution, the config's image size (the table's grid)."""
    patch = getattr(getattr(core, "config", None), "patch_size", 1)
    return _bias_for_call(core, call, patch if isinstance(patch, int) else patch[0])


def beit5_block_bias(block: nn.Module, call: Mapping[str, Any]) -> torch.Tensor | None:
    """The same bias as a BEiT >= 5 block computes it in its forward (from the block's own call) and passes
    its core: for a forward that replaces the block's (token reduction's unmerging block)."""
    return _bias_for_call(block, call, getattr(block, "patch_size", 1))


def _bias_for_call(owner: nn.Module, call: Mapping[str, Any], patch: int) -> torch.Tensor | None:
    """``owner``'s ``relative_position_bias`` table evaluated for the call's ``resolution`` (in pixels, over
    ``patch``-pixel patches), or None where it has no table."""
    table = getattr(owner, "relative_position_bias", None)
    if table is None:
        return None
    passed = _host_arguments(owner, call["args"], call["kwargs"])
    resolution = passed.get("resolution")
    if resolution is None:
        return table(tuple(table.window_size))
    grid = (int(resolution[0]) // patch, int(resolution[1]) // patch)
    return table(grid, bool(passed.get("interpolate_pos_encoding", False)), dim_size=call["tokens"])


def _host_arguments(core: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """What the block passed the core (or the encoder the block), by name: bound to the signature of the
    transformers class the module was built as (a method swaps in a subclass of it; the block passes its
    arguments positionally, and BEiT 4.57 has a ``head_mask`` that data2vec-vision 5.x lacks)."""
    try:
        bound = _host_signature(type(core)).bind_partial(core, None, *args, **kwargs)
    except TypeError:
        return dict(kwargs)
    return dict(bound.arguments)


@functools.lru_cache(maxsize=None)
def _host_signature(kind: type) -> inspect.Signature:
    """The ``forward`` signature of the transformers class ``kind`` is (or subclasses): looked up once per
    class, not on every forward of every block."""
    host = next((k for k in kind.__mro__ if k.__module__.startswith("transformers.")), kind)
    return inspect.signature(host.forward)


def _no_shared_bias(config) -> str | None:
    if getattr(config, "use_shared_relative_position_bias", False):
        return (
            "use_shared_relative_position_bias=True (one bias for every block, passed to each core by the model): "
            "not described by the parts; fine-tuned checkpoints use a bias per block"
        )
    return None


_BIAS_TABLE = "relative_position_bias_table"

BEIT_BLOCK_457 = BlockLayout(
    norm1="layernorm_before",
    attention="attention.attention",
    projections={"query": "query", "key": "key", "value": "value"},
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
    layer_scale1="lambda_1",
    layer_scale2="lambda_2",
    drop_path="drop_path",
    mask_argument="head_mask",
    core_returns="single",
    position_bias=beit_position_bias,
    block_returns="tuple",
    tensors={"position_bias_table": f"attention.attention.relative_position_bias.{_BIAS_TABLE}"},
)

BEIT_BLOCK_5 = BlockLayout(
    norm1="layernorm_before",
    attention="attention",
    projections={"query": "q_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj"},
    heads="num_attention_heads",
    head_dim="head_dim",
    dropout="attention_dropout",
    output_dropout="dropout",
    norm2="layernorm_after",
    mlp_in="mlp.fc1",
    activation="mlp.activation_fn",
    mlp_out="mlp.fc2",
    mlp_dropout="dropout",
    layer_scale1="lambda_1",
    layer_scale2="lambda_2",
    drop_path="drop_path",
    mask_argument="attention_bias",
    core_returns="pair",
    host_bias="relative_position_bias",
    block_bias=beit5_block_bias,
    tensors={"position_bias_table": f"relative_position_bias.{_BIAS_TABLE}"},
)


def _roles(backbone: str, encoder: str, blocks: str, layout: BlockLayout) -> dict[str, tuple[str, ...]]:
    return {
        "encoder": (encoder,),
        **layout.roles(blocks),
        "patch_embed": (f"{backbone}.embeddings.patch_embeddings.projection",),
        "final_norm": (f"{backbone}.layernorm",),
        "pooler": (f"{backbone}.pooler",),
        "pooler_norm": (f"{backbone}.pooler.layernorm",),
        "classifier": ("classifier",),
    }


def _beit_like(model_type: str, backbone: str, family: str, layout_5: bool) -> Anatomy:
    prefix_parameters = (f"{backbone}.embeddings.cls_token",)
    layouts = ()
    if layout_5:
        layouts = (
            Layout(
                "transformers >= 5",
                _roles(backbone, backbone, f"{backbone}.layers.*", BEIT_BLOCK_5),
                BEIT_BLOCK_5,
                prefix_parameters,
            ),
        )
    return Anatomy(
        model_type=model_type,
        family=family,
        roles=_roles(backbone, f"{backbone}.encoder", f"{backbone}.encoder.layer.*", BEIT_BLOCK_457),
        prefix_tokens=1,
        readout="pool",
        readout_heads=lambda config: config.num_attention_heads,
        readout_width=lambda config: config.hidden_size,
        block=BEIT_BLOCK_457,
        prefix_parameters=prefix_parameters,
        layouts=layouts,
        name="transformers 4.57" if layout_5 else "transformers 4.57 and 5.x",
        traits=frozenset({"relative_position_bias", "layer_scale", "normed_mean_pool"}),
        parts_refusal=_no_shared_bias,
    )


def beit_anatomies() -> list[Anatomy]:
    return [
        _beit_like("beit", "beit", "BEiT", layout_5=True),
        _beit_like("data2vec-vision", "data2vec_vision", "data2vec-vision", layout_5=False),
    ]
