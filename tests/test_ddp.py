"""torchrun with two CPU processes (gloo): DistributedDataParallel over the trainable part gives the
run a single process gives, and only rank 0 writes."""
import json
import os
import subprocess
import sys

import pytest

from tinyvit import finetune

ARGS = ["--model", "vit_tiny_patch16_224", "--weights", "none", "--image-size", "32",
        "--override", "patch_size=8,dim=32,depth=3,num_heads=2,mlp_dim=64",
        "--dataset", "synthetic", "--limit-train", "96", "--limit-val", "40", "--batch-size", "16",
        "--epochs", "2", "--num-workers", "0", "--no-progress", "--device", "cpu"]
TIME_KEYS = {"seconds", "train_seconds", "val_seconds", "cache_seconds", "train_images_per_s"}


def rows(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIME_KEYS} for line in lines]


def test_two_gloo_processes_match_one_process(tmp_path):
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "tinyvit.finetune", *ARGS, "--out", str(ddp_out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Both ranks ran; rank 0 alone logged the run and wrote the outputs, and nothing else is there.
    assert "[rank 1/2] cpu: 8 images per step, 6 steps per epoch" in proc.stdout
    assert proc.stdout.count("unfreeze last:") == 1 and "batch 16 (2 x 8)" in proc.stdout
    assert sorted(p.name for p in ddp_out.iterdir()) == sorted(finetune.OUTPUTS)
    # The validation features were cached by both processes together (an all-gather of their halves).
    assert "cached val features: 40 x [17, 32]" in proc.stdout

    assert finetune.main(ARGS + ["--out", str(single_out), "--cache", "off"]) == 0  # one thread: conftest
    ddp, single = rows(ddp_out), rows(single_out)
    assert [r["epoch"] for r in ddp] == [1, 2] and all(r["val_images"] == 40 for r in ddp)
    # The global batch is the same 16 images split 8 + 8, augmentation is seeded per sample, and the
    # metrics are all-reduced sums: the two runs agree up to float summation order.
    for a, b in zip(ddp, single):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "train_images"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
