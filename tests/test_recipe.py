"""tinyvit.recipe: the from-scratch recipe from torchvision's transforms v2, its flags and the bundle."""
import pytest
import torch
from PIL import Image

from tinyvit import finetune, recipe
from tinyvit.preprocess import HALF, Preprocess


def test_scratch_bundle_fills_in_what_was_not_given():
    cfg, given = finetune.parse_args(["--recipe", "scratch"])
    assert (cfg.weights, cfg.unfreeze, cfg.lr) == ("none", "all", 1e-3)
    assert cfg.randaugment and not cfg.trivialaugment
    assert (cfg.mixup, cfg.cutmix, cfg.label_smoothing, cfg.random_erasing) == (0.8, 1.0, 0.1, 0.25)
    # Explicit flags win over the bundle, whichever order they come in.
    cfg, _ = finetune.parse_args(["--mixup", "0", "--recipe", "scratch", "--lr", "3e-4", "--trivialaugment"])
    assert cfg.mixup == 0 and cfg.cutmix == 1.0 and cfg.lr == 3e-4
    assert cfg.trivialaugment and not cfg.randaugment
    # Without the bundle nothing changes.
    cfg, _ = finetune.parse_args([])
    assert not cfg.randaugment and cfg.mixup == 0 and cfg.weights == "official"


@pytest.mark.parametrize("args", [
    ["--mixup", "-1"], ["--label-smoothing", "1"], ["--random-erasing", "x"],
    ["--randaugment", "--trivialaugment"], ["--recipe", "deit3"],
])
def test_bad_recipe_flags_are_usage_errors(args, capsys):
    with pytest.raises(SystemExit) as e:
        finetune.parse_args(args)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "error:" in last and args[0].lstrip("-").split("-")[0] in last


def test_no_augment_contradicts_image_augmentation():
    cfg, _ = finetune.parse_args(["--no-augment", "--mixup", "0.2"])
    with pytest.raises(ValueError, match="--no-augment contradicts"):
        recipe.Recipe.from_config(cfg)
    cfg, _ = finetune.parse_args(["--no-augment", "--label-smoothing", "0.1"])
    assert recipe.Recipe.from_config(cfg).label_smoothing == 0.1  # smoothing needs no augmentation


def test_train_transform_is_torchvision_v2_without_flips_for_digits():
    r = recipe.Recipe(randaugment=True, random_erasing=0.5)
    pre = Preprocess(16, HALF, HALF, "bicubic", None)
    tf = r.train_transform(pre, low_res=True, source_size=8, flip=False, shift=False)
    text = repr(tf)
    assert "RandAugment" in text and "RandomErasing" in text and "Flip" not in text and "RandomCrop" not in text
    assert type(tf).__module__.startswith("torchvision.transforms.v2")
    img = Image.new("RGB", (8, 8), (200, 200, 200))
    torch.manual_seed(0)
    xs = [tf(img) for _ in range(20)]
    assert all(x.shape == (3, 16, 16) and x.dtype == torch.float32 for x in xs)
    assert any(not torch.equal(xs[0], x) for x in xs[1:])  # random
    assert "HorizontalFlip" in repr(r.train_transform(pre, low_res=True, source_size=32, flip=True))
    assert "TrivialAugmentWide" in repr(recipe.Recipe(trivialaugment=True).train_transform(pre, low_res=False))


def test_mixup_cutmix_give_soft_targets_and_the_loss_takes_them():
    torch.manual_seed(0)
    mix = recipe.Recipe(mixup=0.8, cutmix=1.0).batch_transform(10)
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 5])
    mixed, soft = mix(x, y)
    assert mixed.shape == x.shape and soft.shape == (6, 10)
    torch.testing.assert_close(soft.sum(1), torch.ones(6))
    assert (soft > 0).sum(1).max() == 2  # each target is a blend of two classes
    assert recipe.Recipe().batch_transform(10) is None
    # Soft targets and label smoothing in the loss: against a one-hot target it is plain (smoothed) CE.
    logits = torch.randn(6, 10)
    r = recipe.Recipe(label_smoothing=0.1)
    torch.testing.assert_close(r.loss(logits, torch.nn.functional.one_hot(y, 10).float()), r.loss(logits, y))
    plain = torch.nn.functional.cross_entropy(logits, y)
    assert not torch.isclose(r.loss(logits, y), plain)
    assert torch.isclose(recipe.Recipe().loss(logits, y), plain)


def test_finetune_trains_with_the_scratch_recipe(tmp_path):
    out = tmp_path / "run"
    assert finetune.main([
        "--model", "vit_tiny_patch16_224", "--recipe", "scratch", "--image-size", "8",
        "--override", "patch_size=2,dim=32,depth=1,num_heads=2,mlp_dim=64", "--dataset", "digits",
        "--epochs", "2", "--batch-size", "32", "--limit-train", "96", "--limit-val", "64",
        "--num-workers", "0", "--no-progress", "--out", str(out),
    ]) == 0
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["mixup"] == 0.8 and summary["config"]["randaugment"]
    assert all(0 <= r["train_acc"] <= 1 and r["train_loss"] > 0 for r in [summary["final"]])
