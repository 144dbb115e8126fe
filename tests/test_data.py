"""tinyvit.data: the datasets (synthetic, ImageFolder, CIFAR in torchvision's format) and the
checkpoint-driven transforms, with the errors a user meets first."""
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from tinyvit import data
from tinyvit.preprocess import HALF, IMAGENET_MEAN, IMAGENET_STD, Preprocess


def test_synthetic_is_deterministic_balanced_and_seed_dependent():
    a, b, c = data.Synthetic(30, seed=0), data.Synthetic(30, seed=0), data.Synthetic(30, seed=1)
    img, label = a[7]
    assert img.size == (32, 32) and img.mode == "RGB" and label == 7
    assert np.array_equal(np.asarray(img), np.asarray(b[7][0]))
    assert not np.array_equal(np.asarray(img), np.asarray(c[7][0]))
    assert [a[i][1] for i in range(30)] == [i % 10 for i in range(30)]
    with pytest.raises(IndexError):
        a[30]


def test_synthetic_classes_differ_in_colour_and_orientation():
    ds = data.Synthetic(100)
    for i in range(100):
        img, label = ds[i]
        g = np.asarray(img, dtype=np.float64).mean(axis=2)  # [H, W] grey
        down, across = g.mean(axis=1).std(), g.mean(axis=0).std()  # profiles along y and along x
        if label % 2 == 0:  # horizontal stripes: brightness changes from row to row only
            assert down > 2 * across, (i, down, across)
        else:
            assert across > 2 * down, (i, down, across)
    mean_rgb = lambda c: np.mean([np.asarray(ds[i][0], dtype=np.float64).mean(axis=(0, 1)) for i in range(c, 100, 10)], axis=0)  # noqa: E731
    red, green, blue = mean_rgb(0), mean_rgb(4), mean_rgb(6)
    assert red.argmax() == 0 and green.argmax() == 1 and blue.argmax() == 2


