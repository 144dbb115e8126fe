"""Attention: tinyvit's fused Triton kernel against eager attention, scaled_dot_product_attention with
each of its backends, and torch.compile of the eager version.

    python -m bench.attention                       # ViT shapes + the N sweep; bf16, fp16, fp32; fwd, fwd+bwd
    python -m bench.attention --sets vit --dtypes bf16

Providers, all computing softmax(q kᵀ · D^-0.5) v on the same q, k, v of shape [B, H, N, D]:
  tinyvit          tinyvit.kernels.attention(..., backend="triton")
  eager            q @ kᵀ, softmax, @ v: the [B, H, N, N] scores are materialised
  sdpa-<backend>   F.scaled_dot_product_attention inside sdpa_kernel(SDPBackend.<backend>), for flash,
                   efficient, cudnn and math; a backend that refuses the inputs is recorded with its reason
  compile-eager    torch.compile(eager), compiled afresh for each shape (its first_call_ms is the compile)

Counting, FlashAttention's convention, so the numbers compare with published ones:
  FLOPs  fwd      4·B·H·N²·D            two matmuls of 2·N²·D per head
         fwd+bwd  3.5 × 4·B·H·N²·D      the backward is 2.5×: four matmuls plus recomputing q kᵀ
  bytes  fwd      4·B·H·N·D·s           q, k, v read and o written once (s = bytes per element)
         fwd+bwd  8·B·H·N·D·s + 4·B·H·N  also do read, dq, dk, dv written, the fp32 log-sum-exp once
Effective GB/s is this minimum traffic over the time, the same for every provider (eager really moves
several times more): at ViT lengths attention is memory-bound (N/2 FLOP per byte in bf16: 98 at
N = 197, under the H100's ridge of ~266), so GB/s against the copy bandwidth is the number that matters
there, and TFLOP/s against the matmul peak at long N.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.common import (
    DTYPES, Runner, Settings, comma_list, common_settings, format_table, make_parser, plot_lines, rel_error, row,
    run_alone,
)

# ---------------------------------------------------------------------------------------------
# Shapes.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    b: int  # batch
    h: int  # heads
    n: int  # tokens
    d: int  # head width

    @property
    def label(self) -> str:
        return f"B{self.b} H{self.h} N{self.n} D{self.d}"


# ViT-Ti/S/B/L (3, 6, 12, 16 heads of width 64) at 224 px, N = (224/16)² + 1 = 197, and at 384 px,
# N = 24² + 1 = 577; ViT-H/14 at 224 px has N = 16² + 1 = 257 and head width 80. B = 256 at N = 197 fills
# an H100 and matches the 2026-11-22 baselines; B = 64 at N = 577 keeps B·N of the same order.
VIT_SHAPES = {
    "vit_tiny@224": Shape(256, 3, 197, 64),
    "vit_small@224": Shape(256, 6, 197, 64),
    "vit_base@224": Shape(256, 12, 197, 64),
    "vit_large@224": Shape(256, 16, 197, 64),
    "vit_tiny@384": Shape(64, 3, 577, 64),
    "vit_small@384": Shape(64, 6, 577, 64),
    "vit_base@384": Shape(64, 12, 577, 64),
    "vit_large@384": Shape(64, 16, 577, 64),
    "vit_huge14@224": Shape(256, 16, 257, 80),
}

# The N sweep keeps B·N = 16384 tokens, so N = 4096 is the kernels issue's long-sequence target shape
# (B = 4, H = 16, D = 64) and the total work grows only linearly in N.
SWEEP_TOKENS, SWEEP_HEADS, SWEEP_DIM = 16384, 16, 64
SWEEP_N = (128, 256, 512, 1024, 2048, 4096, 8192)

# Smoke mode: the same code paths at sizes the Triton interpreter runs in a moment (N = 17: a tail).
SMOKE_VIT_SHAPES = {"smoke": Shape(1, 2, 17, 64)}
SMOKE_SWEEP = (16, 64)
SMOKE_SWEEP_TOKENS, SMOKE_SWEEP_HEADS = 64, 2

PASSES = ("fwd", "fwd+bwd")


def sweep_shapes(smoke: bool) -> dict:
    if smoke:
        ns, tokens, heads = SMOKE_SWEEP, SMOKE_SWEEP_TOKENS, SMOKE_SWEEP_HEADS
    else:
        ns, tokens, heads = SWEEP_N, SWEEP_TOKENS, SWEEP_HEADS
    return {f"N={n}": Shape(max(1, tokens // n), heads, n, SWEEP_DIM) for n in ns}


def flops(s: Shape, pass_: str) -> float:
    fwd = 4 * s.b * s.h * s.n**2 * s.d
    return 3.5 * fwd if pass_ == "fwd+bwd" else fwd


def min_bytes(s: Shape, pass_: str, element_size: int) -> float:
    bhnd = s.b * s.h * s.n * s.d * element_size
    return 8 * bhnd + 4 * s.b * s.h * s.n if pass_ == "fwd+bwd" else 4 * bhnd


# ---------------------------------------------------------------------------------------------
# Providers: name -> a factory returning fn(q, k, v, scale). Factories, so compile-eager can be
# compiled afresh (and its compile time measured) for each shape.
# ---------------------------------------------------------------------------------------------


def eager(q, k, v, scale):
    """The textbook computation: materialise the [B, H, N, N] scores, softmax, weight the values."""
    return ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1) @ v


def _sdpa(backend):
    def fn(q, k, v, scale):
        from torch.nn.attention import sdpa_kernel

        # The backward runs outside this block; it is the backward of the forward op chosen here.
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)

    return fn


def _compiled_eager():
    # A fresh compile per shape and dtype: dynamo otherwise stops recompiling after
    # torch._dynamo.config.recompile_limit shapes and silently runs eager code from then on.
    torch._dynamo.reset()
    return torch.compile(eager, dynamic=False)


def providers(compile_: bool) -> dict:
    from torch.nn.attention import SDPBackend

    from tinyvit.kernels import attention

    table = {
        "tinyvit": lambda: (lambda q, k, v, scale: attention(q, k, v, scale=scale, backend="triton")),
        "eager": lambda: eager,
        "sdpa-flash": lambda: _sdpa(SDPBackend.FLASH_ATTENTION),
        "sdpa-efficient": lambda: _sdpa(SDPBackend.EFFICIENT_ATTENTION),
        "sdpa-cudnn": lambda: _sdpa(SDPBackend.CUDNN_ATTENTION),
        "sdpa-math": lambda: _sdpa(SDPBackend.MATH),
    }
    if compile_:
        table["compile-eager"] = _compiled_eager
    return table


# ---------------------------------------------------------------------------------------------
# One shape, one dtype, one pass: every provider on the same inputs.
# ---------------------------------------------------------------------------------------------


REFERENCE_CHUNK = 2**28  # score elements per chunk of the fp32 reference: 1 GiB


def reference(q, k, v, scale, do=None) -> list:
    """[o] (or [dq, dk, dv] when do is given) by fp32 eager attention, in chunks of the batch so the
    fp32 scores stay near 1 GiB (one element alone is 4.3 GB at N = 8192, H = 16)."""
    b, h, n, _ = q.shape
    step = max(1, REFERENCE_CHUNK // (h * n * n))
    parts = []
    for i in range(0, b, step):
        qi, ki, vi = (t[i:i + step].detach().float().requires_grad_(do is not None) for t in (q, k, v))
        with torch.enable_grad():
            o = eager(qi, ki, vi, scale)
        if do is None:
            parts.append([o.detach()])
        else:
            parts.append(list(torch.autograd.grad(o, (qi, ki, vi), do[i:i + step].float())))
    return [torch.cat(p) for p in zip(*parts)]


def bench_case(runner: Runner, group: str, s: Shape, dtype: str, pass_: str, table: dict) -> None:
    make = lambda: torch.randn(s.b, s.h, s.n, s.d, device=runner.device, dtype=DTYPES[dtype])  # noqa: E731
    q, k, v = make(), make(), make()
    scale = s.d**-0.5
    if pass_ == "fwd":
        ref = reference(q, k, v, scale)
    else:
        for t in (q, k, v):
            t.requires_grad_(True)
        do = make()
        ref = reference(q, k, v, scale, do)
    for name, factory in table.items():
        f = factory()
        if pass_ == "fwd":
            fn = lambda f=f: [f(q, k, v, scale)]  # noqa: E731
        else:
            fn = lambda f=f: torch.autograd.grad(f(q, k, v, scale), (q, k, v), do)  # noqa: E731
        runner.measure(
            row("attention", s.label, dtype, pass_, name, group=group, dims=dict(B=s.b, H=s.h, N=s.n, D=s.d)),
            fn,
            flops=flops(s, pass_),
            nbytes=min_bytes(s, pass_, q.element_size()),
            check=lambda out: rel_error(out, ref),
        )


# ---------------------------------------------------------------------------------------------
# The script.
# ---------------------------------------------------------------------------------------------

SETS = ("vit", "sweep")


@dataclass
class Config(Settings):
    sets: tuple = SETS  # "vit": the ViT shapes; "sweep": N = 128 .. 8192 at B·N = 16384


def run(cfg: Config, runner: Runner) -> list:
    table = providers(cfg.compile)
    groups = {"vit": SMOKE_VIT_SHAPES if cfg.smoke else VIT_SHAPES, "sweep": sweep_shapes(cfg.smoke)}
    start = len(runner.rows)
    for group in cfg.sets:
        for dtype in cfg.dtypes:
            for pass_ in PASSES:
                for shape in groups[group].values():
                    bench_case(runner, group, shape, dtype, pass_, table)
    rows = runner.rows[start:]
    print(format_table(rows, f"attention on {runner.env['device']}"))
    for dtype in cfg.dtypes:
        sweep = [r for r in rows if r["group"] == "sweep" and r["dtype"] == dtype]
        plot_lines(
            sweep, x=lambda r: r["dims"]["N"], y="tflops", panels=PASSES, log2x=True,
            path=runner.plot_path(f"attention-sweep-{dtype}"),
            title=runner.plot_title(f"attention, H={sweep[0]['dims']['H'] if sweep else '?'} D={SWEEP_DIM}, "
                                    f"B·N constant, {dtype}"),
            xlabel="N (tokens)", ylabel="TFLOP/s",
            hline=(runner.limits.matmul_tflops, "matmul peak (same run)") if runner.limits and not cfg.smoke else None,
        )
    return rows


def parse_args(argv=None) -> Config:
    parser = make_parser("python -m bench.attention", __doc__)
    parser.add_argument("--sets", default=None, help=f"comma list from {','.join(SETS)} (default: both)")
    args = parser.parse_args(argv)
    sets = comma_list(parser, "--sets", args.sets, allowed=SETS) or SETS
    return Config(**common_settings(args, parser), sets=sets)


def main(argv=None) -> None:
    run_alone(parse_args(argv), run)


if __name__ == "__main__":
    main()
