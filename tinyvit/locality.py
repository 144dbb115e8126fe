"""Two patch embeddings that give a ViT the locality a CNN has for free, for small datasets.

Selected by `ViTConfig.patch_embed` (tinyvit/vit.py builds them in place of PatchEmbed; both keep a
`proj` as their last layer, as PatchEmbed does). The third small-data design, Locality
Self-Attention, changes the attention itself and lives in vit.py (`LocalitySelfAttention`,
`ViTConfig.lsa`).

**Shifted Patch Tokenization** (Lee, Lee & Song 2021, "Vision Transformer for Small-Size Datasets";
the authors' code, aanna0701/SPT_LSA_ViT `models/SPT.py`, `PatchShifting` and
`ShiftedPatchTokenization(is_pe=True)`): the image is concatenated along channels with its four
diagonal shifts by half a patch (zero padding), so every patch token also sees a half-patch border
of its neighbours; then patches are flattened in (p1 p2 c) order, layer-normalised and projected:

    x [b, c, H, W] -> [x, x shifted by (+s,+s), (+s,-s), (-s,+s), (-s,-s)] [b, 5c, H, W],  s = p // 2
      -> [b, (gh gw), (p1 p2 5c)] -> LayerNorm -> Linear -> [b, (gh gw), d]

The four copies are the authors' order (left-up, right-up, left-bottom, right-bottom: `x_pad` sliced
at offsets (0, 0), (0, 2s), (2s, 0), (2s, 2s)); the LayerNorm has nn.LayerNorm's default eps 1e-5,
as theirs. Deviation: the Linear is initialised as every tinyvit ViT Linear (truncated normal 0.02),
not with the authors' xavier_normal.

**Convolutional stem** (Xiao et al. 2021, "Early Convolutions Help Transformers See Better"): the
patchify convolution is replaced by a stack of 3x3 stride-2 convolutions, each with BatchNorm and
ReLU, then one 1x1 convolution to the width d. A patch of p = 2^n pixels needs n of them; their
widths double up to d (the paper's ViT_C-1GF, d = 192: 24, 48, 96, 192, for p = 16; here
d / 2^(n-1), ..., d / 2, d). The paper also removes one transformer block to keep the FLOPs equal;
here the depth is whatever the config says.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class ShiftedPatchTokenization(nn.Module):
    """x [b, c, H, W] -> tokens [b, (gh gw), d] from the image and its four half-patch diagonal shifts."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size, self.shift = patch_size, patch_size // 2
        patch_dim = 5 * in_channels * patch_size**2
        self.norm = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, dim)

    def shifted(self, x: torch.Tensor) -> torch.Tensor:
        """[b, c, H, W] -> [b, 5c, H, W]: x, then x moved by (+s, +s), (+s, -s), (-s, +s), (-s, -s) (rows, columns)."""
        s, (h, w) = self.shift, x.shape[-2:]
        padded = F.pad(x, (s, s, s, s))
        views = [padded[:, :, dy:dy + h, dx:dx + w] for dy, dx in ((0, 0), (0, 2 * s), (2 * s, 0), (2 * s, 2 * s))]
        return torch.cat([x, *views], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = rearrange(self.shifted(x), "b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)", p1=p, p2=p)
        return self.proj(self.norm(x))


def conv_stem_widths(dim: int, patch_size: int) -> list[int]:
    """Output channels of the 3x3 stride-2 convolutions: log2(patch_size) of them, doubling up to dim."""
    n = int(math.log2(patch_size))
    return [dim // 2 ** (n - 1 - i) for i in range(n)]


def check_conv_stem(dim: int, patch_size: int) -> None:
    n = int(math.log2(patch_size)) if patch_size >= 1 else 0
    if patch_size < 2 or 2**n != patch_size:
        raise ValueError(f"patch_embed='conv_stem' downsamples by 2 per 3x3 convolution: patch_size={patch_size} "
                         f"must be a power of two, at least 2")
    if dim % 2 ** (n - 1):
        raise ValueError(f"patch_embed='conv_stem': its widths double up to dim={dim}, which must be divisible by {2 ** (n - 1)}")


class ConvStem(nn.Module):
    """x [b, c, H, W] -> tokens [b, (H/p W/p), d]: (3x3 conv stride 2, BatchNorm, ReLU) x log2(p), then a 1x1 conv."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        check_conv_stem(dim, patch_size)
        layers, c = [], in_channels
        for width in conv_stem_widths(dim, patch_size):
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c = width
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(self.stem(x)), "b d gh gw -> b (gh gw) d")


def conv_stem_flops(in_channels: int, dim: int, patch_size: int, image_size: int) -> int:
    """Multiply-add x 2 of the stem's convolutions at `image_size` (tinyvit/flops.py's convention)."""
    flops, c, side = 0, in_channels, image_size
    for width in conv_stem_widths(dim, patch_size):
        side = (side + 1) // 2
        flops += 2 * side * side * width * c * 9
        c = width
    return flops + 2 * side * side * dim * c
