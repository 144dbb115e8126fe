"""The Vision Transformer: shapes, variants, equivalences with timm, and the bad-input errors."""
import math

import pytest
import torch
from einops import rearrange

from tinyvit.vit import PatchEmbed, ViTConfig, VisionTransformer, resample_pos_embed, sincos_2d

TINY = dict(image_size=32, patch_size=8, dim=64, depth=2, num_heads=2, mlp_dim=128, num_classes=10)


def tiny(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(**{**TINY, **kw})).eval()


def perturb_(model: torch.nn.Module, scale: float = 0.05) -> None:
    """No LayerNorm left at identity, no bias left at zero, tokens non-zero."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("kw,out", [
    ({}, (3, 10)),
    ({"pool": "mean", "class_token": False}, (3, 10)),
    ({"pool": "mean"}, (3, 10)),
    ({"num_classes": 0}, (3, 64)),
    ({"pre_logits": 48}, (3, 10)),
    ({"pos_embed": "sincos"}, (3, 10)),
    ({"patch_embed": "linear"}, (3, 10)),
    ({"distilled": True}, (3, 10)),
])
def test_forward_shapes(kw, out):
    model = tiny(**kw)
    x = torch.randn(3, 3, 32, 32)
    assert model(x).shape == out
    n = 16 + model.num_prefix_tokens
    assert model.forward_features(x).shape == (3, n, 64)


def test_linear_and_conv_patch_embedding_are_the_same_map():
    cfg = ViTConfig(**TINY)
    conv = PatchEmbed(cfg)
    linear = PatchEmbed(ViTConfig(**{**TINY, "patch_embed": "linear"}))
    linear.load_state_dict(conv.state_dict())  # the 4-D conv kernel is rearranged on load
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(linear(x), conv(x), rtol=1e-5, atol=1e-5)
    # The other flattening order, (c p1 p2), is silently wrong: make sure it would be caught.
    wrong = rearrange(conv.proj.weight, "d c p1 p2 -> d (c p1 p2)")
    with torch.no_grad():
        linear.proj.weight.copy_(wrong)
    assert not torch.allclose(linear(x), conv(x), atol=1e-3)


def test_patch_embedding_matches_explicit_patches():
    model = tiny(patch_embed="linear")
    x = torch.randn(1, 3, 32, 32)
    # patch (row 1, col 2) of the 4 x 4 grid is token 1 * 4 + 2 = 6, flattened as (p1 p2 c)
    patch = x[0, :, 8:16, 16:24]  # [c, p1, p2]
    expected = model.patch_embed.proj(rearrange(patch, "c p1 p2 -> (p1 p2 c)"))
    torch.testing.assert_close(model.patch_embed(x)[0, 6], expected)


def test_full_model_linear_equals_conv():
    conv = tiny()
    perturb_(conv)
    linear = tiny(patch_embed="linear")
    linear.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(linear(x), conv(x), rtol=1e-5, atol=1e-5)


def test_sincos_table_properties():
    table = sincos_2d(grid_size=7, dim=64)
    assert table.shape == (49, 64)
    # every (sin, cos) pair lies on the unit circle: each position has norm sqrt(d / 2)
    torch.testing.assert_close(table.norm(dim=1), torch.full((49,), math.sqrt(32.0)))
    # position (0, 0): sin = 0 and cos = 1 in every frequency
    assert torch.equal(table[0], torch.tensor([0.0] * 16 + [1.0] * 16 + [0.0] * 16 + [1.0] * 16))
    # all positions distinct, and similarity decreases with distance along a row
    assert torch.unique(table, dim=0).shape[0] == 49
    sim = table @ table[0]
    assert sim[0] > sim[1] > sim[2] > sim[3]
    # translation invariance: similarity depends on the offset only
    torch.testing.assert_close(table[8] @ table[9], table[0] @ table[1])


def test_sincos_is_a_buffer_not_a_parameter():
    model = tiny(pos_embed="sincos")
    assert "pos_embed" not in dict(model.named_parameters())
    assert "pos_embed" not in model.state_dict()
    assert torch.equal(model.pos_embed[0, 0], torch.zeros(64))  # the class token has no position
    torch.testing.assert_close(model.pos_embed[0, 1:], sincos_2d(4, 64))


def test_resampling_is_identity_at_the_same_size():
    pe = torch.randn(1, 1 + 16, 64)
    assert resample_pos_embed(pe, 4, num_prefix_tokens=1) is pe
    model = tiny()
    before = model.pos_embed.detach().clone()
    model.set_image_size(32)
    assert torch.equal(model.pos_embed, before)


def test_resampling_keeps_prefix_and_interpolates_grid():
    model = tiny(distilled=True)
    perturb_(model)
    prefix = model.pos_embed[:, :2].detach().clone()
    model.set_image_size(48)
    assert model.pos_embed.shape == (1, 2 + 36, 64)
    assert torch.equal(model.pos_embed[:, :2], prefix)
    assert model.cfg.image_size == 48
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 10)
    # a constant grid stays constant under interpolation
    const = torch.cat([torch.zeros(1, 1, 8), torch.ones(1, 16, 8)], dim=1)
    out = resample_pos_embed(const, 6, num_prefix_tokens=1)
    torch.testing.assert_close(out[:, 1:], torch.ones(1, 36, 8), rtol=1e-5, atol=1e-5)


def test_resampling_rejects_a_non_square_grid():
    with pytest.raises(ValueError, match="not a square grid"):
        resample_pos_embed(torch.randn(1, 1 + 15, 8), 4, num_prefix_tokens=1)


def test_mean_pooling_differs_from_class_token_pooling():
    cls_model = tiny()
    perturb_(cls_model)
    mean_model = tiny(pool="mean")
    mean_model.load_state_dict(cls_model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    feats = cls_model.forward_features(x)
    torch.testing.assert_close(cls_model.forward_head(feats, pre_logits=True), feats[:, 0])
    torch.testing.assert_close(mean_model.forward_head(feats, pre_logits=True), feats[:, 1:].mean(1))
    assert not torch.allclose(cls_model(x), mean_model(x))


def test_distilled_heads_in_train_and_eval():
    """timm's default: the mean of the two heads in train() mode too; both apart only after
    set_distilled_training(True), in training."""
    model = tiny(distilled=True)
    perturb_(model)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    feats = model.forward_features(x)
    expected = (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2
    torch.testing.assert_close(model(x), expected)
    assert not torch.allclose(model.head(feats[:, 0]), model.head_dist(feats[:, 1]))
    model.train()
    torch.testing.assert_close(model(x), expected)
    assert model.set_distilled_training() is None and model.distilled_training
    cls_logits, dist_logits = model(x)
    assert cls_logits.shape == dist_logits.shape == (2, 10)
    torch.testing.assert_close((cls_logits + dist_logits) / 2, expected)
    model.eval()
    torch.testing.assert_close(model(x), expected)  # eval: the mean, whatever the switch


def test_pre_logits_is_tanh_dense():
    model = tiny(pre_logits=48)
    perturb_(model)
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    expected = model.head(torch.tanh(model.pre_logits(feats[:, 0])))
    torch.testing.assert_close(model(x), expected)


def test_attention_maps_are_probabilities_and_match_the_fast_path():
    model = tiny()
    perturb_(model)
    x = torch.randn(2, 3, 32, 32)
    maps = model.attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 17, 17)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 2, 17))
    # the explicit probabilities give the same attention output as the kernel path
    blk = model.blocks[0]
    h = blk.norm1(model.embed(x))
    _, _, v = blk.attn.split_heads(h)
    torch.testing.assert_close(blk.attn.merge_heads(maps[0] @ v), blk.attn(h), rtol=1e-5, atol=1e-5)


def test_kernels_option_switches_every_module():
    model = tiny(kernels="torch")
    assert all(m.kernels == "torch" for m in model.modules() if hasattr(m, "kernels") and m is not model)
    model.set_kernels("auto")
    assert model.blocks[0].attn.kernels == "auto" and model.norm.kernels == "auto"
    model.set_kernels("reference")
    assert model.blocks[0].attn.kernels == "reference" and model.norm.kernels == "reference"
    with pytest.raises(ValueError, match="expected 'auto', 'triton', 'torch' or 'reference'"):
        model.set_kernels("cuda")


def test_gelu_tanh_changes_the_output():
    exact = tiny()
    perturb_(exact, 0.3)
    approx = tiny(act="gelu_tanh")
    approx.load_state_dict(exact.state_dict())
    x = torch.randn(2, 3, 32, 32)
    diff = (exact(x) - approx(x)).abs().max()
    assert 0 < diff < 0.1


def test_dropout_and_drop_path_only_in_training():
    model = tiny(dropout=0.1, drop_path=0.2)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model(x), model(x))  # eval: deterministic
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b)
    assert model.blocks[0].drop_path.p == 0.0 and model.blocks[-1].drop_path.p == pytest.approx(0.2)


def test_reset_classifier():
    model = tiny(distilled=True)
    model.reset_classifier(3)
    model.train()
    model.set_distilled_training(True)
    a, b = model(torch.randn(2, 3, 32, 32))
    assert a.shape == b.shape == (2, 3)
    model.reset_classifier(0)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 64)


@pytest.mark.parametrize("shape,match", [
    ((2, 3, 33, 32), r"expected images of 32x32 pixels .* got 33x32"),
    ((2, 1, 32, 32), r"expected 3 channels, got 1"),
    ((3, 32, 32), r"expected a batch of images \[B, 3, 32, 32\], got a tensor of shape \(3, 32, 32\)"),
])
def test_bad_input_is_named(shape, match):
    with pytest.raises(ValueError, match=match):
        tiny()(torch.randn(*shape))


@pytest.mark.parametrize("kw,match", [
    ({"image_size": 30}, "not a multiple of patch_size"),
    ({"num_heads": 3}, "not divisible by num_heads"),
    ({"pool": "max"}, "ViTConfig.pool='max'"),
    ({"class_token": False}, "pool='cls' needs class_token=True"),
    ({"pos_embed": "sincos", "dim": 66, "num_heads": 2}, "divisible by 4"),
])
def test_bad_config_is_named(kw, match):
    with pytest.raises(ValueError, match=match):
        ViTConfig(**{**TINY, **kw})


@pytest.mark.parametrize("distilled", [False, True])
def test_same_logits_as_timm_with_the_same_weights(distilled):
    pytest.importorskip("timm")
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    cls = VisionTransformerDistilled if distilled else TimmViT
    ref = cls(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=10).eval()
    perturb_(ref)
    model = tiny(distilled=distilled)
    model.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    # and the training outputs of the distilled model, both heads
    if distilled:
        ref.train(), model.train()
        with torch.no_grad():  # timm's default in training: the mean of the heads, as tinyvit's
            torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
        ref.set_distilled_training(True)
        model.set_distilled_training(True)
        with torch.no_grad():
            assert isinstance(model(x), tuple)
            for a, b in zip(model(x), ref(x), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mean_pool_without_class_token_has_no_prefix():
    """Without a class token there are no prefix tokens: positions cover the patch grid only.
    (By default tinyvit, like Google's GAP variant and big_vision, normalises the tokens and then
    pools; fc_norm=True pools and then normalises, as timm's avg-pool ViT: tests/test_export.py.)"""
    model = tiny(pool="mean", class_token=False)
    assert model.num_prefix_tokens == 0 and model.cls_token is None
    assert model.pos_embed.shape == (1, 16, 64)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), model.head(model.forward_features(x).mean(1)))
