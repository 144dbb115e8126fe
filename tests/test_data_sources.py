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
    assert splits.low_res and splits.source_size == 8 and not splits.flip
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


def test_digits_transforms_upsample_and_shift_without_flipping():
    splits = data.load_splits("digits")
    pre = Preprocess(16, HALF, HALF, "bilinear", None)
    train_tf, eval_tf = data.transforms(pre, True, True, source_size=splits.source_size, flip=splits.flip)
    img, _ = splits.train[3]
    x = eval_tf(img)
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert "HorizontalFlip" not in repr(train_tf) and "RandomCrop(size=(8, 8), padding=1" in repr(train_tf)
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
