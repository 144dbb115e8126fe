"""Does a ViT run slow down in a process that has already trained ResNet-18? (issue 36)

    python -m bench.process_age                # 3 processes, about 15 minutes on 2 cores
    python -m bench.process_age --steps 3      # a quick look (3-step runs)

`make levers` trains every arm in one process (tinyvit.study), ResNet-18 first, and its ViT runs
there took longer than the demo's in a process of its own. Two readings: something the process
accumulates (heap fragmentation after ResNet-18's large activations, caches, threads ...) slows
every later run, or the machine's own noise. This times the same run, the levers study's plain ViT on
67 digits with seed 0 (605 steps of 128, exactly as `make levers` runs it: tinyvit.finetune.main
in-process, the study's own command line), in fresh processes:

    A: ViT, ViT, then ResNet-18 at the 4 sizes of the study (seed 0), then ViT, ViT
    B: ViT, ViT, ViT, ViT                          (the control: the same order, no ResNet-18)
    A again

Within a process the state after the ResNet-18 runs cannot be undone, so the two sides cannot
alternate; each ratio pairs one run after with one run before, in the same process, the process's
first run left out as its warm-up (A: runs 7-8 against run 2; B: runs 3-4 against run 2). The result is the median of those ratios with their range,
the resident memory after each run, and whether every ViT run ended at the same accuracy and loss
(the runs are deterministic: a difference would mean the state leaked into the numbers, not only the
time). Written to bench/results/cpu/process-age.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.cpu import RESULTS, environment

DIGITS = ["--dataset", "digits", "--recipe", "scratch", "--mixup", "0", "--cutmix", "0", "--batch-size", "128",
          "--num-workers", "0"]  # the Makefile's DIGITS
VIT = "vit=vit_tiny_patch16_224 --image-size 16 --override patch_size=4,dim=64,depth=6,num_heads=4,mlp_dim=256,pool=mean --epochs 55"
RESNET = "resnet18=resnet18 --image-size 32 --epochs 8"  # the Makefile's LEVERS_VIT and the levers' ResNet-18
ORDERS = {"A": ["vit", "vit", "resnet18", "resnet18", "resnet18", "resnet18", "vit", "vit"], "B": ["vit"] * 4}
SIZES = {"vit": [67], "resnet18": [67, 202, 539, 1347]}


def one_process(order: str, out: Path, steps) -> list[dict]:
    """Runs ORDERS[order] in this process, as tinyvit.study runs them; a row per run."""
    import psutil

    from tinyvit import finetune, study

    runs = {}
    for spec in (VIT, RESNET):
        model = study.parse_model(spec)
        epochs = 55 if model.label == "vit" else 8
        runs[model.label] = iter(study.plan([model], SIZES[model.label], {}, [0], 1347, 128, steps, epochs, False, 0,
                                            out, DIGITS, per_model={model.label: (128, epochs)}))
    vit = next(runs["vit"])
    rows = []
    for k, label in enumerate(ORDERS[order]):
        run = vit if label == "vit" else next(runs["resnet18"])
        shutil.rmtree(run.out, ignore_errors=True)
        start = time.perf_counter()
        with open(out / f"{k}.log", "w") as log:
            sys.stdout, saved = log, sys.stdout
            try:
                rc = finetune.main(run.argv + ["--force"])
            finally:
                sys.stdout = saved
        wall = time.perf_counter() - start
        final = json.loads((run.out / "summary.json").read_text())["final"]
        rows.append(dict(order=order, index=k, run=run.name(), steps=run.steps, rc=rc, seconds=round(wall, 2),
                         val_acc=final["val_acc"], train_loss=final["train_loss"],
                         rss_mib=psutil.Process().memory_info().rss >> 20))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def ratios(rows: list[dict]) -> list[float]:
    """Each ViT run of the second half over each of the first half but the first, in one process: a
    process's first run also pays its warm-up (lazy imports, the allocator's first pages, oneDNN's
    first kernels), 3-6 s of a 50 s run here, so it is run and not counted."""
    vit = [r["seconds"] for r in rows if r["run"].startswith("vit")]
    half = len(vit) // 2
    return [after / before for after in vit[half:] for before in vit[1:half]]


def spread(values: list[float]) -> dict:
    return dict(median=statistics.median(values), min=min(values), max=max(values), n=len(values))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.process_age", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="steps per run (default: the study's budgets)")
    p.add_argument("--process", choices=sorted(ORDERS), help=argparse.SUPPRESS)  # one process's share
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.process:
        return {"rows": one_process(args.process, args.out, args.steps)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, order in enumerate("ABA"):
            out = Path(tmp) / f"{k}-{order}"
            out.mkdir()
            cmd = [sys.executable, "-m", "bench.process_age", "--process", order, "--out", str(out)]
            cmd += ["--steps", str(args.steps)] if args.steps else []
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
            rows += [dict(json.loads(line), process=k) for line in done.stdout.splitlines() if line.startswith("{")]
    per = [[r for r in rows if r["process"] == k] for k in range(3)]
    vit = [r for r in rows if r["run"].startswith("vit")]
    result = {"case": "process-age", "steps": args.steps, "rows": rows,
              "after_resnet_over_before": spread(ratios(per[0]) + ratios(per[2])),
              "control_later_over_earlier": spread(ratios(per[1])),
              "first_run_over_second": spread([p[0]["seconds"] / p[1]["seconds"] for p in per]),
              "vit_runs_identical": len({(r["val_acc"], r["train_loss"]) for r in vit}) == 1,
              "environment": environment(torch.get_num_threads())}
    path = RESULTS.parent / "process-age.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    a, b = result["after_resnet_over_before"], result["control_later_over_earlier"]
    print(f"a ViT run after 4 ResNet-18 runs / before them, same process: median {a['median']:.3f} "
          f"(range {a['min']:.3f}-{a['max']:.3f}, {a['n']} pairs); control, runs 3-4 / run 2 with no ResNet-18: "
          f"{b['median']:.3f} ({b['min']:.3f}-{b['max']:.3f}, {b['n']} pairs); every ViT run the same numbers: {result['vit_runs_identical']}")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
