"""Presets: the published architectures by name, each with the preprocessing of its official weights.

A plain dict and one function, no registry. Parameter counts match the published models exactly
(tests/test_presets.py builds timm's and torchvision's models and compares).
"""
from __future__ import annotations

from typing import Union

from torch import nn

from tinyvit.preprocess import HALF, IMAGENET_MEAN, IMAGENET_STD, Preprocess
from tinyvit.resnet import ResNet, ResNetConfig
from tinyvit.vit import ViTConfig, VisionTransformer

# Google ViT / AugReg weights, as timm evaluates them: bicubic, crop_pct 0.9 (224 / 0.9 -> 248), [-1, 1].
GOOGLE = Preprocess(224, HALF, HALF, "bicubic", 248)
# DeiT (facebookresearch/deit datasets.py): short side 256 bicubic, centre crop 224, ImageNet stats.
DEIT = Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, "bicubic", 256)
# torchvision ImageNet1K_V1 transforms: short side 256 bilinear, crop 224; ResNet-50's V2 (the DEFAULT) 232.
TORCHVISION = Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear", 256)
TORCHVISION_V2 = Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear", 232)


def _vit(dim, depth, heads, patch=16, preprocess=GOOGLE, **extra):
    return dict(
        arch="vit",
        config=dict(patch_size=patch, dim=dim, depth=depth, num_heads=heads, mlp_dim=4 * dim, **extra),
        preprocess=preprocess,
    )


def _resnet(block, layers, preprocess=TORCHVISION):
    return dict(arch="resnet", config=dict(block=block, layers=layers), preprocess=preprocess)


PRESETS = {
    "vit_tiny_patch16_224": _vit(192, 12, 3),
    "vit_small_patch16_224": _vit(384, 12, 6),
    "vit_base_patch16_224": _vit(768, 12, 12),
    "vit_base_patch32_224": _vit(768, 12, 12, patch=32),
    "vit_large_patch16_224": _vit(1024, 24, 16),
    "vit_huge_patch14_224": _vit(1280, 32, 16, patch=14),
    "deit_tiny_patch16_224": _vit(192, 12, 3, preprocess=DEIT),
    "deit_small_patch16_224": _vit(384, 12, 6, preprocess=DEIT),
    "deit_base_patch16_224": _vit(768, 12, 12, preprocess=DEIT),
    "deit_tiny_distilled_patch16_224": _vit(192, 12, 3, preprocess=DEIT, distilled=True),
    "deit_small_distilled_patch16_224": _vit(384, 12, 6, preprocess=DEIT, distilled=True),
    "deit_base_distilled_patch16_224": _vit(768, 12, 12, preprocess=DEIT, distilled=True),
    "resnet18": _resnet("basic", (2, 2, 2, 2)),
    "resnet34": _resnet("basic", (3, 4, 6, 3)),
    "resnet50": _resnet("bottleneck", (3, 4, 6, 3), preprocess=TORCHVISION_V2),
}


def build_model(arch: str, config: dict, preprocess: Preprocess | None = None) -> nn.Module:
    """Build a bare model from its architecture name ('vit' or 'resnet') and config dict."""
    if arch == "vit":
        model = VisionTransformer(ViTConfig(**config))
    elif arch == "resnet":
        model = ResNet(ResNetConfig(**config))
    else:
        raise ValueError(f"unknown architecture {arch!r}; expected 'vit' or 'resnet'")
    model.preprocess = preprocess
    return model


def create_model(
    name: str,
    num_classes: int = 1000,
    image_size: int | None = None,
    pretrained: Union[bool, str] = False,
    **overrides,
) -> nn.Module:
    """A preset by name, randomly initialised, or with its official weights (`pretrained=True`)
    or a local checkpoint in any format `tinyvit.load_pretrained` reads (`pretrained="path"`).

    `overrides` change ViTConfig / ResNetConfig fields (e.g. drop_path=0.1, pool="mean").
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    if pretrained:
        from tinyvit.hub import pretrained_model

        return pretrained_model(name, pretrained, num_classes=num_classes, image_size=image_size, **overrides)
    preset = PRESETS[name]
    config = dict(preset["config"], num_classes=num_classes, **overrides)
    preprocess = preset["preprocess"]
    if image_size is not None and image_size != preprocess.image_size:
        if preset["arch"] != "vit":
            # A ResNet is size-agnostic: only the preprocessing changes.
            preprocess = preprocess.with_image_size(image_size)
        else:
            config["image_size"] = image_size
            preprocess = preprocess.with_image_size(image_size)
    return build_model(preset["arch"], config, preprocess)
