"""The last block for the head's tokens only (VisionTransformer.forward_from): an exact rewrite.

With class-token pooling the classifier reads token 0 of the final norm (DeiT distilled: 0 and 1), so
`forward` runs the last block's queries, projection, norm2 and MLP for those tokens alone, against the
keys and values of every token. Logits and every gradient must equal the full computation
(forward_features + forward_head) within fp32 rounding; mean pooling keeps the full path.
Also here: set_grad_checkpointing (same numbers), and the FLOP counter in tinyvit/flops.py.
"""
import pytest
import torch

from tinyvit import ResNet, ResNetConfig, VisionTransformer, ViTConfig, freeze
from tinyvit.flops import block_flops, hooked_flops, model_flops, suffix_flops, vit_flops


def tiny(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    cfg = dict(image_size=32, patch_size=8, dim=48, depth=3, num_heads=3, mlp_dim=96, num_classes=7)
    model = VisionTransformer(ViTConfig(**{**cfg, **kw}))
    with torch.no_grad():  # away from the init's zero biases / unit norms, so every parameter matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def full_forward(model, x):
    return model.forward_head(model.forward_features(x))


def logits_and_grads(model, x, forward):
    x = x.clone().requires_grad_()
    model.zero_grad()
    out = forward(model, x)
    out = out if isinstance(out, tuple) else (out,)
    loss = sum((o * torch.linspace(-1, 1, o.shape[-1])).sum() for o in out)  # every logit matters
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads, x.grad.clone()


CASES = {
    "plain": dict(),
    "distilled": dict(distilled=True),
    "pre_logits": dict(pre_logits=24),
    "sincos_linear": dict(pos_embed="sincos", patch_embed="linear"),
}


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", CASES)
def test_logits_and_every_gradient_equal_the_full_computation(case, training):
    model = tiny(**CASES[case]).train(training)
    x = torch.randn(3, 3, 32, 32)
    fast, fast_grads, fast_dx = logits_and_grads(model, x, lambda m, x: m(x))
    full, full_grads, full_dx = logits_and_grads(model, x, full_forward)
    for a, b in zip(fast, full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert fast_grads.keys() == full_grads.keys() == {n for n, _ in model.named_parameters()}
    for name in full_grads:
        torch.testing.assert_close(fast_grads[name], full_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(fast_dx, full_dx, rtol=1e-4, atol=1e-6)


def test_resampled_model_after_set_image_size():
    model = tiny(distilled=True).set_image_size(48).eval()
    x = torch.randn(2, 3, 48, 48)
    fast, fast_grads, _ = logits_and_grads(model, x, lambda m, x: m(x))
    full, full_grads, _ = logits_and_grads(model, x, full_forward)
    torch.testing.assert_close(fast[0], full[0], rtol=1e-5, atol=1e-6)
    for name in full_grads:
        torch.testing.assert_close(fast_grads[name], full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_last_block_really_runs_for_the_head_tokens_only():
    seen = {}
    model = tiny(distilled=True).eval()
    model.blocks[-1].mlp.register_forward_hook(lambda m, i, o: seen.update(last=o.shape))
    model.blocks[0].mlp.register_forward_hook(lambda m, i, o: seen.update(first=o.shape))
    model(torch.randn(2, 3, 32, 32))
    assert seen == {"last": (2, 2, 48), "first": (2, 18, 48)}  # 2 prefix tokens; 16 patches + 2


def test_mean_pooling_and_forward_features_keep_every_token():
    model = tiny(pool="mean", class_token=False).eval()
    assert model.head_tokens is None
    seen = []
    model.blocks[-1].mlp.register_forward_hook(lambda m, i, o: seen.append(o.shape) and None)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), full_forward(model, x))
    assert seen[0] == (2, 16, 48)
    cls_model = tiny().eval()
    assert cls_model.forward_features(x).shape == (2, 17, 48)


def test_attention_maps_are_unaffected():
    model = tiny().eval()
    maps = model.attention_maps(torch.randn(2, 3, 32, 32))
    assert [m.shape for m in maps] == [(2, 3, 17, 17)] * 3


def test_reference_backend_gives_the_same_reduced_logits():
    model = tiny(distilled=True).eval()
    x = torch.randn(2, 3, 32, 32)
    fused = model(x)
    model.set_kernels("reference")
    torch.testing.assert_close(model(x), fused, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full_forward(model, x), fused, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["last", "head", 2])
def test_split_trains_with_the_reduced_block_and_matches_the_full_gradients(mode):
    """--unfreeze last/head: the trainable suffix (and, for head, the frozen last block) run the reduced
    block; the trained parameters get the gradients of the full computation."""
    model = tiny(distilled=True)
    split = freeze.apply(model, mode)
    model.train()
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 3, 6])
    feats = split.prefix(x)
    if mode == "head":
        assert feats.shape == (3, 2, 48)  # only the class and distillation tokens come out
    model.zero_grad()
    torch.nn.functional.cross_entropy(split(feats), y).backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    with torch.no_grad():
        tokens = model.run_blocks(model.embed(x), 0, split.frozen_depth)
    model.set_distilled_training()
    cls_logits, dist_logits = model.forward_head(model.norm(model.run_blocks(tokens, split.frozen_depth)))
    torch.nn.functional.cross_entropy((cls_logits + dist_logits) / 2, y).backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert fast.keys() == full.keys() and fast
    for name in full:
        torch.testing.assert_close(fast[name], full[name], rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------
# Gradient checkpointing.
# ---------------------------------------------------------------------------------------------


def test_grad_checkpointing_gives_the_same_gradients():
    model = tiny(distilled=True).train()
    model.set_distilled_training()  # both heads' logits, each checked
    x = torch.randn(2, 3, 32, 32)
    plain, plain_grads, _ = logits_and_grads(model, x, lambda m, x: m(x))
    assert model.set_grad_checkpointing() is None and model.grad_checkpointing  # None, as timm's
    ckpt, ckpt_grads, _ = logits_and_grads(model, x, lambda m, x: m(x))
    for a, b in zip(ckpt, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], rtol=1e-6, atol=1e-7, msg=name)


