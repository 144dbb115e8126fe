"""FractalDB generation speed (tinyvit/fractals.py) on this machine's CPU: the category search and the
rendering, timed apart, over a few repeats (median), with the load average before and after.

    python -m bench fractals                          # 100 categories x 100 instances at 32 px (the issue's case)
    python -m bench fractals --categories 10 --repeats 1 --out /tmp/f.json

numpy only: no torch, so the CPU threads are numpy's (single-threaded elementwise ops). Writes
bench/results/cpu/fractals.json (or --out): the timings, the machine and the versions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def measure(categories: int, instances: int, size: int, seed: int) -> dict:
    from tinyvit import fractals

    t0 = time.perf_counter()
    systems = fractals.search(categories, seed)
    t1 = time.perf_counter()
    images, _, _ = fractals.generate(categories, instances, size, seed, systems=systems)
    t2 = time.perf_counter()
    return {"search_s": t1 - t0, "render_s": t2 - t1, "total_s": t2 - t0, "images": len(images)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench fractals", description=__doc__.split("\n\n")[0])
    p.add_argument("--categories", type=int, default=100)
    p.add_argument("--instances", type=int, default=100)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="bench/results/cpu/fractals.json")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    runs = [measure(args.categories, args.instances, args.size, args.seed) for _ in range(args.repeats)]
    result = {
        "case": f"{args.categories} categories x {args.instances} instances at {args.size} px, seed {args.seed}",
        **{k: round(statistics.median(r[k] for r in runs), 2) for k in ("search_s", "render_s", "total_s")},
        "runs": runs, "load_before": load_before, "load_after": os.getloadavg(),
        "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(), "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"{result['case']}: search {result['search_s']} s, render {result['render_s']} s, total {result['total_s']} s "
          f"(median of {args.repeats}; load {load_before[0]:.2f} -> {result['load_after'][0]:.2f})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
