"""tinyvit.freeze: each unfreeze mode trains exactly what it says, and frozen modules stay frozen
(weights bitwise, BatchNorm statistics, dropout) through model.train() and real optimizer steps."""
import pytest
import torch

from tinyvit import ResNet, ResNetConfig, VisionTransformer, ViTConfig, freeze




def tiny_vit(**kw):
    torch.manual_seed(0)
    cfg = dict(image_size=32, patch_size=8, dim=64, depth=3, num_heads=2, mlp_dim=128, num_classes=5)
    return VisionTransformer(ViTConfig(**{**cfg, **kw}))


def tiny_resnet():
    torch.manual_seed(0)
    return ResNet(ResNetConfig(block="basic", layers=(1, 1, 1, 1), num_classes=5))


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def names_under(model, *prefixes):
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


VIT_HEAD = ("norm.", "head.")


@pytest.mark.parametrize("mode, expected, frozen_depth", [
    ("head", VIT_HEAD, 3),
    ("0", VIT_HEAD, 3),
    ("last", ("blocks.2.",) + VIT_HEAD, 2),
    ("1", ("blocks.2.",) + VIT_HEAD, 2),
    (2, ("blocks.1.", "blocks.2.") + VIT_HEAD, 1),
    ("3", ("blocks.",) + VIT_HEAD, 0),
])
def test_vit_modes_train_exactly_their_groups(mode, expected, frozen_depth):
    model = tiny_vit()
    split = freeze.apply(model, mode)
    assert trainable_names(model) == names_under(model, *expected)
    assert split.frozen_depth == frozen_depth
    # Even "3" of 3 blocks leaves the embedding frozen; only "all" trains it.
    assert not model.patch_embed.proj.weight.requires_grad and not model.pos_embed.requires_grad


def test_vit_all_trains_everything_and_extra_heads_join_the_head_group():
    model = tiny_vit(distilled=True, pre_logits=32)
    freeze.apply(model, "last")
    assert trainable_names(model) == names_under(model, "blocks.2.", "norm.", "head.", "head_dist.", "pre_logits.")
    assert not model.dist_token.requires_grad and not model.cls_token.requires_grad
    freeze.apply(model, "all")  # applying again starts over
    assert trainable_names(model) == {n for n, _ in model.named_parameters()}


def test_resnet_modes():
    model = tiny_resnet()
    freeze.apply(model, "head")
    assert trainable_names(model) == names_under(model, "fc.")
    freeze.apply(model, "last")
    assert trainable_names(model) == names_under(model, "layer4.", "fc.")
    freeze.apply(model, 3)
    assert trainable_names(model) == names_under(model, "layer2.", "layer3.", "layer4.", "fc.")
    freeze.apply(model, 4)
    assert trainable_names(model) == names_under(model, "layer", "fc.")  # the stem stays frozen
    freeze.apply(model, "all")
    assert trainable_names(model) == {n for n, _ in model.named_parameters()}


def test_bad_modes_are_rejected_by_name():
    with pytest.raises(ValueError, match="only 3 blocks"):
        freeze.apply(tiny_vit(), 4)
    with pytest.raises(ValueError, match="only 4 stages"):
        freeze.apply(tiny_resnet(), "5")
    with pytest.raises(ValueError, match="unfreeze mode 'first'"):
        freeze.parse_mode("first")


def train_steps(split, model, x, y, steps=3):
    opt = torch.optim.AdamW(freeze.param_groups(model, 0.1), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(split(split.prefix(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_resnet_last_keeps_frozen_weights_and_batchnorm_statistics_bitwise():
    model = tiny_resnet()
    split = freeze.apply(model, "last")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # must not put the frozen stages' BatchNorm back into training mode
    assert not model.layer3.training and not model.bn1.training and not model.layer1[0].bn2.training
    assert model.layer4.training and model.layer4[0].bn1.training and model.fc.training
    torch.manual_seed(1)
    train_steps(split, model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    after = model.state_dict()
    for k, v in before.items():
        if k.startswith(("layer4.", "fc.")):
            continue
        assert torch.equal(v, after[k]), f"frozen {k} changed"
    # ... while the trainable stage did train, its BatchNorm statistics included.
    assert not torch.equal(before["layer4.0.bn1.running_mean"], after["layer4.0.bn1.running_mean"])
    assert not torch.equal(before["layer4.0.conv1.weight"], after["layer4.0.conv1.weight"])
    assert not torch.equal(before["fc.weight"], after["fc.weight"])


def test_vit_frozen_blocks_keep_weights_and_their_dropout_stays_off():
    model = tiny_vit(dropout=0.5, drop_path=0.5)
    split = freeze.apply(model, "last")
    model.train()
    x = torch.randn(4, 3, 32, 32)
    # The prefix is deterministic in train mode (its dropout and stochastic depth are off) ...
    assert torch.equal(split.prefix(x), split.prefix(x))
    feats = split.prefix(x)
    # ... while the trainable last block still drops.
    assert not torch.equal(split(feats), split(feats))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(split, model, x, torch.tensor([0, 1, 2, 3]))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.startswith(("blocks.2.", "norm.", "head."))}


@pytest.mark.parametrize("mode", ["head", "last", 2, "all"])
@pytest.mark.parametrize("make", [tiny_vit, lambda: tiny_vit(distilled=True), tiny_resnet])
def test_prefix_then_suffix_is_the_model(make, mode):
    model = make()
    split = freeze.apply(model, mode).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(split(split.prefix(x)), model(x), rtol=0, atol=0)


def test_distilled_heads_are_averaged_in_training_too():
    model = tiny_vit(distilled=True)
    split = freeze.apply(model, "last")
    model.train()
    feats = split.prefix(torch.randn(2, 3, 32, 32))
    split.both_heads = True  # the model's own switch, timm's set_distilled_training
    assert model.distilled_training
    cls_logits, dist_logits = model.forward_head(model.norm(model.blocks[2](feats)))
    split.both_heads = False
    assert not model.distilled_training
    torch.testing.assert_close(split(feats), (cls_logits + dist_logits) / 2)


def test_param_groups_decay_only_trainable_weight_matrices():
    model = tiny_vit()
    freeze.apply(model, "all")
    groups = {g["name"]: g for g in freeze.param_groups(model, 0.05)}
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    assert {"cls_token", "pos_embed", "norm.weight", "norm.bias", "head.bias", "blocks.0.attn.qkv.bias"} <= no_decay
    assert {"head.weight", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"} <= decay
    assert all(not n.endswith("bias") and "norm" not in n for n in decay)
    assert decay | no_decay == {n for n, _ in model.named_parameters()}

    freeze.apply(model, "last")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    got = {names[id(p)] for g in freeze.param_groups(model, 0.05) for p in g["params"]}
    assert got == trainable and "cls_token" not in got


def test_describe_reports_counts_and_groups():
    model = tiny_vit()
    text = freeze.apply(model, "last").describe()
    trainable, total = freeze.count_parameters(model)
    assert f"{trainable:,} of {total:,}" in text
    assert "trainable: blocks.2, norm, head" in text
    assert "frozen (eval mode): patch_embed, pos_drop, blocks.0, blocks.1, cls_token, pos_embed" in text
