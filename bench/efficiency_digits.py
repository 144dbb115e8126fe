"""Distillation and TokenLearner measured on real data, offline: scikit-learn's digits (1,347 train /
450 val, tinyvit.data), tiny models from scratch, on the CPU.

    python -m bench.efficiency_digits teacher        # ResNet-18 at 32 px, the teacher
    python -m bench.efficiency_digits distill        # tiny DeiT student without a teacher and with hard distillation, seeds 0 and 1
    python -m bench.efficiency_digits soft           # the same student with soft distillation (T = 1)
                                                     # (distill:0, soft:1, ...: one seed per command)
    python -m bench.efficiency_digits token_learner  # tiny ViT at 32 px (64 patches) with and without S = 8
    python -m bench.efficiency_digits report         # the table, from the runs' summary.json files

Each part is a few minutes on two CPU cores. Runs go to runs/efficiency_digits/<name>; the report
also lands in bench/efficiency_digits_cpu.json. Accuracy is the final epoch's (no
selection on the validation split).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path("runs/efficiency_digits")
# Not in bench/results: that folder holds the GPU benchmark files bench.targets reads (newest *.json).
RESULTS = Path(__file__).resolve().parent / "efficiency_digits_cpu.json"
SEEDS = (0, 1)
COMMON = ["--dataset", "digits", "--weights", "none", "--unfreeze", "all", "--batch-size", "64",
          "--num-workers", "0", "--no-progress", "--force"]
TEACHER = ["--model", "resnet18", "--image-size", "32", "--epochs", "15", "--lr", "2e-3"]
# A DeiT-style student: distillation token and head, ViT-Ti's layout shrunk (16 px, 4-px patches: 16 tokens).
STUDENT = ["--model", "deit_tiny_distilled_patch16_224", "--image-size", "16", "--epochs", "30", "--lr", "1e-3",
           "--override", "patch_size=4,dim=64,depth=4,num_heads=4,mlp_dim=128"]
# TokenLearner: 32 px with 4-px patches (64 patch tokens), S = 8 after the middle block (index 1 of 4).
TL_VIT = ["--model", "vit_tiny_patch16_224", "--image-size", "32", "--epochs", "30", "--lr", "1e-3",
          "--override", "patch_size=4,dim=64,depth=4,num_heads=4,mlp_dim=128"]


def run(name: str, args: list) -> None:
    from tinyvit import finetune

    print(f"== {name}", flush=True)
    if finetune.main(COMMON + args + ["--out", str(ROOT / name)]) != 0:
        raise SystemExit(f"{name} failed")


def part(which: str) -> None:
    which, _, only = which.partition(":")  # distill:0 -> seed 0 only
    seeds = [int(only)] if only else SEEDS
    if which == "teacher":
        run("teacher_resnet18", TEACHER)
    elif which == "distill":
        teacher = ["--teacher", str(ROOT / "teacher_resnet18")]
        for seed in seeds:
            s = ["--seed", str(seed)]
            run(f"student_none_s{seed}", STUDENT + s)
            run(f"student_hard_s{seed}", STUDENT + s + teacher + ["--distill", "hard"])
    elif which == "soft":
        for seed in seeds:
            run(f"student_soft_s{seed}", STUDENT + ["--seed", str(seed), "--teacher", str(ROOT / "teacher_resnet18"),
                                                     "--distill", "soft", "--distill-tau", "1"])
    elif which == "token_learner":
        for seed in seeds:
            s = ["--seed", str(seed)]
            run(f"vit_s{seed}", TL_VIT + s)
            run(f"vit_tl8_s{seed}", TL_VIT + s + ["--override", "token_learner_tokens=8"])
    elif which == "report":
        report()
    else:
        raise SystemExit(f"unknown part {which!r}: teacher, distill, soft, token_learner or report")


def report() -> None:
    import tinyvit
    from tinyvit.flops import vit_flops

    rows = {}
    for d in sorted(ROOT.iterdir()):
        if not (d / "summary.json").is_file():
            continue
        s = json.loads((d / "summary.json").read_text())
        model = tinyvit.load_pretrained(d)
        row = {"val_acc": s["final"]["val_acc"], "best_val_acc": s["best"]["val_acc"], "epochs": s["epochs"],
               "params": s["total_params"], "train_images_per_s": s["final"]["train_images_per_s"]}
        if hasattr(model.cfg, "token_learner_tokens"):
            row["forward_flops"] = vit_flops(model.cfg)
        for key in ("teacher_val_acc", "train_label_loss", "train_distill_loss"):
            if key in s["final"]:
                row[key] = s["final"][key]
        rows[d.name] = row
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": "2 shared CPU cores", "dataset": "digits (1,347 train / 450 val)",
                                   "runs": rows}, indent=1) + "\n")
    for name, r in rows.items():
        extra = f"  {r['forward_flops'] / 1e6:8.2f} MFLOPs" if "forward_flops" in r else ""
        print(f"{name:22s} val acc {100 * r['val_acc']:6.2f}% (best {100 * r['best_val_acc']:6.2f}%){extra}")


if __name__ == "__main__":
    for which in sys.argv[1:] or ["report"]:
        part(which)