def test_grad_checkpointing_recomputes_in_training_only():
    model = tiny()
    model.set_grad_checkpointing(True)
    calls = []
    model.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1) and None)
    x = torch.randn(1, 3, 32, 32)
    model.train()
    model(x).sum().backward()
    assert len(calls) == 2  # forward, then the recomputation in the backward
    calls.clear()
    model.eval()
    model(x).sum().backward()
    assert len(calls) == 1
    model.set_grad_checkpointing(False)
    model.train()
    calls.clear()
    model(x).sum().backward()
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------
# FLOPs.
# ---------------------------------------------------------------------------------------------


def test_block_flops_formula():
    n, d, m = 197, 768, 3072
    assert block_flops(n, n, d, m) == 2 * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m)
    assert block_flops(1, n, d, m) == 2 * (2 * d * d + 2 * n * d * d + 2 * n * d + 2 * d * m)
    assert 5.5 < block_flops(n, n, d, m) / block_flops(1, n, d, m) < 6.5  # the "about 6x"


@pytest.mark.parametrize("kw", [dict(), dict(distilled=True, pre_logits=24), dict(pool="mean", class_token=False)])
def test_vit_flops_equal_the_hooked_linear_layers_plus_attention_products(kw):
    model = tiny(**kw)
    cfg = model.cfg
    n = cfg.num_prefix_tokens + cfg.grid_size**2
    x = torch.zeros(1, 3, 32, 32)
    hooked = hooked_flops(model, x, lambda x: full_forward(model, x))
    attention_products = cfg.depth * 4 * n * n * cfg.dim
    assert vit_flops(cfg, reduced_last_block=False) == hooked + attention_products
    reduced = vit_flops(cfg)
    assert model_flops(model) == reduced
    assert (reduced < vit_flops(cfg, reduced_last_block=False)) == (cfg.pool == "cls")


def test_suffix_flops_and_describe():
    model = tiny()
    cfg = model.cfg
    n = 17
    assert suffix_flops(model, cfg.depth) == 2 * 48 * 7  # head only
    assert suffix_flops(model, cfg.depth - 1) == block_flops(1, n, 48, 96) + 2 * 48 * 7
    assert suffix_flops(model, 0) == vit_flops(cfg) - 2 * 16 * (8 * 8 * 3) * 48  # minus the patch embedding
    text = freeze.apply(model, "last").describe()
    assert "trained part:" in text and "forward per image" in text and "with every token" in text


def test_resnet_flops_by_hooks():
    model = ResNet(ResNetConfig(block="bottleneck", layers=(3, 4, 6, 3)))
    # torchvision's documented 4.09 G multiply-adds for ResNet-50 at 224 px, as FLOPs.
    assert abs(model_flops(model, 224) / 2 - 4.09e9) < 0.02e9
    with pytest.raises(ValueError, match="image_size"):
        model_flops(model)
