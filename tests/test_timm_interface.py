"""timm's model interface on tinyvit's models, judged by timm itself (offline, tiny random models).

What a timm user's code calls: forward_intermediates with every argument timm's takes (output_dict,
attn_mask, is_causal), a distilled DeiT's train()-mode output and set_distilled_training,
reset_classifier(0, ''), set_grad_checkpointing, the attributes (global_pool, head_hidden_size,
embed_dim, has_class_token, feature_info, pretrained_cfg) and what timm's helpers read from a model:
resolve_data_config (pretrained_cfg), create_optimizer_v2 (no_weight_decay, group_matcher).
Each is compared with timm's own model on the same weights where timm has one.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import timm  # the [test] extra, which `make test` installs: a missing one fails, not skips
import torch
from convert_fixtures import perturb
from PIL import Image

from tinyvit import data
from tinyvit import export as ex
from tinyvit.preprocess import HALF, IMAGENET_MEAN, IMAGENET_STD, Preprocess
from tinyvit.resnet import ResNet, ResNetConfig
from tinyvit.vit import ViTConfig, VisionTransformer

TINY = dict(image_size=32, patch_size=8, dim=64, depth=2, num_heads=2, mlp_dim=128, num_classes=10)
X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
PLAIN = Preprocess(32, HALF, HALF, "bicubic", None)


def tiny(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    model = perturb(VisionTransformer(ViTConfig(**{**TINY, **kw})))
    model.preprocess = PLAIN
    return model.eval()


def twin(model):
    """timm's model built from the export's model_args, with the same weights."""
    name, args = ex.timm_model_args(model)
    ref = timm.create_model(name, pretrained=False, num_classes=model.cfg.num_classes, **args).eval()
    ref.load_state_dict(ex.timm_state_dict(model), strict=True)
    return ref


def tiny_resnet() -> ResNet:
    torch.manual_seed(0)
    model = perturb(ResNet(ResNetConfig(block="basic", layers=(1, 1, 1, 1), num_classes=10)))
    model.preprocess = Preprocess(64, IMAGENET_MEAN, IMAGENET_STD, "bilinear", 73)
    return model.eval()


def leaves(out):
    return torch.utils._pytree.tree_leaves(out)


def assert_same(ours, theirs):
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and ours.keys() == theirs.keys()
    assert [t.shape for t in leaves(ours)] == [t.shape for t in leaves(theirs)]
    for a, b in zip(leaves(ours), leaves(theirs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# forward_intermediates and forward_features: every argument timm's take
# ---------------------------------------------------------------------------------------------

CAUSAL = torch.ones(17, 17, dtype=torch.bool).tril()


def masks(n: int) -> dict:
    """A boolean mask (True = attend) and an additive one that hides every key after the 12th."""
    return {"bool": torch.ones(n, n, dtype=torch.bool).tril(),
            "additive": torch.zeros(3, 1, n, n).masked_fill(torch.arange(n) >= 12, float("-inf"))}


@pytest.mark.parametrize("kw", [{}, {"distilled": True}, {"pool": "mean", "class_token": False}])
@pytest.mark.parametrize("call", [
    dict(output_dict=True),
    dict(output_dict=True, return_prefix_tokens=True, indices=[0], output_fmt="NLC"),
    dict(output_dict=True, intermediates_only=True, indices=1, norm=True),
    dict(is_causal=True),
    dict(output_dict=True, is_causal=True, return_prefix_tokens=True),
    dict(attn_mask="bool", indices=[-1], output_fmt="NLC"),
    dict(attn_mask="additive", output_dict=True),
])
def test_forward_intermediates_every_timm_argument(kw, call):
    model = tiny(**kw)
    ref = twin(model)
    n = 16 + model.num_prefix_tokens
    call = dict(call)
    if "attn_mask" in call:
        call["attn_mask"] = masks(n)[call["attn_mask"]]
    with torch.no_grad():
        ours, theirs = model.forward_intermediates(X, **call), ref.forward_intermediates(X, **call)
    assert_same(ours, theirs)
    if call.get("output_dict"):
        assert "image_intermediates" in ours
        assert ("image_features" in ours) != bool(call.get("intermediates_only"))


def test_masked_forward_features_match_timm_and_change_the_tokens():
    model = tiny()
    ref = twin(model)
    with torch.no_grad():
        plain = model.forward_features(X)
        for kwargs in (dict(is_causal=True), dict(attn_mask=CAUSAL)):
            ours = model.forward_features(X, **kwargs)
            torch.testing.assert_close(ours, ref.forward_features(X, **kwargs), rtol=1e-5, atol=1e-5)
            assert not torch.allclose(ours, plain)
        torch.testing.assert_close(model.forward_features(X, is_causal=True), model.forward_features(X, attn_mask=CAUSAL))


# ---------------------------------------------------------------------------------------------
# The distilled DeiT in training, reset_classifier, grad checkpointing
# ---------------------------------------------------------------------------------------------


def test_distilled_train_mode_is_timms_default_and_switch():
    model = tiny(distilled=True).train()
    ref = twin(model).train()
    with torch.no_grad():
        ours, theirs = model(X), ref(X)
        assert isinstance(ours, torch.Tensor) and isinstance(theirs, torch.Tensor)  # the mean of the heads
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        assert model.set_distilled_training(True) is None and ref.set_distilled_training(True) is None
        ours, theirs = model(X), ref(X)
    assert isinstance(ours, tuple) and len(ours) == 2
    assert_same(ours, theirs)
    model.eval()
    assert isinstance(model(X), torch.Tensor)


@pytest.mark.parametrize("kw", [{}, {"distilled": True}, {"pool": "mean", "class_token": False}])
def test_reset_classifier_to_no_pooling_as_timm(kw):
    """reset_classifier(0, ''), as timm's feature extraction (prune_intermediate_layers) calls it."""
    model, ref = tiny(**kw), twin(tiny(**kw))
    model.reset_classifier(0, global_pool="")
    ref.reset_classifier(0, global_pool="")
    assert model.global_pool == ref.global_pool
    with torch.no_grad():
        assert_same(model(X), ref(X))
    if not kw.get("distilled"):
        assert model(X).shape == (3, 16 + model.num_prefix_tokens, 64)  # every token, unpooled
        model.reset_classifier(4, global_pool="avg")
        assert model.global_pool == "avg" and model(X).shape == (3, 4)


