"""A study's runs one after another in one process against two at a time in processes (issue 33)

    python -m bench.study_jobs                 # 4 rounds of 2 runs of 605 steps a side, ~13 min on 2 cores
    python -m bench.study_jobs --steps 3 --rounds 2    # a quick look

`make levers` is 96 runs of small models (the demo's ViT: 16 tokens of width 64, batch 128), whose
matrix products are too small to keep two threads busy. `tinyvit.study --jobs 2` runs two of them at
once, each in its own process on one thread (OMP_NUM_THREADS = cores / jobs), where `--jobs 1` runs
them one after another in the study's process on every core. Each side here is the study command
itself, in a fresh process and a fresh folder: the levers study's plain ViT on 67 digits, seeds 0 to
RUNS - 1, STEPS steps each (the study's 605 by default). `--jobs 2` also pays a process start per run
(imports, the digits: 5-7 s here), `--jobs 1` one per side: with short runs the starts eat the
gain (at 200 steps, 4 runs a side: 57.4 s against 56.0 s in the first round tried).

The sides alternate, their order swapping from round to round; the first round is warm-up (the page
cache, the allocator) and not kept. Each kept round gives speedup = t(jobs 1) / t(jobs 2); the result is
their median with the range, written to bench/results/cpu/study-jobs.json with each side's accuracies:
a run on one thread and on two may sum its matrix products in another order, so its losses can
differ in the last digits (seed 0's final training loss: 0.676593 on two threads, 0.676591 on one);
the accuracies here came out the same.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.cpu import RESULTS, environment
from bench.process_age import DIGITS, VIT

ROOT = Path(__file__).parents[1]


def one_side(jobs: int, out: Path, runs: int, steps: int) -> dict:
    """The study command with --jobs `jobs`, timed from its start to its exit; its runs' accuracies."""
    cmd = [sys.executable, "-m", "tinyvit.study", "--out", str(out), "--models", VIT, "--train-sizes", "67",
           "--seeds", *map(str, range(runs)), "--steps", str(steps), "--jobs", str(jobs), "--", *DIGITS]
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    rows = list(csv.DictReader((out / "results.csv").open()))
    return {"jobs": jobs, "seconds": round(seconds, 2), "val_acc": [float(r["final_val_acc"]) for r in rows]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.study_jobs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=2, help="runs per side (seeds 0 to RUNS - 1; default 2)")
    p.add_argument("--steps", type=int, default=605, help="steps per run (default 605, the study's)")
    p.add_argument("--rounds", type=int, default=4, help="rounds, the first one warm-up (default 4)")
    args = p.parse_args(argv)
    if args.runs < 2 or args.steps < 1 or args.rounds < 2:
        p.error("expected --runs >= 2, --steps >= 1 and --rounds >= 2 (the first round is warm-up)")
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            sides = {}
            for jobs in ((1, 2) if k % 2 == 0 else (2, 1)):
                sides[jobs] = one_side(jobs, Path(tmp) / f"{k}-jobs{jobs}", args.runs, args.steps)
                print(json.dumps(dict(round=k, **sides[jobs])), flush=True)
            rounds.append(sides)
    speedups = [r[1]["seconds"] / r[2]["seconds"] for r in rounds[1:]]
    result = {"case": "study-jobs", "runs": args.runs, "steps": args.steps, "rounds": rounds,
              "speedup_jobs2": dict(median=statistics.median(speedups), min=min(speedups), max=max(speedups),
                                    n=len(speedups)),
              "environment": environment(torch.get_num_threads())}
    path = RESULTS.parent / "study-jobs.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    s = result["speedup_jobs2"]
    print(f"{args.runs} runs of {args.steps} steps: --jobs 2 {s['median']:.2f}x as fast as --jobs 1 "
          f"(range {s['min']:.2f}-{s['max']:.2f}, {s['n']} kept rounds)\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
