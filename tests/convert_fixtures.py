"""Helpers for the converter tests: tiny reference models with non-trivial weights, and a Google
.npz writer (the inverse of the vit_jax layout, written from vit_jax/models_vit.py's parameter names on its own,
independently of tinyvit.convert, and checked against timm's own npz loader in the tests)."""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch
from torch import nn

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10)  # timm kwargs


@torch.no_grad()
def perturb(module: nn.Module, seed: int = 0) -> nn.Module:
    """Move every parameter off its initial value (no LayerNorm is the identity, no bias zero, no
    token zero) and give BatchNorm random running statistics, so a mis-mapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.1)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.num_batches_tracked.fill_(7)
    return module.eval()


@contextlib.contextmanager
def no_warnings():
    """Fail on any warning: a dropped or all-zero head would warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def tiny_timm_vit(seed: int = 0, **kwargs) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return perturb(VisionTransformer(**{**TINY, **kwargs}), seed)


def tiny_timm_deit(seed: int = 0, **kwargs) -> nn.Module:
    from timm.models.deit import VisionTransformerDistilled

    return perturb(VisionTransformerDistilled(**{**TINY, **kwargs}), seed)


def npz_from_timm(model: nn.Module, path, num_heads: int, pre_logits=None, prefix: str = "") -> dict:
    """Write a timm VisionTransformer's weights as a Google vit_jax .npz (pre-Linen names).

    pre_logits: optional (kernel [d, r], bias [r]) numpy arrays, as in Google's in21k files.
    Returns the arrays written (without the prefix).
    """
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    d = sd["cls_token"].shape[-1]
    h, dh = num_heads, d // num_heads
    a = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # OIHW -> HWIO
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "head/kernel": sd["head.weight"].T,
        "head/bias": sd["head.bias"],
    }
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        b, e = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = e + "MultiHeadDotProductAttention_1/"
        a[e + "LayerNorm_0/scale"], a[e + "LayerNorm_0/bias"] = sd[b + "norm1.weight"], sd[b + "norm1.bias"]
        a[e + "LayerNorm_2/scale"], a[e + "LayerNorm_2/bias"] = sd[b + "norm2.weight"], sd[b + "norm2.bias"]
        ws = np.split(sd[b + "attn.qkv.weight"], 3)  # torch rows [q; k; v], each [out, in]
        bs = np.split(sd[b + "attn.qkv.bias"], 3)
        for name, w, bias in zip(("query", "key", "value"), ws, bs):
            a[mha + name + "/kernel"] = w.T.reshape(d, h, dh)  # [in, heads, head_dim]
            a[mha + name + "/bias"] = bias.reshape(h, dh)
        a[mha + "out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(h, dh, d)  # [heads, head_dim, out]
        a[mha + "out/bias"] = sd[b + "attn.proj.bias"]
        for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            a[e + f"MlpBlock_3/{dense}/kernel"] = sd[b + f"mlp.{fc}.weight"].T  # [in, out]
            a[e + f"MlpBlock_3/{dense}/bias"] = sd[b + f"mlp.{fc}.bias"]
    if pre_logits is not None:
        a["pre_logits/kernel"], a["pre_logits/bias"] = pre_logits
    a = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in a.items()}
    np.savez(path, **{prefix + k: v for k, v in a.items()})
    return a
