"""FractalDB (tinyvit/fractals.py) and the `fractals` dataset source (tinyvit/data.py): the same images
in two processes, the fill-rate rule, distinct categories, a cache that is checked before it is used,
and the source in finetune and study."""
import csv
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tinyvit import data, finetune, fractals, study

TINY = "fractals:categories=4,instances=8,size=8,seed=3"
TINY_VIT = ["--model", "vit_tiny_patch16_224", "--image-size", "8", "--override",
            "patch_size=4,dim=16,depth=2,num_heads=2,mlp_dim=32"]


def test_the_same_seed_draws_the_same_images_in_two_processes():
    code = ("import hashlib; from tinyvit import fractals; im, lab, _ = fractals.generate(3, 8, 8, seed=5); "
            "print(hashlib.sha256(im.tobytes() + lab.tobytes()).hexdigest())")
    digests = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
               for _ in range(2)]
    images, labels, _ = fractals.generate(3, 8, 8, seed=5)
    assert digests[0] == digests[1] == hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    other, _, _ = fractals.generate(3, 8, 8, seed=6)
    assert not np.array_equal(images, other)


def test_the_fill_rate_rule_keeps_what_covers_the_image_and_nothing_else():
    # Four maps of scale 1/2 tile the square (points everywhere); four maps onto one point cover one pixel.
    tiles = np.array([[0.5, 0, 0, 0.5, e, f, 0.25] for e in (0, 0.5) for f in (0, 0.5)])
    point = np.array([[0.0, 0, 0, 0, 0.3, 0.3, 0.5], [0.0, 0, 0, 0, 0.3, 0.3, 0.5]])
    full, single = fractals.fill_rate([tiles, point], fractals.SEARCH_SIDE, [np.random.default_rng(i) for i in range(2)])
    assert full > fractals.FILL_THRESHOLD and single <= 1 / fractals.SEARCH_SIDE**2
    # search keeps exactly the candidates at or above the threshold, in the order drawn.
    kept = fractals.search(3, seed=1, batch=16)
    candidates = [fractals.sample_system(np.random.default_rng([1, 0, k])) for k in range(400)]
    rates = fractals.fill_rate(candidates, fractals.SEARCH_SIDE, [np.random.default_rng([1, 1, k]) for k in range(400)])
    expected = [c for c, r in zip(candidates, rates) if r >= fractals.FILL_THRESHOLD][:3]
    assert len(expected) == 3 and all(np.array_equal(a, b) for a, b in zip(kept, expected))
    assert (rates < fractals.FILL_THRESHOLD).mean() > 0.5  # the rule rejects most random systems, as the original's does


def test_categories_are_distinct_systems_with_distinct_images():
    images, labels, systems = fractals.generate(4, 8, 16, seed=0)
    assert images.shape == (32, 16, 16) and images.dtype == np.uint8 and labels.tolist() == [c for c in range(4) for _ in range(8)]
    for s in systems:
        assert 2 <= len(s) <= 7 and np.all(np.abs(s[:, :6]) <= 1) and np.isclose(s[:, 6].sum(), 1)
        assert np.allclose(s[:, 6], np.abs(s[:, 0] * s[:, 3] - s[:, 1] * s[:, 2]) / np.abs(s[:, 0] * s[:, 3] - s[:, 1] * s[:, 2]).sum())
    means = images.reshape(4, 8, -1).astype(float).mean(1)
    for i in range(4):
        for j in range(i):
            assert not np.array_equal(systems[i], systems[j]) and np.abs(means[i] - means[j]).mean() > 1
    # Instances 0-3 of a category are the 4 flips of one rendering, as the official renderer saves them.
    first = images[:4]
    assert np.array_equal(first[1], first[0][::-1]) and np.array_equal(first[2], first[0][:, ::-1])
    assert np.array_equal(first[3], first[0][::-1, ::-1]) and (images > 0).mean() > 0.05


