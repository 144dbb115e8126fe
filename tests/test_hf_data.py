"""`hf:` datasets in the layouts users have, each written here by the `datasets` library itself
(offline, in tmp_path): save_to_disk folders, parquet files in the hub's layout, an imagefolder,
string labels, Array3D image columns, 16-bit greyscale images, a validation ClassLabel in another
order; and the bad ones refused at set-up in one line (empty split, strings for images, labels
outside the classes, -1), with MNIST's IDX labels checked the same way."""
from __future__ import annotations

import datasets as hf  # the [data] extra, which `make test` installs: a missing one fails, not skips
import numpy as np
import pytest
from PIL import Image

from tinyvit import data

NAMES = ["cat", "dog", "emu"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """load_dataset caches what it reads: keep that inside the test's folder."""
    monkeypatch.setattr(hf.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def images(n, size=16, seed=1):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def load(path):
    return data.load_splits(f"hf:{path}")


def refused(path) -> str:
    with pytest.raises(data.DatasetError) as e:
        load(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    return message


def save(path, **splits):
    hf.DatasetDict(splits).save_to_disk(str(path))
    return path


def split(labels, label_feature=None, image=None, image_feature=None):
    image = images(len(labels)) if image is None else image
    features = hf.Features({"img": image_feature or hf.Image(),
                            "label": label_feature or hf.ClassLabel(names=NAMES)})
    return hf.Dataset.from_dict({"img": image, "label": labels}, features=features)


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------


def test_string_labels_are_class_encoded_in_sorted_order(tmp_path):
    s = hf.Value("string")
    path = save(tmp_path / "ds", train=split(["emu", "cat", "dog", "cat"], s), test=split(["dog", "emu"], s))
    splits = load(path)
    assert splits.classes == ["cat", "dog", "emu"]
    assert [splits.train[i][1] for i in range(4)] == [2, 0, 1, 0] and [splits.val[i][1] for i in range(2)] == [1, 2]
    assert any("string labels in column 'label', class-encoded in sorted order: cat, dog, emu" in n for n in splits.notes)


def test_parquet_files_in_the_hub_layout(tmp_path):
    """data/<split>-00000-of-00001.parquet, as the hub stores a dataset: load_dataset(path) reads it."""
    folder = tmp_path / "parquet"
    (folder / "data").mkdir(parents=True)
    split([0, 1, 2, 1]).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    split([2, 0]).to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    splits = load(folder)
    assert splits.classes == NAMES and len(splits.train) == 4 and len(splits.val) == 2
    img, label = splits.train[3]
    assert img.mode == "RGB" and img.size == (16, 16) and label == 1


def test_an_imagefolder_layout(tmp_path):
    folder = tmp_path / "folder"
    for part, n in (("train", 2), ("test", 1)):
        for name in ("ant", "bee"):
            (folder / part / name).mkdir(parents=True)
            for i, im in enumerate(images(n, size=20)):
                im.save(folder / part / name / f"{i}.png")
    splits = load(folder)
    assert splits.classes == ["ant", "bee"] and len(splits.train) == 4 and len(splits.val) == 2
    assert sorted(splits.train[i][1] for i in range(4)) == [0, 0, 1, 1]
    assert splits.train[0][0].size == (20, 20)


def test_array3d_image_columns_hwc_uint8_and_chw_float(tmp_path):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
    chw = rng.random((2, 3, 12, 12), dtype=np.float32)  # intensities in [0, 1], channels first
    path = save(tmp_path / "ds",
                train=split([0, 1, 2], image=list(hwc), image_feature=hf.Array3D((12, 12, 3), "uint8")),
                test=split([1, 0], image=list(chw), image_feature=hf.Array3D((3, 12, 12), "float32")))
    splits = load(path)
    img, label = splits.train[1]
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), hwc[1]) and label == 1
    img, _ = splits.val[0]
    expected = np.rint(np.moveaxis(chw[0], 0, -1).astype(np.float64) * 255).astype(np.uint8)
    assert np.abs(np.asarray(img).astype(int) - expected).max() <= 1
    assert splits.low_res and splits.source_size == 12


def test_16_bit_greyscale_images_are_scaled_not_clipped(tmp_path):
    grey = np.full((16, 16), 32896, dtype=np.uint16)  # half of 65535: 128 in 8 bits, not white
    im = Image.fromarray(grey)
    assert im.mode.startswith("I")
    path = save(tmp_path / "ds", train=split([0, 1], image=[im, im]), test=split([1], image=[im]))
    img, _ = load(path).train[0]
    assert np.asarray(img).max() == np.asarray(img).min() == 128


def test_validation_class_names_in_another_order_are_remapped_by_name(tmp_path):
    train = split([0, 1, 2])  # cat, dog, emu
    val = split([0, 1, 2], hf.ClassLabel(names=["emu", "cat", "dog"]))
    splits = load(save(tmp_path / "ds", train=train, test=val))
    assert splits.classes == NAMES
    assert [splits.val[i][1] for i in range(3)] == [2, 0, 1]  # emu, cat, dog by name
    assert any("another order" in n for n in splits.notes)
    extra = split([0, 1], hf.ClassLabel(names=["cat", "yak"]))
    assert "classes ['yak'] do not exist in 'train'" in refused(save(tmp_path / "extra", train=train, test=extra))


def test_small_images_flip_and_shift_by_default_and_the_run_can_say_otherwise(tmp_path, monkeypatch):
    from tinyvit import finetune

    splits = load(save(tmp_path / "ds", train=split([0, 1, 2, 0]), test=split([1, 2])))
    assert splits.flip and splits.shift  # the documented default: data.HF_SMALL, CIFAR's
    from tinyvit import trainer

    seen = []
    real = trainer.BatchAugment  # small images train from one tensor, augmented a batch at a time

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "BatchAugment", spy)
    run = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--unfreeze", "all", "--epochs", "1",
           "--dataset", f"hf:{tmp_path / 'ds'}", "--batch-size", "2", "--num-workers", "0", "--no-progress"]
    assert finetune.main(run + ["--out", str(tmp_path / "default")]) == 0
    assert seen[-1]["flip"] is True and seen[-1]["padding"] > 0
    assert finetune.main(run + ["--no-flip", "--no-shift", "--out", str(tmp_path / "run")]) == 0
    assert seen[-1]["flip"] is False and seen[-1]["padding"] == 0
    assert finetune.parse_args(["--flip"])[0].flip is True and finetune.parse_args([])[0].flip is None


