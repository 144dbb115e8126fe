"""MAE pretraining steps through the tensor data path against the per-image path (issue 33).

    python -m bench.mae_path                 # the levers study's MAE runs: the digits ViT, batch 64
    python -m bench.mae_path --pairs 5 --steps 2   # a quick look

Before issue 33, `python -m tinyvit.pretrain` fed MAE through per-image transforms (PIL, a DataLoader),
while fine-tuning held a small low-res dataset as one tensor on the device and augmented it a batch
at a time (tinyvit/batches.py). Now both run through tinyvit/trainer.py; this measures one training
step of the same pretraining run both ways, in one process: `data.IN_MEMORY_LIMIT = 0` sends a
run down the per-image path. Rounds alternate the two sides (the order rotating), the first rounds
are warm-up, and each kept round gives one ratio t(per-image) / t(tensor); the median of those
ratios, with quartiles and range, is the result (bench/cpu.py's method). Written to
bench/results/cpu/mae-path.json.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from bench.cpu import RESULTS, environment, loop_step, loop_trainer, rounds

# The levers study's MAE pretraining (Makefile LEVERS_MAE, LEVERS_VIT) on the full digits training split.
ARGV = ["--model", "vit_tiny_patch16_224", "--dataset", "digits", "--image-size", "16", "--override",
        "patch_size=4,dim=64,depth=6,num_heads=4,mlp_dim=256", "--epochs", "100", "--blr", "1.5e-3",
        "--batch-size", "64", "--decoder-dim", "64", "--decoder-depth", "2", "--decoder-heads", "4",
        "--num-workers", "0", "--no-progress", "--device", "cpu"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.mae_path", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=15, help="kept rounds (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="rounds not kept (default 3)")
    p.add_argument("--steps", type=int, default=5, help="training steps per side per round (default 5)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    from tinyvit import pretrain

    cfg = pretrain.parse_args(ARGV)[0]
    tensor, per_image = loop_trainer(cfg, in_memory=True), loop_trainer(cfg, in_memory=False)
    assert type(tensor.train_data).__name__ == "TensorBatches" and type(per_image.train_data).__name__ == "ImageBatches"
    sides = {"per-image": loop_step(per_image, args.steps), "tensor": loop_step(tensor, args.steps)}
    result = {"case": "mae-pretrain-step", "argv": ARGV, "steps_per_side": args.steps, "pairs": args.pairs,
              "warmup": args.warmup, "sides": rounds(sides, "per-image", args.pairs, args.warmup),
              "environment": environment(args.threads), "load_before": load_before, "load_after": os.getloadavg()[0]}
    path = RESULTS.parent / "mae-path.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    s = result["sides"]
    print(f"MAE pretraining, {args.steps} steps of {tensor.batch} images per side and round, {args.pairs} rounds: "
          f"per-image {s['per-image']['ms']:.0f} ms, tensor {s['tensor']['ms']:.0f} ms; tensor path "
          f"{s['tensor']['speedup']:.2f}x as fast (quartiles {s['tensor']['speedup_q1']:.2f}-{s['tensor']['speedup_q3']:.2f}, "
          f"range {s['tensor']['speedup_min']:.2f}-{s['tensor']['speedup_max']:.2f}); wrote {path}")
    return result


if __name__ == "__main__":
    main()
