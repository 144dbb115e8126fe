"""tinyvit: a readable Vision Transformer in einops, Triton kernels for its core, converters for
official pretrained weights, and the single-trainable-block fine-tuning study.

Importing is cheap and needs no GPU; heavy optional libraries load inside the functions using them.
"""
from tinyvit.fdvit import FDViT, FDViTConfig
from tinyvit.hub import create_model
from tinyvit.presets import PRESETS
from tinyvit.preprocess import Preprocess
from tinyvit.resnet import ResNet, ResNetConfig
from tinyvit.vit import ViTConfig, VisionTransformer

__version__ = "0.1.0"


def load_pretrained(source, **kwargs):
    """Load a checkpoint in any supported format (see tinyvit.convert.load_pretrained)."""
    from tinyvit.convert import load_pretrained as _load

    return _load(source, **kwargs)


def save_pretrained(model, directory):
    """Write model.safetensors + config.json (see tinyvit.checkpoint.save_pretrained)."""
    from tinyvit.checkpoint import save_pretrained as _save

    return _save(model, directory)


def __getattr__(name):
    # CheckpointError lives with the checkpoint readers, imported only when asked for (cheap `import tinyvit`).
    if name == "CheckpointError":
        from tinyvit.checkpoint import CheckpointError

        return CheckpointError
    raise AttributeError(f"module 'tinyvit' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "FDViT",
    "FDViTConfig",
    "PRESETS",
    "Preprocess",
    "ResNet",
    "ResNetConfig",
    "ViTConfig",
    "VisionTransformer",
    "create_model",
    "load_pretrained",
    "save_pretrained",
]
