"""TokenLearner v1.1 in the ViT: shapes, the weighting by hand, gradients, attention maps, freezing,
saving and loading, and the FLOPs count."""
import pytest
import torch
from einops import einsum

import tinyvit
from tinyvit import freeze
from tinyvit.flops import block_flops, describe_token_learner, token_learner_flops, vit_flops
from tinyvit.token_learner import TokenLearner
from tinyvit.vit import ViTConfig, VisionTransformer

TINY = dict(image_size=32, patch_size=4, dim=32, depth=4, num_heads=2, mlp_dim=64, num_classes=10)  # 64 patches


def tiny(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(**{**TINY, **kw})).eval()


def test_module_is_a_softmax_weighted_sum_of_the_patch_tokens():
    torch.manual_seed(0)
    tl = TokenLearner(dim=16, num_tokens=5, num_prefix_tokens=2).eval()
    x = torch.randn(3, 2 + 49, 16)
    out = tl(x)
    assert out.shape == (3, 2 + 5, 16)
    assert torch.equal(out[:, :2], x[:, :2])  # class and distillation tokens pass untouched
    # By hand: LayerNorm, Linear-GELU-Linear to S logits per position, softmax over the 49 positions.
    patches = x[:, 2:]
    h = torch.nn.functional.layer_norm(patches, (16,), tl.norm.weight, tl.norm.bias, eps=1e-6)
    logits = torch.nn.functional.gelu(h @ tl.mlp.fc1.weight.T + tl.mlp.fc1.bias) @ tl.mlp.fc2.weight.T + tl.mlp.fc2.bias
    w = logits.softmax(dim=1)  # [b, n, s], normalised over n
    expected = einsum(w, patches, "b n s, b n d -> b s d")
    torch.testing.assert_close(out[:, 2:], expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(tl.weights(patches).sum(-1), torch.ones(3, 5))


@pytest.mark.parametrize("kw", [{}, {"distilled": True}, {"pool": "mean", "class_token": False}, {"pool": "mean"}])
def test_forward_shapes_and_token_counts(kw):
    model = tiny(token_learner_tokens=8, **kw)
    p = model.num_prefix_tokens
    assert model.cfg.token_learner_block == 1  # depth 4: after the middle block (index 1)
    x = torch.randn(3, 3, 32, 32)
    assert model(x).shape == (3, 10)
    assert model.forward_features(x).shape == (3, p + 8, 32)
    maps = model.attention_maps(x)
    assert [m.shape[-1] for m in maps] == [p + 64, p + 64, p + 8, p + 8]  # shapes change after block 1
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))


def test_off_by_default_and_placement_is_checked():
    assert tiny().token_learner is None
    model = tiny(token_learner_tokens=4, token_learner_at=3)  # after the last block: a learned pooling
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 1 + 4, 32)
    with pytest.raises(ValueError, match="token_learner_at=4"):
        ViTConfig(**TINY, token_learner_tokens=4, token_learner_at=4)
    with pytest.raises(ValueError, match="token_learner_tokens=-1"):
        ViTConfig(**TINY, token_learner_tokens=-1)


def test_gradients_reach_every_parameter_and_training_lowers_the_loss():
    model = tiny(token_learner_tokens=8).train()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert any(".token_learner." in n for n, _ in model.named_parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_freezing_and_caching_see_the_reduction_in_place():
    model = tiny(token_learner_tokens=8)
    split = freeze.apply(model, "last")  # blocks 0-2 frozen: the TokenLearner (after block 1) with them
    tl = model.blocks[1].token_learner
    assert not any(p.requires_grad for p in tl.parameters())
    x = torch.randn(2, 3, 32, 32)
    feats = split.prefix(x)
    assert feats.shape == (2, 1 + 8, 32)
    torch.testing.assert_close(split(feats), model(x))
    freeze.apply(model, 3)  # blocks 1-3 train: the TokenLearner too
    assert all(p.requires_grad for p in tl.parameters())


def test_save_and_load_round_trip(tmp_path):
    model = tiny(token_learner_tokens=8, token_learner_at=2, distilled=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.preprocess = tinyvit.Preprocess(32, resize_size=None)
    tinyvit.save_pretrained(model, tmp_path / "m")
    loaded = tinyvit.load_pretrained(tmp_path / "m")
    assert loaded.cfg.token_learner_tokens == 8 and loaded.cfg.token_learner_at == 2
    assert "blocks.2.token_learner.mlp.fc2.weight" in loaded.state_dict()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_flops_count():
    cfg = ViTConfig(**TINY)
    n, d, m, c = 64, 32, 64, 10
    per_block = 2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d + 4 * n * d * m
    assert block_flops(n, n, d, m) == per_block
    embed = 2 * 64 * (4 * 4 * 3) * d
    # The last block computes the class token's row only (tinyvit/vit.py, forward_from).
    assert vit_flops(cfg) == embed + 3 * block_flops(65, 65, d, m) + block_flops(1, 65, d, m) + 2 * d * c
    tl = ViTConfig(**TINY, token_learner_tokens=8)
    assert token_learner_flops(64, d, 8) == 2 * 64 * (d * 64 + 64 * 8) + 2 * 8 * 64 * d
    assert vit_flops(tl) == (embed + 2 * block_flops(65, 65, d, m) + block_flops(9, 9, d, m) + block_flops(1, 9, d, m)
                             + token_learner_flops(64, d, 8) + 2 * d * c)
    assert vit_flops(tl) < 0.8 * vit_flops(cfg)  # blocks 2 and 3 on 9 tokens, not 65 (block 3 computes one row either way)
    line = describe_token_learner(tl)
    assert "8 learned tokens after block 1 (of 64 patch tokens)" in line and f"{vit_flops(tl) / 1e6:,.1f} MFLOPs" in line
    # The count agrees with the matmuls torch actually runs (FlopCounterMode counts 2 per multiply-add).
    from torch.utils.flop_counter import FlopCounterMode

    for config in (cfg, tl):
        model = VisionTransformer(config).eval().set_kernels("reference")  # plain matmuls: the counter sees no CPU SDPA
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 3, 32, 32))
        assert counter.get_total_flops() == vit_flops(config)