def test_reset_classifier_refuses_what_timm_refuses():
    with pytest.raises(ValueError, match="global_pool='max'; expected 'token', 'avg' or ''"):
        tiny().reset_classifier(5, global_pool="max")
    with pytest.raises(ValueError, match="global_pool='token' needs a class token"):
        tiny(pool="mean", class_token=False).reset_classifier(5, global_pool="token")
    with pytest.raises(ValueError, match="global_pool='' with num_classes=3"):
        tiny_resnet().reset_classifier(3, global_pool="")


def test_resnet_no_pooling_grad_checkpointing_and_groups_match_timm():
    model = tiny_resnet()
    ref = timm.create_model("resnet18", layers=[1, 1, 1, 1], num_classes=10).eval()
    ref.load_state_dict(ex.timm_state_dict(model), strict=True)
    x = torch.randn(2, 3, 64, 64)
    assert model.feature_info == [dict(f, module=f["module"].replace("act1", "relu")) for f in ref.feature_info]
    assert model.head_hidden_size == ref.head_hidden_size == 512 and model.global_pool == "avg"
    assert model.group_matcher() == ref.group_matcher() and model.group_matcher(True) == ref.group_matcher(True)
    assert model.pretrained_cfg["first_conv"] == "conv1" and model.pretrained_cfg["classifier"] == "fc"
    headless, ref_headless = tiny_resnet(), ref
    headless.reset_classifier(0, "")
    ref_headless.reset_classifier(0, "")
    with torch.no_grad():
        assert_same(headless(x), ref_headless(x))
    assert headless(x).shape == (2, 512, 2, 2)
    # checkpointed training: the same logits and gradients
    model.train()
    grads = []
    for on in (False, True):
        assert model.set_grad_checkpointing(on) is None
        model.zero_grad()
        with torch.random.fork_rng():
            out = model(x)
        out.square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------
# Attributes timm's code reads
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"distilled": True}, {"pool": "mean", "fc_norm": True}])
def test_attributes_match_timm(kw):
    model = tiny(**kw)
    ref = twin(model)
    for name in ("global_pool", "head_hidden_size", "embed_dim", "has_class_token", "num_prefix_tokens",
                 "num_features", "num_classes"):
        assert getattr(model, name) == getattr(ref, name), name
    assert model.feature_info == ref.feature_info
    assert model.no_weight_decay() == ref.no_weight_decay() - {"reg_token"}
    assert model.default_cfg == model.pretrained_cfg


def test_set_input_size_is_set_image_size():
    model, ref = tiny(), twin(tiny())
    assert model.set_input_size(img_size=(48, 48)) is None
    ref.set_input_size(img_size=(48, 48))
    assert model.cfg.image_size == 48 and model.preprocess.image_size == 48
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    assert model.pretrained_cfg["input_size"] == (3, 48, 48)
    with pytest.raises(ValueError, match="keeps the patch size"):
        model.set_input_size(patch_size=4)
    with pytest.raises(ValueError, match="square images"):
        model.set_input_size(img_size=(48, 32))


# ---------------------------------------------------------------------------------------------
# timm's helpers on tinyvit models
# ---------------------------------------------------------------------------------------------


def digits_like_model() -> VisionTransformer:
    """A 16-px model carrying the evaluation preprocessing a digits run writes (tinyvit.data)."""
    model = tiny(image_size=16, patch_size=4)
    model.preprocess = data.eval_preprocess(Preprocess(16, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "bicubic", 18), low_res=True)
    return model