def test_the_source_splits_renderings_and_its_cache_is_checked(tmp_path, monkeypatch):
    splits = data.load_splits(TINY, tmp_path)
    npz, record = tmp_path / "fractals" / "fractals-c4-i8-s8-seed3.npz", tmp_path / "fractals" / "fractals-c4-i8-s8-seed3.json"
    assert json.loads(record.read_text())["sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    assert len(splits.classes) == 4 and (len(splits.train), len(splits.val)) == (16, 16)  # 1 of 2 renderings each
    assert splits.traits.size == 8 and not splits.traits.flip
    train = {splits.train.images[i].tobytes() for i in range(16)}
    assert not train & {splits.val.images[i].tobytes() for i in range(16)}  # no flip of a training image in val

    monkeypatch.setattr(fractals, "generate", lambda *a, **k: pytest.fail("a good cache is read, not drawn again"))
    again = data.load_splits(TINY, tmp_path)
    assert np.array_equal(again.train.images, splits.train.images)

    good = npz.read_bytes()
    npz.write_bytes(good[:-100])  # truncated
    with pytest.raises(data.DatasetError, match="SHA-256 is not the one its record holds"):
        data.load_splits(TINY, tmp_path)
    npz.write_bytes(good[:500] + bytes([good[500] ^ 1]) + good[501:])  # one bit changed
    with pytest.raises(data.DatasetError, match="truncated or changed"):
        data.load_splits(TINY, tmp_path)
    npz.write_bytes(good)
    record.write_text(record.read_text().replace('"instances": 8', '"instances": 12'))
    with pytest.raises(data.DatasetError, match="not the .* asked for"):
        data.load_splits(TINY, tmp_path)
    record.unlink()
    with pytest.raises(data.DatasetError, match="without a readable record"):
        data.load_splits(TINY, tmp_path)
    assert npz.read_bytes() == good  # refused, never overwritten


@pytest.mark.parametrize("name, message", [
    ("fractals:classes=4", "KEY=INTEGER with KEY one of categories"),
    ("fractals:size=x", "KEY=INTEGER"),
    ("fractals:instances=10", "a multiple of 4"),
    ("fractals:", "expected fractals or"),
    ("fractalz", "unknown dataset"),
])
def test_bad_settings_are_one_line(name, message, capsys):
    with pytest.raises(SystemExit):
        finetune.parse_args(["--dataset", name])
    assert message in capsys.readouterr().err


def test_fractals_in_finetune_then_study_fine_tunes_from_it(tmp_path):
    pre = tmp_path / "pre"
    assert finetune.main([*TINY_VIT, "--weights", "none", "--unfreeze", "all", "--dataset", TINY, "--data-dir",
                          str(tmp_path / "data"), "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
                          "--num-workers", "0", "--no-progress", "--out", str(pre)]) == 0
    summary = json.loads((pre / "summary.json").read_text())
    assert summary["dataset"] == TINY and len(summary["classes"]) == 4
    # A study on the fractals themselves, and one on the digits from the fractal run (its cost in the table).
    common = ["--data-dir", str(tmp_path / "data"), "--batch-size", "16", "--num-workers", "0", "--epochs", "1",
              "--lr", "1e-3", "--weights", "none", "--unfreeze", "all"]
    vit = "vit=" + " ".join(TINY_VIT[1:])
    assert study.main(["--out", str(tmp_path / "s1"), "--models", vit, "--train-sizes", "8", "--", "--dataset", TINY, *common]) == 0
    assert list(csv.DictReader((tmp_path / "s1" / "results.csv").open()))[0]["train_size"] == "8"
    assert study.main(["--out", str(tmp_path / "s2"), "--models", f"{vit} --weights {pre} --unfreeze last",
                       "--train-sizes", "20", "--", "--dataset", "digits", *common, "--limit-val", "32"]) == 0
    row = list(csv.DictReader((tmp_path / "s2" / "results.csv").open()))[0]
    assert float(row["pretrain_val_acc"]) == round(summary["final"]["val_acc"], 6) and int(row["pretrain_steps"]) == 4
    seconds = sum(json.loads(line)["seconds"] for line in (pre / "metrics.jsonl").read_text().splitlines())
    assert float(row["pretrain_seconds"]) == round(seconds, 1)


def test_mae_on_fractals_then_the_last_block_on_the_digits_keeps_the_encoder(tmp_path):
    """`make transfer-mae` in small: MAE on the fractals (no labels), then `--unfreeze last` on the
    digits from that encoder, through the study (its pretraining steps in the table); the frozen blocks
    end as the encoder left them."""
    from safetensors.torch import load_file

    from tinyvit import pretrain

    pre = tmp_path / "mae"
    assert pretrain.main(["--method", "mae", *TINY_VIT, "--dataset", TINY, "--data-dir", str(tmp_path / "data"),
                          "--epochs", "2", "--batch-size", "8", "--decoder-dim", "16", "--decoder-depth", "1",
                          "--decoder-heads", "2", "--num-workers", "0", "--no-progress", "--out", str(pre)]) == 0
    vit = "vit=" + " ".join(TINY_VIT[1:] + ["--override", "fc_norm=True"])
    assert study.main(["--out", str(tmp_path / "s"), "--models", f"{vit} --weights {pre} --unfreeze last",
                       "--train-sizes", "20", "--", "--dataset", "digits", "--batch-size", "16", "--num-workers", "0",
                       "--epochs", "1", "--lr", "1e-3", "--recipe", "none", "--no-augment", "--limit-val", "32"]) == 0
    row = list(csv.DictReader((tmp_path / "s" / "results.csv").open()))[0]
    summary = json.loads((pre / "summary.json").read_text())
    assert summary["method"] == "mae" and int(row["pretrain_steps"]) == summary["steps"] == 2 * summary["train_images"] // 8
    encoder = load_file(pre / "model.safetensors")
    tuned = load_file(tmp_path / "s" / row["run"] / "model.safetensors")
    frozen = [k for k in encoder if k.startswith(("blocks.0.", "patch_embed.", "pos_embed"))]
    assert frozen and all(torch.equal(encoder[k], tuned[k]) for k in frozen)
    last = [k for k in encoder if k.startswith("blocks.1.") and k.endswith("weight")]
    assert any(not torch.equal(encoder[k], tuned[k]) for k in last)  # the last block trained
