"""One entry point: `python -m bench <command> [options]`.

    python -m bench all [--smoke] [--out DIR] [--dtypes ...]   limits, then every benchmark, then the targets
    python -m bench attention --sets vit                       one benchmark; options as python -m bench.attention
    python -m bench targets --update-readme
    python -m bench cpu --cases infer-vit-ti-224                tinyvit vs timm/torchvision on CPU (bench/cpu.py)
    python -m bench fractals                                    FractalDB generation time on CPU (bench/fractals.py)

`all` measures the device limits once and shares them (and one results file) with every benchmark,
writing the file after each one, so a failure late in the run keeps what came before.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time

COMMANDS = {
    "limits": "bench.limits",
    "attention": "bench.attention",
    "layernorm": "bench.layernorm",
    "vit": "bench.vit",
    "finetune": "bench.finetune",
    "targets": "bench.targets",
    "cpu": "bench.cpu",  # CPU ratios against timm/torchvision, rotated rounds (not part of `all`)
    "fractals": "bench.fractals",  # FractalDB generation on the CPU (not part of `all`)
}
BENCHMARKS = ("attention", "layernorm", "vit", "finetune")  # what `all` runs, in this order


def run_all(argv) -> None:
    from bench.common import Runner, Settings, add_common_arguments, common_settings, cpu_threads
    from bench.limits import measure_limits

    parser = argparse.ArgumentParser(prog="python -m bench all", description="every benchmark, then the targets")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    settings = common_settings(args, parser)
    with cpu_threads(Settings(**settings)):
        runner = Runner(Settings(**settings))
        measure_limits(runner)
        for name in BENCHMARKS:
            module = importlib.import_module(COMMANDS[name])
            t0 = time.perf_counter()
            module.run(module.Config(**settings), runner)
            path = runner.write()
            print(f"{name}: {time.perf_counter() - t0:.0f} s")
    from bench import targets

    targets.main(["--results", str(path)])


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in (*COMMANDS, "all"):
        print(__doc__)
        if argv and argv[0] not in ("-h", "--help"):
            sys.exit(f"unknown command {argv[0]!r}; expected one of: all, {', '.join(COMMANDS)}")
        return
    if argv[0] == "all":
        run_all(argv[1:])
    else:
        importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()