@pytest.mark.parametrize("pre", [None, Preprocess(32, IMAGENET_MEAN, IMAGENET_STD, "bicubic", 36)])
def test_resolve_data_config_reads_the_models_preprocess(pre):
    from timm.data import create_transform, resolve_data_config

    model = digits_like_model()
    if pre is not None:
        model = tiny()
        model.preprocess = pre
    pre = model.preprocess
    cfg = resolve_data_config(model=model)
    size = pre.image_size
    assert cfg["input_size"] == (3, size, size)
    assert tuple(cfg["mean"]) == pre.mean and tuple(cfg["std"]) == pre.std
    assert cfg["interpolation"] == pre.interpolation
    # timm's eval transform is the run's own
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (45, 40, 3), dtype=np.uint8))
    torch.testing.assert_close(create_transform(**cfg)(image), pre.eval_transform()(image), rtol=0, atol=1e-6)


def test_resolve_data_config_on_a_digits_model_gives_16_px():
    from timm.data import resolve_data_config

    cfg = resolve_data_config(model=digits_like_model())
    assert cfg["input_size"] == (3, 16, 16) and cfg["mean"] == (0.1, 0.2, 0.3) and cfg["std"] == (0.4, 0.5, 0.6)
    assert cfg["crop_pct"] == 1.0  # straight to the square, as the run evaluated


def _groups(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return [({names[id(p)] for p in g["params"]}, g["weight_decay"], g.get("lr_scale", 1.0)) for g in optimizer.param_groups]


@pytest.mark.parametrize("kw", [{}, {"distilled": True}])
def test_create_optimizer_v2_does_not_decay_tokens_norms_or_biases(kw):
    from timm.optim import create_optimizer_v2

    model = tiny(**kw)
    opt = create_optimizer_v2(model, "adamw", weight_decay=0.05)
    decayed = set().union(*[names for names, wd, _ in _groups(opt, model) if wd > 0])
    kept = set().union(*[names for names, wd, _ in _groups(opt, model) if wd == 0])
    assert {"pos_embed", "cls_token", "norm.weight", "norm.bias", "head.bias", "blocks.0.attn.qkv.bias"} <= kept
    assert "dist_token" in kept if kw else "dist_token" not in decayed
    assert decayed == {n for n, p in model.named_parameters() if p.ndim > 1} - {"pos_embed", "cls_token", "dist_token"}


def test_create_optimizer_v2_layer_decay_gives_per_block_scales(caplog):
    from timm.optim import create_optimizer_v2

    model = tiny(depth=3)
    with caplog.at_level(logging.WARNING):
        opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    assert "no effect" not in caplog.text
    scale = {}
    for names, _, s in _groups(opt, model):
        for n in names:
            scale[n] = s
    # stem 0, blocks 1..3, the final norm with the last block, the head after: 0.75 ** (4 - layer)
    assert scale["pos_embed"] == scale["patch_embed.proj.weight"] == pytest.approx(0.75 ** 4)
    for i in range(3):
        assert scale[f"blocks.{i}.mlp.fc1.weight"] == pytest.approx(0.75 ** (3 - i))
    assert scale["norm.weight"] == scale["blocks.2.attn.qkv.weight"] and scale["head.weight"] == 1.0
    # the same groups as timm's own ViT
    ref = twin(model)
    ref_opt = create_optimizer_v2(ref, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    assert sorted((sorted(n), wd, s) for n, wd, s in _groups(opt, model)) == \
        sorted((sorted(n), wd, s) for n, wd, s in _groups(ref_opt, ref))


def test_resnet_layer_decay_and_decay_groups_match_timm(caplog):
    from timm.optim import create_optimizer_v2

    model = tiny_resnet()
    ref = timm.create_model("resnet18", layers=[1, 1, 1, 1], num_classes=10)
    with caplog.at_level(logging.WARNING):
        ours = _groups(create_optimizer_v2(model, "adamw", weight_decay=0.05, layer_decay=0.75), model)
        theirs = _groups(create_optimizer_v2(ref, "adamw", weight_decay=0.05, layer_decay=0.75), ref)
    assert "no effect" not in caplog.text
    assert sorted((sorted(n), wd, s) for n, wd, s in ours) == sorted((sorted(n), wd, s) for n, wd, s in theirs)


def test_fdvit_layer_decay_groups_each_stage(caplog):
    """timm's optimizer factory reads FDViT's group_matcher: the embedding first, one scale per
    stage, the final norm with the last stage (as timm's ViT puts it with the last block), the head
    at full lr, and every parameter in exactly one group."""
    from timm.optim import create_optimizer_v2

    import tinyvit

    model = tinyvit.create_model("fdvit_ti", num_classes=10)
    with caplog.at_level(logging.WARNING):
        groups = _groups(create_optimizer_v2(model, "adamw", weight_decay=0.05, layer_decay=0.5), model)
    assert "no effect" not in caplog.text
    names = [n for ns, _, _ in groups for n in ns]
    assert sorted(names) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    scale = {n: s for ns, _, s in groups for n in ns}
    stages = len(model.stages)
    assert scale["patch_embed.conv.weight"] == pytest.approx(0.5 ** (stages + 1))
    for i in range(stages):
        assert scale[f"stages.{i}.blocks.0.attn.qkv.weight"] == pytest.approx(0.5 ** (stages - i))
    assert scale["norm.weight"] == scale[f"stages.{stages - 1}.blocks.0.attn.qkv.weight"] and scale["head.weight"] == 1.0
