"""The small-data ViT designs (tinyvit/locality.py, vit.py): Shifted Patch Tokenization, Locality
Self-Attention and the convolutional stem, against their papers' definitions and the authors' code,
through save/load, FLOPs and export's refusal."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from tinyvit import load_pretrained, save_pretrained
from tinyvit.flops import hooked_flops, vit_flops
from tinyvit.locality import ConvStem, ShiftedPatchTokenization, conv_stem_widths
from tinyvit.vit import LocalitySelfAttention, ViTConfig, VisionTransformer

SMALL = dict(image_size=16, patch_size=4, dim=32, depth=2, num_heads=4, mlp_dim=64, num_classes=10)


def authors_patch_shifting(x, patch_size):
    """aanna0701/SPT_LSA_ViT models/SPT.py PatchShifting, the '4 diagonal directions' branch."""
    s = int(patch_size * (1 / 2))
    x_pad = F.pad(x, (s, s, s, s))
    x_lu = x_pad[:, :, :-s * 2, :-s * 2]
    x_ru = x_pad[:, :, :-s * 2, s * 2:]
    x_lb = x_pad[:, :, s * 2:, :-s * 2]
    x_rb = x_pad[:, :, s * 2:, s * 2:]
    return torch.cat([x, x_lu, x_ru, x_lb, x_rb], dim=1)


@pytest.mark.parametrize("p", [2, 4, 5])
def test_spt_shapes_and_shifts_match_the_authors(p):
    torch.manual_seed(0)
    spt = ShiftedPatchTokenization(3, 32, p)
    x = torch.randn(2, 3, 4 * p, 4 * p)
    assert torch.equal(spt.shifted(x), authors_patch_shifting(x, p))
    assert spt.shifted(x).shape == (2, 15, 4 * p, 4 * p)
    tokens = spt(x)
    assert tokens.shape == (2, 16, 32)
    assert spt.norm.normalized_shape == (5 * 3 * p * p,) and spt.proj.in_features == 5 * 3 * p * p
    # the authors' merging: Rearrange (p1 p2 c), LayerNorm, Linear
    flat = rearrange(authors_patch_shifting(x, p), "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)
    assert torch.allclose(tokens, spt.proj(F.layer_norm(flat, flat.shape[-1:], spt.norm.weight, spt.norm.bias)))
    # a shifted copy: a pixel moves by half a patch along both axes
    s = p // 2
    one = torch.zeros(1, 1, 4 * p, 4 * p)
    one[0, 0, p, p] = 1
    shifted = ShiftedPatchTokenization(1, 8, p).shifted(one)[0]
    assert shifted[1, p + s, p + s] == 1 and shifted[4, p - s, p - s] == 1


def test_lsa_masks_the_diagonal_and_learns_a_temperature_per_head():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(**SMALL, lsa=True)).eval()
    attn = model.blocks[0].attn
    assert isinstance(attn, LocalitySelfAttention) and attn.scale.requires_grad
    assert attn.scale.shape == (4,) and torch.allclose(attn.scale, torch.full((4,), 8 ** -0.5))
    maps = model.attention_maps(torch.randn(2, 3, 16, 16))
    for m in maps:  # [b, h, n, n]: no token attends to itself; rows still sum to one
        assert m.shape == (2, 4, 17, 17)
        assert torch.diagonal(m, dim1=-2, dim2=-1).abs().max() < 1e-12
        assert torch.allclose(m.sum(-1), torch.ones(2, 4, 17))
    # against the authors' formula: scores x scale[h], diagonal to -987654321, softmax
    x = torch.randn(2, 17, 32)
    q, k, v = rearrange(attn.qkv(x), "b n (three h dh) -> three b h n dh", three=3, h=4)
    with torch.no_grad():
        attn.scale.mul_(torch.tensor([0.5, 1.0, 2.0, 3.0]))
    dots = (q @ k.transpose(-2, -1)) * attn.scale.view(1, 4, 1, 1)
    dots[:, :, torch.arange(17), torch.arange(17)] = -987654321
    expected = attn.proj(rearrange(dots.softmax(-1) @ v, "b h n dh -> b n (h dh)"))
    assert torch.allclose(attn(x), expected, atol=1e-5)
    # the last block for the class token only gives the same class-token output
    tokens = torch.randn(2, 17, 32)
    assert torch.allclose(model.run_last_block(tokens, 1), model.blocks[-1](tokens)[:, :1], atol=1e-5)
    # the temperature trains
    model.train()
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert attn.scale.grad is not None and attn.scale.grad.abs().sum() > 0


def test_conv_stem_is_xiaos_design():
    assert conv_stem_widths(192, 16) == [24, 48, 96, 192]  # ViT_C-1GF
    stem = ConvStem(3, 64, 4)
    kinds = [type(m).__name__ for m in stem.stem]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"] * 2
    convs = [m for m in stem.stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.out_channels) for c in convs] == [((3, 3), (2, 2), 32), ((3, 3), (2, 2), 64)]
    assert stem.proj.kernel_size == (1, 1) and stem.proj.out_channels == 64
    assert stem(torch.randn(2, 3, 16, 16)).shape == (2, 16, 64)
    with pytest.raises(ValueError, match="power of two"):
        ViTConfig(**{**SMALL, "image_size": 18, "patch_size": 6}, patch_embed="conv_stem")


@pytest.mark.parametrize("options", [dict(patch_embed="spt", lsa=True), dict(patch_embed="conv_stem"),
                                     dict(patch_embed="spt", pool="mean", fc_norm=True)])
def test_designs_go_through_save_and_load(tmp_path, options):
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(**SMALL, **options)).eval()
    x = torch.randn(2, 3, 16, 16)
    save_pretrained(model, tmp_path / "m")
    back = load_pretrained(tmp_path / "m")
    assert back.cfg == model.cfg
    assert torch.equal(back(x), model(x))
    # FLOPs: the formula counts the new patch embeddings as the hooks see them
    hooked = hooked_flops(model, x, forward=lambda im: model.patch_embed(im))
    from tinyvit.flops import patch_embed_flops

    assert patch_embed_flops(model.cfg, 16) == hooked
    assert vit_flops(model.cfg) > 0


def test_export_refuses_the_designs_by_name(tmp_path):
    from tinyvit.export import ExportError, export_timm, refusals

    for options, words in ((dict(patch_embed="spt"), "patch_embed='spt'"), (dict(patch_embed="conv_stem"), "patch_embed='conv_stem'"),
                           (dict(lsa=True), "lsa=True")):
        model = VisionTransformer(ViTConfig(**SMALL, **options))
        for to in ("hf", "timm"):
            lines = refusals(model, to)
            assert len(lines) == 1 and words in lines[0], lines
        with pytest.raises(ExportError, match="cannot export to timm"):
            export_timm(model, tmp_path / f"out-{options}")
