"""Presets: the published architectures by name, each with the preprocessing of its official weights.

A plain dict and a few functions, no registry; `tinyvit.create_model` (tinyvit/hub.py) adds the
official weights. Parameter counts match the published models exactly (tests/test_presets.py
builds timm's and torchvision's models and compares). `parse_overrides` reads the command lines'
`--override KEY=VALUE` changes of a preset's config.
"""
from __future__ import annotations

import ast
import re
import typing
from dataclasses import fields

from torch import nn

from tinyvit.errors import TinyvitError
from tinyvit.fdvit import FDViT, FDViTConfig
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


def _fdvit(patch, base_dims, heads, depth):
    # AMD-AIG-AIMA/AMD_FDViT fdvit.py, @register_model fdvit_ti/s/b; evaluated as DeiT (datasets.py:
    # short side 224 / 0.875 = 256 bicubic, centre crop 224, ImageNet mean/std).
    config = dict(patch_size=patch, stride=patch // 2, base_dims=base_dims, heads=heads, depth=depth)
    return dict(arch="fdvit", config=config, preprocess=DEIT)


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
    "fdvit_ti": _fdvit(16, (32, 23, 21, 23, 26), (2, 4, 6, 8, 10), (2, 3, 3, 2, 2)),
    "fdvit_s": _fdvit(16, (48, 34, 32, 34, 38), (3, 6, 9, 12, 15), (2, 3, 3, 2, 2)),
    "fdvit_b": _fdvit(14, (64, 45, 64, 45, 64), (4, 8, 8, 16, 16), (3, 3, 3, 2, 2)),
}

# The config class of each architecture name ("arch" in PRESETS and in saved config.json files).
CONFIGS = {"vit": ViTConfig, "resnet": ResNetConfig, "fdvit": FDViTConfig}
MODELS = {cls.arch: cls for cls in (VisionTransformer, ResNet, FDViT)}


def build_model(arch: str, config: dict, preprocess: Preprocess | None = None) -> nn.Module:
    """Build a bare model from its architecture name ('vit', 'resnet' or 'fdvit') and config dict."""
    if arch not in MODELS:
        raise TinyvitError(f"unknown architecture {arch!r}; expected one of {', '.join(MODELS)}")
    try:
        config = CONFIGS[arch](**config)
    except ValueError as e:  # a field out of range, from an --override or a config.json: the user's to fix
        raise TinyvitError(str(e)) from e
    model = MODELS[arch](config)
    model.preprocess = preprocess
    return model


def preset(name: str) -> dict:
    """PRESETS[name], or an error that lists the names."""
    if name not in PRESETS:
        raise TinyvitError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_model(name: str, num_classes: int = 1000, image_size: int | None = None, **overrides) -> nn.Module:
    """A preset by name, randomly initialised (tinyvit.create_model also loads weights).

    `overrides` change ViTConfig / ResNetConfig / FDViTConfig fields (e.g. drop_path=0.1, pool="mean").
    """
    entry = preset(name)
    config = dict(entry["config"], num_classes=num_classes, **overrides)
    preprocess = entry["preprocess"]
    if image_size is not None and image_size != preprocess.image_size:
        # Built at that size where the config has one (a ResNet's has none: set_image_size, resnet.py).
        if "image_size" in {f.name for f in fields(CONFIGS[entry["arch"]])}:
            config["image_size"] = image_size
        preprocess = preprocess.with_image_size(image_size)
    return build_model(entry["arch"], config, preprocess)


def parse_overrides(items: list, model: str) -> dict:
    """['depth=2,dim=64', 'drop_path=0.1'] -> {'depth': 2, 'dim': 64, 'drop_path': 0.1}, checked
    against the fields of the preset's config class."""
    cls = CONFIGS[preset(model)["arch"]]
    allowed = {f.name for f in fields(cls)} - {"num_classes", "image_size"}
    out = {}
    # Commas separate fields only before "key=": layers=[1,1,1,1] stays whole.
    for part in (p for item in items for p in re.split(r",(?=\s*\w+=)", item) if p):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in allowed:
            raise TinyvitError(f"--override {part!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(allowed))}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()  # a bare string, e.g. pool=mean
        _check_override_type(cls, key.strip(), out[key.strip()])
    return out


def _check_override_type(cls, key: str, value) -> None:
    """The value's type against the config field's annotation (int, float, bool, str, tuple,
    Optional[...]): depth=two must fail here, by name, not as a TypeError inside the model."""
    hint = typing.get_type_hints(cls)[key]
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] if typing.get_origin(hint) is typing.Union else [hint]
    optional = hint is not kinds[0]
    accepts = {
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        bool: lambda v: isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        tuple: lambda v: isinstance(v, (list, tuple)),
    }
    if (optional and value is None) or any(accepts.get(k, lambda v: True)(value) for k in kinds):
        return
    names = {int: "an integer", float: "a number", bool: "True or False", str: "a string", tuple: "a list, e.g. [2,2,2,2]"}
    expected = " or ".join(names.get(k, k.__name__) for k in kinds) + (" or None" if optional else "")
    raise TinyvitError(f"--override {key}={value!r}: {cls.__name__}.{key} expects {expected}, got {type(value).__name__}")
