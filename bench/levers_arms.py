"""What a training step of each levers-study ViT arm costs against the plain ViT (issue 36).

    python -m bench.levers_arms                 # 15 kept rounds of 10 steps per arm
    python -m bench.levers_arms --pairs 3 --steps 2   # a quick look

`make levers` ran its arms one after another in one process (tinyvit.study plans model by model),
and its seconds per ViT run rose from about 32 (the plain ViT, runs 13-24) to about 37 (the conv
stem, runs 49-60): read in run order, that looked like a study slowing down as it goes. This measures
the other reading, that the later arms are dearer models: one optimizer step of the study's own
Trainer (the digits, batch 128, the scratch recipe's batched augmentation), for each arm's flags,
in one process. Rounds alternate the arms (the order rotating), the first rounds are warm-up, and
each kept round gives one ratio t(arm) / t(plain ViT); the median of those ratios, with quartiles and
range, is the result (bench/cpu.py's method). `vit_distilled` is the plain ViT distilled from a
ResNet-18 at 32 px (the study's teacher, with random weights: its cost is the same), which runs on
every augmented batch.

One more side, `vit_explicit`, is the plain ViT with its attention computed explicitly,
softmax(q kᵀ · scale) v as LSA computes it (without LSA's mask and learned scale), in place of
F.scaled_dot_product_attention: what the plain arms would save on this CPU with the explicit path.

Written to bench/results/cpu/levers-arms.json, or levers-arms-threads1.json with --threads 1 (each
run of `make levers` is a one-thread process).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from bench.cpu import RESULTS, environment, loop_step, loop_trainer, rounds

# The levers study's ViT (Makefile LEVERS_VIT) on the digits with the demo's recipe (DIGITS).
VIT = ["--model", "vit_tiny_patch16_224", "--image-size", "16", "--dataset", "digits", "--recipe", "scratch",
       "--mixup", "0", "--cutmix", "0", "--batch-size", "128", "--num-workers", "0", "--no-progress",
       "--device", "cpu", "--epochs", "55"]
BASE = "patch_size=4,dim=64,depth=6,num_heads=4,mlp_dim=256,pool=mean"
ARMS = {  # the Makefile's arms, with random weights in place of the MAE encoders (the same model)
    "vit": [],
    "vit_mae": [",fc_norm=True", "--layer-decay", "0.75"],
    "vit_spt_lsa": [",patch_embed=spt,lsa=True"],
    "vit_conv_stem": [",patch_embed=conv_stem"],
    "vit_mae_lsa": [",lsa=True,fc_norm=True", "--layer-decay", "0.75"],
}


def argv_of(arm: str) -> list:
    extra = ARMS[arm]
    override = BASE + (extra[0] if extra and extra[0].startswith(",") else "")
    return [*VIT, "--override", override, *[a for a in extra if not a.startswith(",")]]


def explicit_attention(trainer) -> None:
    """The plain ViT's attention modules of `trainer` made to attend explicitly (the side vit_explicit)."""
    from tinyvit.vit import Attention, LocalitySelfAttention

    for m in trainer.train_net.modules():
        if isinstance(m, Attention) and not isinstance(m, LocalitySelfAttention):
            m.attend = lambda q, k, v, attn_mask=None, is_causal=False, m=m: m.probabilities(q, k) @ v


def random_teacher(directory) -> str:
    """A ResNet-18 for the digits at 32 px, as the study's resnet18 runs save it, with random weights."""
    from tinyvit import save_pretrained
    from tinyvit.presets import preset_model

    save_pretrained(preset_model("resnet18", num_classes=10, image_size=32), directory)
    return str(directory)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.levers_arms", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=15, help="kept rounds (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="rounds not kept (default 3)")
    p.add_argument("--steps", type=int, default=10, help="training steps per arm per round (default 10)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    from tinyvit import finetune

    sides = {arm: loop_step(loop_trainer(finetune.parse_args(argv_of(arm))[0]), args.steps) for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        teacher = ["--teacher", random_teacher(Path(tmp) / "resnet18")]
        sides["vit_distilled"] = loop_step(loop_trainer(finetune.parse_args(argv_of("vit") + teacher)[0]), args.steps)
    explicit = loop_trainer(finetune.parse_args(argv_of("vit"))[0])
    explicit_attention(explicit)
    sides["vit_explicit"] = loop_step(explicit, args.steps)
    measured = rounds(sides, "vit", args.pairs, args.warmup)
    cost = {arm: dict(ms=s["ms"], cost=1 / s["speedup"], cost_q1=1 / s["speedup_q3"], cost_q3=1 / s["speedup_q1"],
                      cost_min=1 / s["speedup_max"], cost_max=1 / s["speedup_min"]) for arm, s in measured.items()}
    result = {"case": "levers-arm-step", "argv": {arm: argv_of(arm) for arm in ARMS},
              "vit_distilled": "argv of vit, --teacher a random ResNet-18 at 32 px (random_teacher)",
              "vit_explicit": "argv of vit, attention computed explicitly (explicit_attention)", "steps_per_side": args.steps,
              "pairs": args.pairs, "warmup": args.warmup, "arms": cost, "environment": environment(args.threads),
              "load_before": load_before, "load_after": os.getloadavg()[0]}
    path = RESULTS.parent / ("levers-arms.json" if args.threads == 2 else f"levers-arms-threads{args.threads}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"one training step (batch 128) of each levers arm, {args.steps} steps per arm and round, {args.pairs} rounds; "
          f"cost against the plain ViT, median (quartiles; range):")
    for arm, c in cost.items():
        print(f"  {arm:15s} {c['ms'] / args.steps:6.1f} ms/step  {c['cost']:.3f} ({c['cost_q1']:.3f}-{c['cost_q3']:.3f}; "
              f"{c['cost_min']:.3f}-{c['cost_max']:.3f})")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
