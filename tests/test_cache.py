"""tinyvit.cache: the cached rows are the frozen prefix's outputs, in every storage, and training on
them gives the same run as recomputing the prefix every step."""
import json

import numpy as np
import pytest
import torch

from tinyvit import ResNet, ResNetConfig, VisionTransformer, ViTConfig, batches, cache, data, finetune, freeze
from tinyvit.preprocess import HALF, Preprocess

EVAL_TF = data.transforms(Preprocess(32, HALF, HALF, "bilinear", None), low_res=True, augment=False)[1]


def images(n=11):
    return batches.ImageBatches(data.Synthetic(n), EVAL_TF, EVAL_TF, device=torch.device("cpu"))


def models():
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig(image_size=32, patch_size=8, dim=32, depth=3, num_heads=2, mlp_dim=64, num_classes=10))
    resnet = ResNet(ResNetConfig(layers=(1, 1, 1, 1), num_classes=10))
    return [("vit", vit, "last", (17, 32)), ("resnet", resnet, 2, (128, 4, 4))]


@pytest.mark.parametrize("storage", ["memory", "disk"])
@pytest.mark.parametrize("name, model, mode, shape", models(), ids=["vit", "resnet"])
def test_rows_are_the_prefix_outputs(tmp_path, storage, name, model, mode, shape):
    split = freeze.apply(model, mode)
    ds = images()
    built = cache.build(split.prefix, ds, storage=storage, device=torch.device("cpu"), dtype=None,
                        path=tmp_path / "train.npy", batch_size=4)
    assert built.storage == storage and len(built) == 11
    assert tuple(built.features.shape) == (11,) + shape
    if storage == "disk":
        assert isinstance(built.features, np.memmap) and (tmp_path / "train.npy").is_file()
    expected = split.prefix(torch.stack([EVAL_TF(ds.dataset[i][0]) for i in range(11)]))
    feats, labels = built.gather([9, 0, 4], torch.device("cpu"))
    torch.testing.assert_close(feats, expected[[9, 0, 4]])
    assert labels.tolist() == [9, 0, 4]


def test_bf16_rows_round_trip_through_a_memmap(tmp_path):
    _, model, mode, _ = models()[0]
    split = freeze.apply(model, mode)
    kw = dict(device=torch.device("cpu"), dtype=torch.bfloat16, batch_size=5)
    on_disk = cache.build(split.prefix, images(), storage="disk", path=tmp_path / "a.npy", **kw)
    in_memory = cache.build(split.prefix, images(), storage="memory", path=tmp_path / "b.npy", **kw)
    assert on_disk.features.dtype == np.int16  # numpy has no bfloat16: the bit patterns
    a, _ = on_disk.gather(list(range(11)), torch.device("cpu"))
    b, _ = in_memory.gather(list(range(11)), torch.device("cpu"))
    assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a, b)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_chunks_cover_every_row_once(world):
    n, batch = 23, 4
    chunks = [cache._chunks(n, batch, r, world) for r in range(world)]
    assert len({len(c) for c in chunks}) == 1  # every process takes the same number of steps
    rows = sorted(i for c in chunks for span in c for i in span)
    assert rows == list(range(n))


def test_storage_choice():
    cpu = torch.device("cpu")
    assert cache.choose_storage("auto", 1 << 20, cpu, None) == "memory"
    with pytest.raises(ValueError, match="GPU memory"):
        cache.choose_storage("device", 1 << 20, cpu, None)


def test_stopping_midway_returns_nothing(tmp_path):
    _, model, mode, _ = models()[0]
    split = freeze.apply(model, mode)
    assert cache.build(split.prefix, images(), storage="memory", device=torch.device("cpu"), dtype=None,
                       path=tmp_path / "x.npy", batch_size=4, should_stop=lambda: True) is None


TINY_VIT = ["--model", "vit_tiny_patch16_224", "--weights", "none", "--image-size", "32",
            "--override", "patch_size=8,dim=32,depth=3,num_heads=2,mlp_dim=64"]


def run(out, *extra):
    args = TINY_VIT + ["--dataset", "synthetic", "--limit-train", "96", "--limit-val", "40", "--batch-size", "16",
                       "--epochs", "2", "--num-workers", "0", "--no-augment", "--no-progress", "--out", str(out), *extra]
    assert finetune.main(args) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("unfreeze", ["last", "head"])
def test_cached_training_matches_recomputing_the_prefix(tmp_path, unfreeze, capsys):
    cached = run(tmp_path / "cached", "--cache", "memory", "--unfreeze", unfreeze)
    assert "cached train features: 96 x" in capsys.readouterr().out
    plain = run(tmp_path / "plain", "--cache", "off", "--unfreeze", unfreeze)
    assert [r["cached"] for r in cached] == [True, True] and [r["cached"] for r in plain] == [False, False]
    for a, b in zip(cached, plain):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "cached" / "model.safetensors"), load_file(tmp_path / "plain" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    summary = json.loads((tmp_path / "cached" / "summary.json").read_text())
    assert summary["timing"]["cached"] and summary["timing"]["cache_seconds"] > 0 and "speedup" in summary["timing"]


def test_explicit_cache_without_a_frozen_prefix_or_with_augmentation_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="--unfreeze all leaves no frozen prefix"):
        finetune.main(TINY_VIT + ["--dataset", "synthetic", "--unfreeze", "all", "--cache", "memory", "--no-augment",
                                  "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="pass --no-augment"):
        finetune.main(TINY_VIT + ["--dataset", "synthetic", "--cache", "disk", "--out", str(tmp_path / "b")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
