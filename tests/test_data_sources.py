"""The real-image sources beyond CIFAR: scikit-learn's digits, MNIST-style IDX files through
torchvision, and Hugging Face `datasets` (a hub name or a save_to_disk folder). All offline: the
digits ship inside scikit-learn, the other files are written here in tmp_path."""
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tinyvit import data
from tinyvit.preprocess import HALF, Preprocess


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_real():
    from sklearn.datasets import load_digits

    splits = data.load_splits("digits")
    assert splits.classes == [str(c) for c in range(10)]
    assert len(splits.train) == 1347 and len(splits.val) == 450
    assert splits.low_res and splits.source_size == 8 and not splits.flip and not splits.shift
    # Stratified: each class keeps its share of the 450 in validation (a quarter of its images).
    raw = load_digits()
    total = np.bincount(raw.target, minlength=10)
    val_counts = np.bincount(splits.val.labels, minlength=10)
    assert np.all(np.abs(val_counts - total * 450 / 1797) <= 1), (val_counts, total)
    assert np.array_equal(val_counts + np.bincount(splits.train.labels, minlength=10), total)
    # The images are the scans, scaled 0..16 -> 0..255: together the two splits are the whole set.
    scaled = np.rint(raw.images * 255 / 16).astype(np.uint8)
    both = np.concatenate([splits.train.images, splits.val.images])
    assert sorted(a.tobytes() for a in both) == sorted(a.tobytes() for a in scaled)
    img, label = splits.train[0]
    assert img.size == (8, 8) and img.mode == "RGB"
    grey = np.asarray(img)[..., 0]
    assert np.array_equal(grey, np.asarray(img)[..., 2]) and np.array_equal(grey, splits.train.images[0])
    matches = [i for i in range(len(scaled)) if np.array_equal(scaled[i], grey)]
    assert matches and raw.target[matches[0]] == label
    assert grey.max() > 200 and grey.min() == 0


def test_digits_fingerprint_identifies_the_split():
    a, b = data.load_splits("digits"), data.load_splits("digits")
    fa = a.train.fingerprint()
    assert fa == b.train.fingerprint() and fa != a.val.fingerprint()
    assert fa["images"] == 1347 and len(fa["sha256"]) == 64 and "sklearn" in fa


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now raises ImportError
    with pytest.raises(data.DatasetError, match=r"pip install 'tinyvit\[data\]'"):
        data.load_splits("digits")


def test_digits_transforms_upsample_without_shifts_or_flips():
    splits = data.load_splits("digits")
    pre = Preprocess(16, HALF, HALF, "bilinear", None)
    train_tf, eval_tf = data.transforms(pre, True, True, source_size=splits.source_size, flip=splits.flip,
                                        shift=splits.shift)
    img, _ = splits.train[3]
    x = eval_tf(img)
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert "HorizontalFlip" not in repr(train_tf) and "RandomCrop" not in repr(train_tf)
    cifar_like, _ = data.transforms(pre, True, True, source_size=8)
    assert "HorizontalFlip" in repr(cifar_like) and "RandomCrop(size=(8, 8), padding=[1, 1, 1, 1]" in repr(cifar_like)
    torch.manual_seed(0)
    assert train_tf(img).shape == (3, 16, 16)


def test_finetune_trains_on_digits(tmp_path):
    from tinyvit import finetune

    out = tmp_path / "run"
    assert finetune.main([
        "--model", "vit_tiny_patch16_224", "--weights", "none", "--image-size", "8", "--unfreeze", "all",
        "--override", "patch_size=2,dim=32,depth=1,num_heads=2,mlp_dim=64", "--dataset", "digits",
        "--epochs", "1", "--batch-size", "32", "--limit-train", "128", "--limit-val", "64", "--lr", "1e-3",
        "--num-workers", "0", "--no-progress", "--out", str(out),
    ]) == 0
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == [str(c) for c in range(10)] and summary["final"]["train_images"] == 128


# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: IDX files in torchvision's raw/ layout, written here.
# ---------------------------------------------------------------------------------------------