# ---------------------------------------------------------------------------------------------
# Refused at set-up, one line each
# ---------------------------------------------------------------------------------------------


def test_an_empty_train_split(tmp_path):
    path = save(tmp_path / "ds", train=split([]), test=split([0]))
    assert "the 'train' split has no rows" in refused(path)


def test_an_image_column_of_strings(tmp_path):
    strings = split([0, 1], image=["a.png", "b.png"], image_feature=hf.Value("string"))
    path = save(tmp_path / "ds", train=strings, test=strings)
    message = refused(path)
    assert "image column 'img' holds string values" in message and "cast_column('img', datasets.Image())" in message


@pytest.mark.parametrize("train_labels, val_labels, feature, expected", [
    ([0, 1, 2], [0, -1], None, "the 'test' split has label -1 in column 'label' (row 1; 1 such rows), outside "
                               "the 3 classes 0..2 of 'train' (datasets marks unlabelled rows with -1"),
    ([0, 1, 2], [1, 5, 3], hf.Value("int64"), "the 'test' split has label 5 in column 'label' (row 1; 2 such rows)"),
    ([0, -1, 1], [0], hf.Value("int64"), "the 'train' split has label -1"),
    (["cat", "dog"], ["dog", "emu"], hf.Value("string"), "labels ['emu'] in column 'label' that 'train' lacks"),
])
def test_labels_outside_the_classes(tmp_path, train_labels, val_labels, feature, expected):
    path = save(tmp_path / "ds", train=split(train_labels, feature), test=split(val_labels, feature))
    assert expected in refused(path)


def test_a_folder_nothing_reads_names_both_loaders(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.bin").write_bytes(b"\x00\x01")
    message = refused(tmp_path / "junk")
    assert "load_from_disk" in message and "load_dataset" in message


def test_mnist_idx_label_outside_the_classes(tmp_path):
    from test_data_sources import write_idx

    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    for prefix, labels in (("train", np.array([1, 2, 200, 3])), ("t10k", np.array([0, 1]))):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (len(labels), 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    with pytest.raises(data.DatasetError) as e:
        data.load_splits("mnist", tmp_path)
    assert "the training labels file has label 200 (image 2; 1 such), outside the 10 classes 0..9" in str(e.value)
    assert "\n" not in str(e.value)
