"""``bivit``: BiViT binarization of ViT, DeiT and Swin blocks (1-bit weights, optional 1-bit activations).

He, Lou, Zhuang, Zhang, Ni, Liu. "BiViT: Extremely Compressed Binary Vision Transformers".
ICCV 2023, arXiv 2211.07091; reference code ThisisBillhe/BiViT (6b34303, the SAB core only).
New parameters: one learnable scale per output channel of every binary Linear. Not training-free:
recover with distillation; cross-layer binarization applies ``parts="attention"`` first, recovers,
then ``parts="mlp"``.
"""

from __future__ import annotations

from surgery.core.searchable import SearchSpace
from surgery.core.hookspecs import hookimpl
from surgery.core.host import get_host
from surgery.plugins.bivit import rewrite, training
from surgery.plugins.bivit.config import BiViTConfig
from surgery.plugins.bivit.openvino import rewrite_graph
from surgery.toolkit.register import define_method, registration

# what bivit's binary attention cannot follow, by the capability a method provides (never by its name)
SOFTMAX_REWRITERS = {
    "linear_attention": "it replaces the softmax attention with one that has no softmax map to binarize",
    "token_reduction": "it runs its own attention forward, which would bypass the binary one",
}


def _rewrites_softmax(plugin: str) -> str | None:
    """Why a step of ``plugin`` and binary attention do not stack (None: they do)."""
    method = get_host().methods.get(plugin)
    provided = method.provides if method is not None else ()
    return next((reason for capability, reason in SOFTMAX_REWRITERS.items() if capability in provided), None)


METHOD = define_method(
    __name__,
    provides=("binary_linears",),  # linears below 8 bits (what quantize conflicts with)
    summary="BiViT: 1-bit weights (alpha*sign), sign activations and softmax-aware binary attention",
    config_class=BiViTConfig,
    refused_traits={
        "cosine_attention": "binary attention computes sign(q)·sign(k)/sqrt(d) logits; a cosine-attention "
        "core normalises q and k and scales by a learned per-head factor instead"
    },
    trait_notes={
        "relative_position_bias": "kept: added to the binary attention's logits",
        "windowed": "kept: the binary attention runs within the windows, with the shift mask",
    },
    apply=rewrite.apply,
    training=training.training,
    roles=("attention", "linears", "parts"),
    repeatable=True,
    # W1A1 goes to OpenVINO as BinaryConvolution (the float graph drifts on 1-bit inputs): openvino.py
    openvino_graph=rewrite_graph,
    version="0.2.0",
    changes={
        "0.2.0": (
            "W1A1 (activations='binary') sums the +-1 products exactly and scales by alpha after the sum; "
            "0.1.0 checkpoints saved before that change (2026-12-01) scaled inside the sum, whose rounding "
            "breaks sign ties differently, so their logits can differ (0.31 measured on a digits ViT, 2.4 "
            "between runtimes on a ViT-B). W1A32 is unchanged. Re-save under 0.2.0 and re-check accuracy."
        )
    },
    paper="https://arxiv.org/abs/2211.07091",
    reference="https://github.com/ThisisBillhe/BiViT (6b34303)",
    search=SearchSpace(
        options={"parts": ("all", "attention", "mlp"), "activations": ("binary", "full")}, needs_recovery=True
    ),
)


surgery_register_methods = registration(METHOD)


def _parts(options: dict) -> set[str]:
    parts = options.get("parts", "all")
    return {"attention", "mlp"} if parts == "all" else {parts}


@hookimpl
def surgery_veto(model, steps, history) -> list[str]:
    """Each part is binarized once; binary attention does not stack with attention rewrites."""
    done: set[str] = set()
    earlier: list[str] = []
    reasons = []
    for plugin, options in [(s.plugin, s.options) for s in history] + [
        (s.method.name, s.config.to_dict()) for s in steps
    ]:
        if plugin == "bivit":
            parts = _parts(options)
            for part in sorted(parts & done):
                reasons.append(
                    f"bivit already binarized the {part} of this model (cross-layer binarization: 'attention' then 'mlp')."
                )
            if "attention" in parts and options.get("activations", "binary") == "binary":
                reasons += [
                    f"bivit binary attention cannot follow {other}: {_rewrites_softmax(other)}; use parts='mlp' or "
                    "activations='full'."
                    for other in earlier
                    if _rewrites_softmax(other)
                ]
            done |= parts
        elif _rewrites_softmax(plugin) and "attention" in done:
            reasons.append(
                f"{plugin} cannot follow bivit's attention binarization: it would replace or bypass the binary attention."
            )
        earlier.append(plugin)
    return reasons