def write_image(path, colour=(200, 30, 30), size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def make_folder(root, train, val, split="val"):
    for name, counts in (("train", train), (split, val)):
        for cls, n in counts.items():
            (root / name / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_image(root / name / cls / f"{i}.png")
    return root


def test_image_folder_val_uses_the_training_class_indices(tmp_path):
    root = make_folder(tmp_path, {"ant": 2, "bee": 1, "cat": 3}, {"bee": 1, "cat": 2}, split="test")
    splits = data.load_splits("imagefolder", root)
    assert splits.classes == ["ant", "bee", "cat"] and not splits.low_res
    assert [y for _, y in splits.train.samples] == [0, 0, 1, 2, 2, 2]
    # val/ has no "ant" folder: "cat" must still be label 2, not 1 as a per-folder listing would say.
    assert [y for _, y in splits.val.samples] == [1, 2, 2]
    img, y = splits.val[0]
    assert img.mode == "RGB" and y == 1


@pytest.mark.parametrize("layout, message", [
    (None, "no such directory"),
    ({}, "no train/ folder"),
    ({"train/a/0.png": 1}, "no val/ or test/ folder"),
    ({"train/a/0.png": 1, "train/b/": 0, "val/a/0.png": 1}, "empty class folders"),
    ({"train/a/0.png": 1, "val/a/0.png": 1, "val/zebra/0.png": 1}, r"class folders \['zebra'\]"),
    ({"train/": 0, "val/a/0.png": 1}, "no class folders"),
])
def test_image_folder_errors_name_the_problem(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout is not None:
        root.mkdir()
        for rel in layout:
            if rel.endswith("/"):
                (root / rel).mkdir(parents=True, exist_ok=True)
            else:
                write_image(root / rel)
    with pytest.raises(data.DatasetError, match=message) as err:
        data.load_splits("imagefolder", root)
    if message == "empty class folders":
        assert str(root / "train" / "b") in str(err.value)


def test_corrupt_image_error_names_the_file(tmp_path):
    root = make_folder(tmp_path, {"a": 1}, {"a": 1})
    bad = root / "train" / "a" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    splits = data.load_splits("imagefolder", root)
    index = [p for p, _ in splits.train.samples].index(bad)
    with pytest.raises(data.CorruptImageError, match="broken.jpg: cannot read this image"):
        splits.train[index]


def test_error_message_drops_the_dataloader_worker_traceback():
    wrapped = data.CorruptImageError(
        "Caught CorruptImageError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\ntinyvit.data.CorruptImageError: /d/a.jpg: cannot read this image (OSError: x)'
    )
    assert data.error_message(wrapped) == "/d/a.jpg: cannot read this image (OSError: x)"
    assert data.error_message(data.DatasetError("plain")) == "plain"


def write_cifar10(root, per_batch=4):
    """A tiny CIFAR-10 in torchvision's on-disk layout: pickled dicts of uint8 rows [N, 3*32*32]."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    batches = {}
    for i, name in enumerate(names):
        labels = [(i + j) % 10 for j in range(per_batch)]
        batch = {"data": rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8), "labels": labels}
        batches[name] = batch
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": classes}, f)
    return batches, classes


def test_cifar_in_torchvision_format(tmp_path, monkeypatch):
    import torchvision

    # Our files are not the real ones, so their md5 cannot match: skip torchvision's check (test only).
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)  # batches.meta
    batches, classes = write_cifar10(tmp_path)
    splits = data.load_splits("cifar10", tmp_path)
    assert splits.classes == classes and splits.low_res
    assert len(splits.train) == 20 and len(splits.val) == 4
    img, label = splits.val[1]
    expected = batches["test_batch"]["data"][1].reshape(3, 32, 32).transpose(1, 2, 0)  # CHW rows -> HWC
    assert np.array_equal(np.asarray(img), expected) and label == batches["test_batch"]["labels"][1]


def test_limit_is_a_fixed_random_subset():
    ds = data.Synthetic(100)
    a, b = data.limit(ds, 20, seed=3), data.limit(ds, 20, seed=3)
    assert len(a) == 20 and a.indices == b.indices and a.indices != list(range(20))
    assert len({a[i][1] for i in range(20)}) > 3  # not only the first classes
    assert data.limit(ds, None, 0) is ds and data.limit(ds, 500, 0) is ds
    with pytest.raises(data.DatasetError):
        data.limit(ds, 0, 0)


def test_low_res_transforms_upsample_and_normalise_with_the_checkpoint_stats():
    pre = Preprocess(48, HALF, HALF, "bicubic", 55)
    train_tf, eval_tf = data.transforms(pre, low_res=True, augment=False)
    assert train_tf is eval_tf
    img = Image.new("RGB", (32, 32), (255, 0, 128))
    x = eval_tf(img)
    assert x.shape == (3, 48, 48)  # straight to the square: no crop for 32-pixel sources
    torch.testing.assert_close(x[:, 20, 20], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]))
    x = data.transforms(Preprocess(48, IMAGENET_MEAN, IMAGENET_STD, "bilinear", 55), True, False)[1](img)
    torch.testing.assert_close(x[0, 0, 0], torch.tensor((1 - 0.485) / 0.229))


def test_photo_transforms_follow_the_checkpoint_recipe():
    pre = Preprocess(32, IMAGENET_MEAN, IMAGENET_STD, "bilinear", 40)
    train_tf, eval_tf = data.transforms(pre, low_res=False, augment=True)
    img = Image.new("RGB", (80, 60), (10, 20, 30))
    assert eval_tf(img).shape == (3, 32, 32) and train_tf(img).shape == (3, 32, 32)


def test_augmentation_is_seeded_per_sample_and_epoch_and_leaves_the_global_rng_alone():
    pre = Preprocess(32, HALF, HALF, "bilinear", None)
    train_tf, _ = data.transforms(pre, low_res=True, augment=True)
    ds = data.Transformed(data.Synthetic(10), train_tf, seed=0)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = ds[(3, 1)][0], ds[(3, 1)][0]
    assert torch.equal(a, b)  # same sample, same epoch: same crop and flip, in any worker
    assert torch.equal(torch.get_rng_state(), state)
    epochs = [ds[(3, e)][0] for e in range(2, 8)]
    assert any(not torch.equal(a, x) for x in epochs)  # other epochs draw other crops
    other_seed = data.Transformed(data.Synthetic(10), train_tf, seed=1)[(3, 1)][0]
    assert not torch.equal(a, other_seed)


def test_finetune_end_to_end_on_a_cifar_folder(tmp_path, monkeypatch):
    import torchvision

    from tinyvit import finetune

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    _, classes = write_cifar10(tmp_path / "cifar")
    out = tmp_path / "run"
    assert finetune.main([
        "--model", "vit_tiny_patch16_224", "--weights", "none", "--image-size", "32",
        "--override", "patch_size=8,dim=32,depth=2,num_heads=2,mlp_dim=64", "--dataset", "cifar10",
        "--data-dir", str(tmp_path / "cifar"), "--epochs", "2", "--batch-size", "8", "--num-workers", "0",
        "--no-progress", "--out", str(out),
    ]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["train_images"] == 20 and rows[-1]["val_images"] == 4
    assert json.loads((out / "classes.json").read_text()) == classes
