"""LayerNorm: tinyvit's Triton kernel against torch.nn.functional.layer_norm and torch.compile of it.

    python -m bench.layernorm                # widths 192 .. 8192 at 50432 rows; bf16, fp16, fp32; fwd, bwd
    python -m bench.layernorm --dtypes bf16

Rows M = 50432 = 256 images × 197 tokens (a ViT batch), widths N = the ViT widths 192 (Ti), 384 (S),
768 (B), 1024 (L), 1280 (H), then 4096 and 8192 where per-row overheads no longer matter. x, weight and
bias share the dtype (s bytes per element); eps = 1e-6 as every official ViT.

Effective bandwidth, the fewest bytes each pass must move over its time:
  fwd  read x, write y, read w and b:                (2·M·N + 2·N)·s
  bwd  read x, dy, w and the fp32 mean, rstd;
       write dx, dw, db:                             (3·M·N + 3·N)·s + 2·M·4
The forward is timed without autograd (inference: no mean/rstd saved). The backward is timed alone:
the forward runs once, then torch.autograd.grad(y, (x, w, b), dy, retain_graph=True) is repeated.
Partial dw/db sums a kernel writes and reads back are not counted (they depend on the kernel), so the
backward's GB/s is a lower bound. Both are shown as a fraction of the copy bandwidth measured in the
same run (%copy_bw): a LayerNorm cannot beat a copy of the same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from bench.common import (
    DTYPES, Runner, Settings, comma_list, common_settings, format_table, make_parser, plot_lines, rel_error, row,
    run_alone,
)

ROWS = 50432  # 256 × 197
WIDTHS = (192, 384, 768, 1024, 1280, 4096, 8192)
SMOKE_ROWS, SMOKE_WIDTHS = 37, (100, 192)  # odd sizes: tails in both directions
EPS = 1e-6
PASSES = ("fwd", "bwd")


def label(rows: int, width: int) -> str:
    return f"{rows}x{width}"


def min_bytes(m: int, n: int, pass_: str, element_size: int) -> float:
    if pass_ == "fwd":
        return (2 * m * n + 2 * n) * element_size
    return (3 * m * n + 3 * n) * element_size + 2 * m * 4


# ---------------------------------------------------------------------------------------------
# Providers: name -> a factory returning fn(x, w, b).
# ---------------------------------------------------------------------------------------------


def torch_layer_norm(x, w, b):
    return F.layer_norm(x, x.shape[-1:], w, b, EPS)


def _compiled():
    torch._dynamo.reset()  # a fresh compile per shape and dtype (see bench/attention.py)
    return torch.compile(torch_layer_norm, dynamic=False)


def providers(compile_: bool) -> dict:
    from tinyvit.kernels import layer_norm

    table = {
        "tinyvit": lambda: (lambda x, w, b: layer_norm(x, w, b, EPS, backend="triton")),
        "torch": lambda: torch_layer_norm,
    }
    if compile_:
        table["compile-torch"] = _compiled
    return table


def backward_only(f, x, w, b, dy):
    """fn() running the forward on its first call only (so first_call_ms holds both compilations), then
    on every call the backward of that one graph (retain_graph keeps it)."""
    y = None

    def fn():
        nonlocal y
        if y is None:
            y = f(x, w, b)
        return torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)

    return fn


def bench_case(runner: Runner, m: int, n: int, dtype: str, pass_: str, table: dict) -> None:
    dt = DTYPES[dtype]
    x = torch.randn(m, n, device=runner.device, dtype=dt)
    # weight and bias away from 1 and 0, so a kernel that ignores them is caught by the check
    w = (1 + 0.5 * torch.randn(n, device=runner.device)).to(dt)
    b = (0.5 * torch.randn(n, device=runner.device)).to(dt)
    grad = pass_ == "bwd"
    for t in (x, w, b):
        t.requires_grad_(grad)
    dy = torch.randn_like(x)

    # the fp32 reference: y for fwd, (dx, dw, db) for bwd
    xf, wf, bf = (t.detach().float().requires_grad_(grad) for t in (x, w, b))
    with torch.enable_grad():
        yf = torch_layer_norm(xf, wf, bf)
    ref = list(torch.autograd.grad(yf, (xf, wf, bf), dy.float())) if grad else [yf.detach()]
    del xf, wf, bf, yf

    for name, factory in table.items():
        f = factory()
        fn = backward_only(f, x, w, b, dy) if grad else (lambda f=f: [f(x, w, b)])
        runner.measure(
            row("layernorm", label(m, n), dtype, pass_, name, dims=dict(M=m, N=n)),
            fn,
            nbytes=min_bytes(m, n, pass_, x.element_size()),
            check=lambda out: rel_error(out, ref),
        )


@dataclass
class Config(Settings):
    widths: Optional[tuple] = None  # default WIDTHS (SMOKE_WIDTHS in smoke mode)
    rows: Optional[int] = None  # default ROWS (SMOKE_ROWS in smoke mode)


def run(cfg: Config, runner: Runner) -> list:
    table = providers(cfg.compile)
    m = cfg.rows or (SMOKE_ROWS if cfg.smoke else ROWS)
    widths = cfg.widths or (SMOKE_WIDTHS if cfg.smoke else WIDTHS)
    start = len(runner.rows)
    for dtype in cfg.dtypes:
        for pass_ in PASSES:
            for n in widths:
                bench_case(runner, m, n, dtype, pass_, table)
    rows = runner.rows[start:]
    print(format_table(rows, f"layernorm on {runner.env['device']}"))
    for dtype in cfg.dtypes:
        plot_lines(
            [r for r in rows if r["dtype"] == dtype], x=lambda r: r["dims"]["N"], y="gbps", panels=PASSES,
            log2x=True, path=runner.plot_path(f"layernorm-{dtype}"),
            title=runner.plot_title(f"LayerNorm, {m} rows, {dtype}"), xlabel="width N", ylabel="GB/s",
            hline=(runner.limits.copy_gbps, "copy (same run)") if runner.limits and not cfg.smoke else None,
        )
    return rows


def parse_args(argv=None) -> Config:
    parser = make_parser("python -m bench.layernorm", __doc__)
    parser.add_argument("--widths", default=None, help=f"comma list of row widths N (default {WIDTHS})")
    parser.add_argument("--rows", type=int, default=None, help=f"rows M, batch × tokens (default {ROWS})")
    args = parser.parse_args(argv)
    widths = comma_list(parser, "--widths", args.widths, convert=int)
    if widths is not None and min(widths) < 1 or args.rows is not None and args.rows < 1:
        parser.error(f"--widths {args.widths} / --rows {args.rows}: expected positive integers")
    return Config(**common_settings(args, parser), widths=widths, rows=args.rows)


def main(argv=None) -> None:
    run_alone(parse_args(argv), run)


if __name__ == "__main__":
    main()
