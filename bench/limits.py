"""What the device can do, measured in the same run as everything else: the two ceilings.

    python -m bench.limits

- Copy bandwidth: dst.copy_(src) over 1 GiB, counting bytes read + written (2 GiB per call). Every
  memory-bound row (LayerNorm, attention at ViT lengths) is also reported as a fraction of it, %copy_bw.
- Matmul rate: a bf16 8192³ matmul, 2·M·N·K FLOPs per call. Attention rows are also reported as a
  fraction of it, %matmul (a fraction of the bf16 peak, for every dtype: the device's best case).

Datasheet numbers (H100 SXM: 3.35 TB/s, 989 TFLOP/s dense bf16) are not reachable; a previous session
measured 3.0 TB/s and 757 TFLOP/s on the lent H100 (bench/h100-baselines-2026-11-22.json).
Random inputs, never zeros: a matmul on zeros has run 13% faster than on data on this workplace's GPUs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.common import DTYPES, Limits, Runner, Settings, common_settings, format_table, make_parser, row, run_alone

COPY_BYTES = 2**30  # 1 GiB, 20x an H100's L2
MATMUL_SIZE = 8192
SMOKE_COPY_BYTES, SMOKE_MATMUL_SIZE = 2**23, 128


def measure_limits(runner: Runner) -> Limits:
    """Time the copy and the matmul, add their rows to the runner, and set runner.limits."""
    smoke = runner.settings.smoke
    nbytes = SMOKE_COPY_BYTES if smoke else COPY_BYTES
    src = torch.randn(nbytes // 4, device=runner.device)
    dst = torch.empty_like(src)
    copy = runner.measure(
        row("copy", f"{nbytes / 2**20:g} MiB", "fp32", "fwd", "torch"),
        lambda: dst.copy_(src),
        nbytes=2 * nbytes,  # read + written
    )
    del src, dst

    n = SMOKE_MATMUL_SIZE if smoke else MATMUL_SIZE
    dtype = "fp32" if smoke else "bf16"
    a, b = (torch.randn(n, n, device=runner.device, dtype=DTYPES[dtype]) for _ in range(2))
    c = torch.empty_like(a)
    matmul = runner.measure(
        row("matmul", f"{n}x{n}x{n}", dtype, "fwd", "torch"),
        lambda: torch.mm(a, b, out=c),
        flops=2 * n**3,
    )
    del a, b, c
    if copy["ms"] is None or matmul["ms"] is None:
        raise RuntimeError(f"could not measure the device limits: copy {copy['skipped']}, matmul {matmul['skipped']}")
    runner.limits = Limits(copy_gbps=copy["gbps"], matmul_tflops=matmul["tflops"])
    return runner.limits


def print_limits(cfg, runner: Runner) -> None:
    print(format_table(runner.rows, f"device limits on {runner.env['device']}"))  # run_alone measured them


@dataclass
class Config(Settings):
    pass


def main(argv=None) -> None:
    parser = make_parser("python -m bench.limits", __doc__)
    run_alone(Config(**common_settings(parser.parse_args(argv), parser)), print_limits)


if __name__ == "__main__":
    main()
