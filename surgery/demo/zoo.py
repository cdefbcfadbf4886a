"""Model configs and builders for every built-in family on small images: ViT, ViT-MSN, DeiT (plain and
distilled), Swin, Swinv2, DINOv2 (plain and with 4 registers), BEiT and data2vec-vision (a relative
position bias per block and mean pooling, as in their published classification checkpoints).

``demo`` is the size of the built-in default model (64 patch tokens of a 32x32 image, patch 4);
``proving`` the size of the shapes model (6 blocks, width 128: DeiT-Tiny-like, for 64x64 images at
patch 8); ``tiny`` is what tests use. Models are built from configs, never downloaded.
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from transformers import (
    BeitConfig,
    BeitForImageClassification,
    Data2VecVisionConfig,
    Data2VecVisionForImageClassification,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    PretrainedConfig,
    PreTrainedModel,
    SwinConfig,
    SwinForImageClassification,
    Swinv2Config,
    Swinv2ForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTMSNConfig,
    ViTMSNForImageClassification,
)

from surgery.errors import ConfigError, did_you_mean

ARCHITECTURES = (
    "vit",
    "vit-msn",
    "deit",
    "deit-distilled",
    "swin",
    "swinv2",
    "dinov2",
    "dinov2-registers",
    "beit",
    "data2vec-vision",
)
SIZES = ("tiny", "demo", "proving")

_VIT_SIZES = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "demo": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128),
    "proving": dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512),
}
_DINOV2_SIZES = {  # DINOv2 sets the MLP width by mlp_ratio: the same widths as ViT's
    size: {
        **{k: v for k, v in shape.items() if k != "intermediate_size"},
        "mlp_ratio": shape["intermediate_size"] // shape["hidden_size"],
    }
    for size, shape in _VIT_SIZES.items()
}
REGISTERS = 4  # dinov2-registers: DINOv2's register count (the published checkpoints have 4)
_SWIN_SIZES = {
    "tiny": dict(embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4),
    "demo": dict(embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4),
    "proving": dict(embed_dim=64, depths=[2, 4], num_heads=[2, 4], window_size=4),
}
_CLASSES = {
    "vit": (ViTConfig, ViTForImageClassification),
    "deit": (DeiTConfig, DeiTForImageClassification),
    "deit-distilled": (DeiTConfig, DeiTForImageClassificationWithTeacher),
    "swin": (SwinConfig, SwinForImageClassification),
    "swinv2": (Swinv2Config, Swinv2ForImageClassification),
    "vit-msn": (ViTMSNConfig, ViTMSNForImageClassification),
    "dinov2": (Dinov2Config, Dinov2ForImageClassification),
    "dinov2-registers": (Dinov2WithRegistersConfig, Dinov2WithRegistersForImageClassification),
    "beit": (BeitConfig, BeitForImageClassification),
    "data2vec-vision": (Data2VecVisionConfig, Data2VecVisionForImageClassification),
}
# BEiT / data2vec-vision as fine-tuned: a bias per block, mean pooling, layer scale 0.1 (the defaults
# of both configs have no position bias at all)
_BEIT = {
    size: {**shape, "use_relative_position_bias": True, "use_mean_pooling": True, "layer_scale_init_value": 0.1}
    for size, shape in _VIT_SIZES.items()
}
_SHAPES = {
    "swin": _SWIN_SIZES,
    "swinv2": _SWIN_SIZES,
    "dinov2": _DINOV2_SIZES,
    "dinov2-registers": {size: {**shape, "num_register_tokens": REGISTERS} for size, shape in _DINOV2_SIZES.items()},
    "beit": _BEIT,
    "data2vec-vision": _BEIT,
}


def _check(arch: str, size: str) -> None:
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"unknown architecture '{arch}'; choose from {', '.join(ARCHITECTURES)}."
            + did_you_mean(arch, ARCHITECTURES)
        )
    if size not in SIZES:
        raise ConfigError(f"unknown size '{size}'; choose from {', '.join(SIZES)}." + did_you_mean(size, SIZES))


def model_config(
    arch: str = "vit", size: str = "demo", image_size: int = 32, labels: list[str] | None = None, **overrides: Any
) -> PretrainedConfig:
    """The config of an ``arch`` model of ``size`` for ``image_size`` RGB images, patch 4 (``patch_size=`` overrides)."""
    _check(arch, size)
    labels = labels or [str(i) for i in range(10)]
    common = dict(
        image_size=image_size,
        patch_size=4,
        num_channels=3,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    shape = _SHAPES.get(arch, _VIT_SIZES)[size]
    config_class, _ = _CLASSES[arch]
    return config_class(**{**common, **shape, **overrides})


def build_model(
    arch: str = "vit", size: str = "demo", image_size: int = 32, seed: int | None = 0, **overrides: Any
) -> PreTrainedModel:
    """A randomly initialised classifier (deterministic for a given ``seed``), in eval mode."""
    import torch

    config = model_config(arch, size, image_size, **overrides)
    if seed is not None:
        torch.manual_seed(seed)
    model = _CLASSES[arch][1](config).eval()
    embeddings = model.base_model.embeddings
    zeros = [getattr(embeddings, "register_tokens", None)]  # transformers starts these at zero
    if config.model_type in ("beit", "data2vec-vision"):  # and BEiT's cls token and position-bias tables
        zeros += [embeddings.cls_token] + [
            p for n, p in model.named_parameters() if n.endswith("relative_position_bias_table")
        ]
    with torch.no_grad():  # a zero token is a fixed point of linear attentions (castling refuses it), and a zero
        for tensor in filter(lambda t: t is not None, zeros):  # bias table would leave the bias untested
            tensor.normal_(0.0, config.initializer_range)
    return model


def image_processor(image_size: int = 32) -> ViTImageProcessor:
    """Resize to ``image_size`` (bilinear), scale to [0, 1], normalise to [-1, 1]."""
    return ViTImageProcessor(
        size={"height": image_size, "width": image_size},
        resample=Image.Resampling.BILINEAR,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