def write_idx(path, array: np.ndarray):
    """The IDX format (LeCun's MNIST page): 0, 0, type 0x08 (ubyte), ndim, big-endian sizes, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root, folder, n_train=12, n_val=5):
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("name, folder, flip", [("mnist", "MNIST", False), ("fashion-mnist", "FashionMNIST", True)])
def test_mnist_family_reads_torchvision_raw_files(tmp_path, name, folder, flip):
    arrays = write_mnist(tmp_path, folder)
    splits = data.load_splits(name, tmp_path)
    assert len(splits.train) == 12 and len(splits.val) == 5 and len(splits.classes) == 10
    assert splits.low_res and splits.source_size == 28 and splits.flip == flip
    img, label = splits.val[3]
    assert img.mode == "RGB" and img.size == (28, 28)
    assert np.array_equal(np.asarray(img)[..., 1], arrays["t10k"][0][3]) and label == arrays["t10k"][1][3]
    if name == "fashion-mnist":
        assert splits.classes[0] == "T-shirt/top"
    pre = Preprocess(32, HALF, HALF, "bilinear", None)
    train_tf, _ = data.transforms(pre, True, True, source_size=28, flip=splits.flip)
    assert train_tf(img).shape == (3, 32, 32)


def test_mnist_offline_says_which_files_go_where(tmp_path, monkeypatch):
    import torchvision

    def no_network(self):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    with pytest.raises(data.DatasetError) as e:
        data.load_splits("mnist", tmp_path)
    message = str(e.value)
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path / "MNIST" / "raw") in message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets: a tiny DatasetDict written with save_to_disk.
# ---------------------------------------------------------------------------------------------


def write_hf(path, image_column="img", label_column="label", splits=("train", "test"), class_label=True, size=16):
    import datasets as hf

    rng = np.random.default_rng(1)
    names = ["cat", "dog", "emu"]
    label_feature = hf.ClassLabel(names=names) if class_label else hf.Value("int64")
    features = hf.Features({image_column: hf.Image(), label_column: label_feature})
    parts = {}
    for split in splits:
        images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(6)]
        parts[split] = hf.Dataset.from_dict({image_column: images, label_column: [i % 3 for i in range(6)]}, features=features)
    hf.DatasetDict(parts).save_to_disk(str(path))
    return parts


def test_hf_saved_dataset_with_class_names(tmp_path):
    write_hf(tmp_path / "ds", image_column="image", label_column="fine_label", splits=("train", "validation", "test"))
    splits = data.load_splits(f"hf:{tmp_path / 'ds'}")
    assert splits.classes == ["cat", "dog", "emu"] and len(splits.train) == 6 and len(splits.val) == 6
    assert splits.val.description.endswith(":validation")  # preferred over test
    img, label = splits.train[4]
    assert img.mode == "RGB" and img.size == (16, 16) and label == 1
    assert splits.low_res and splits.source_size == 16
    assert splits.train.fingerprint()["rows"] == 6


def test_hf_plain_integer_labels_and_big_images(tmp_path):
    write_hf(tmp_path / "ds", class_label=False, size=96)
    splits = data.load_splits(f"hf:{tmp_path / 'ds'}")
    assert splits.classes == ["0", "1", "2"] and not splits.low_res


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_column="pixels"), "no image column (looked for img, image; it has pixels, label)"),
    (dict(label_column="target"), "no label column"),
    (dict(splits=("train",)), "no validation split"),
    (dict(splits=("fit", "test")), "no 'train' split"),
])
def test_hf_errors_name_the_problem(tmp_path, kwargs, message):
    write_hf(tmp_path / "ds", **kwargs)
    with pytest.raises(data.DatasetError) as e:
        data.load_splits(f"hf:{tmp_path / 'ds'}")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_hf_through_finetune_and_a_bad_source(tmp_path, capsys):
    from tinyvit import finetune

    write_hf(tmp_path / "ds")
    out = tmp_path / "run"
    assert finetune.main([
        "--model", "resnet18", "--weights", "none", "--image-size", "32", "--unfreeze", "all", "--lr", "1e-3",
        "--dataset", f"hf:{tmp_path / 'ds'}", "--epochs", "1", "--batch-size", "4", "--num-workers", "0",
        "--no-progress", "--out", str(out),
    ]) == 0
    import json

    assert json.loads((out / "classes.json").read_text()) == ["cat", "dog", "emu"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        finetune.main(["--dataset", f"hf:{tmp_path / 'empty'}", "--weights", "none", "--out", str(tmp_path / "r2")])
    assert "cannot load it" in str(e.value) and not (tmp_path / "r2").exists()


def test_unknown_dataset_is_a_usage_error_naming_the_choices(capsys):
    from tinyvit import finetune

    assert finetune.parse_args(["--dataset", "hf:cifar10"])[0].dataset == "hf:cifar10"
    for bad in ("mnist2", "hf:"):
        with pytest.raises(SystemExit) as e:
            finetune.parse_args(["--dataset", bad])
        assert e.value.code == 2
        assert "digits, mnist, fractals, fashion-mnist, fractals:KEY=VALUE,... or hf:NAME_OR_PATH" in capsys.readouterr().err
