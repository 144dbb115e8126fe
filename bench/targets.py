"""The kernels issue's performance targets, judged from a results file: met, missed, or not measured.

    python -m bench.targets                     # the newest file in bench/results
    python -m bench.targets --results bench/results/nvidia-h100-80gb-hbm3-2026-12-01.json
    python -m bench.targets --update-readme     # rewrite the table in bench/README.md from the data

Every comparison is between rows of one file, measured in the same run on the same device: a speedup
is the fastest baseline provider's time over ours, so it does not depend on the device's clocks that
day. "ratio" is measured / required (≥ 1: met). When the ratio is within the measurements' own
noise (the larger `spread` of the rows involved), the verdict says so.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bench.attention import Shape
from bench.common import RESULTS_DIR, read_rows
from bench.finetune import label as finetune_label
from bench.layernorm import label as layernorm_label

README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- targets:begin -->", "<!-- targets:end -->"
NO_GPU_YET = "not yet measured: no GPU was lent in the session that wrote this"


@dataclass(frozen=True)
class Target:
    text: str  # the requirement, as the kernels issue states it
    op: str
    shape: str
    dtype: str
    pass_: str
    ours: tuple  # providers whose fastest row is measured
    metric: str  # "speedup" (baseline ms / our ms), or a row field: "gbps", "tflops", "pct_copy_bw"
    need: float
    baseline: tuple = ()  # for "speedup": providers whose fastest row is the baseline


SDPA = ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math")
VIT_B = Shape(256, 12, 197, 64).label
LONG = Shape(4, 16, 4096, 64).label
LN = layernorm_label(50432, 768)
FINETUNE = finetune_label("vit_base_patch16_224", 50_000, 256, 224, None)

TARGETS = [
    Target("attention fwd, ViT-B shape (B=256 H=12 N=197 D=64, bf16): ≥ 1.2× the fastest SDPA backend "
           "(≤ 0.142 ms against the 2026-11-22 baseline's 0.170 ms cuDNN)",
           "attention", VIT_B, "bf16", "fwd", ("tinyvit",), "speedup", 1.2, SDPA),
    Target("attention fwd, ViT-B shape: ≥ 2.2 TB/s effective (q, k, v, o moved once)",
           "attention", VIT_B, "bf16", "fwd", ("tinyvit",), "gbps", 2200.0),
    Target("attention fwd, ViT-B shape: ≥ 5× eager (matmul + softmax)",
           "attention", VIT_B, "bf16", "fwd", ("tinyvit",), "speedup", 5.0, ("eager",)),
    Target("attention fwd+bwd, ViT-B shape: ≥ 1.0× the fastest SDPA backend",
           "attention", VIT_B, "bf16", "fwd+bwd", ("tinyvit",), "speedup", 1.0, SDPA),
    Target("attention fwd, B=4 H=16 N=4096 D=64 bf16: ≥ 0.9× the fastest SDPA backend",
           "attention", LONG, "bf16", "fwd", ("tinyvit",), "speedup", 0.9, SDPA),
    Target("attention fwd, B=4 H=16 N=4096 D=64 bf16: ≥ 400 TFLOP/s",
           "attention", LONG, "bf16", "fwd", ("tinyvit",), "tflops", 400.0),
    Target("LayerNorm fwd, 50432 × 768 bf16: ≥ 85% of the copy bandwidth measured in the same run "
           "(about 1.75× torch)",
           "layernorm", LN, "bf16", "fwd", ("tinyvit",), "pct_copy_bw", 85.0),
    Target("LayerNorm bwd, 50432 × 768 bf16: ≥ 2× torch",
           "layernorm", LN, "bf16", "bwd", ("tinyvit",), "speedup", 2.0, ("torch",)),
    Target("fine-tuning ViT-B/16 last block, 50,000 images at 224 px: an epoch from the second on "
           "≥ 5× faster with the frozen-prefix cache than the plain loop",
           "finetune-epoch", FINETUNE, "bf16", "train", ("cached-cuda", "cached-cpu"), "speedup", 5.0, ("uncached",)),
]

UNITS = {"gbps": "GB/s", "tflops": "TFLOP/s", "pct_copy_bw": "% of copy"}


@dataclass
class Verdict:
    measured: str
    ratio: Optional[float]  # measured / required
    status: str  # "met", "missed" (either maybe "within noise"), or "not measured: ..."


def _fastest(rows: list, t: Target, providers: tuple):
    """The fastest timed row of these providers for t's op/shape/dtype/pass, and why there is none."""
    mine = [r for r in rows if (r["op"], r["shape"], r["dtype"], r["pass"]) == (t.op, t.shape, t.dtype, t.pass_)
            and r["provider"] in providers]
    timed = [r for r in mine if r.get("ms") is not None]
    if timed:
        return min(timed, key=lambda r: r["ms"]), None
    if mine:
        return None, "; ".join(f"{r['provider']}: {r.get('skipped') or 'no time'}" for r in mine)
    return None, f"no {'/'.join(providers)} row for {t.op} {t.shape} {t.dtype} {t.pass_}"


def evaluate(t: Target, rows: list) -> Verdict:
    best, why = _fastest(rows, t, t.ours)
    if best is None:
        return Verdict("-", None, f"not measured: {why}")
    involved = [best]
    if t.metric == "speedup":
        base, why = _fastest(rows, t, t.baseline)
        if base is None:
            return Verdict("-", None, f"not measured: {why}")
        involved.append(base)
        value = base["ms"] / best["ms"]
        measured = f"{value:.2f}× ({best['provider']} {best['ms']:.3g} ms vs {base['provider']} {base['ms']:.3g} ms)"
    else:
        value = best.get(t.metric)
        if value is None:
            return Verdict("-", None, f"not measured: the {best['provider']} row has no {t.metric}")
        measured = f"{value:.3g} {UNITS.get(t.metric, t.metric)} ({best['provider']} {best['ms']:.3g} ms)"
    ratio = value / t.need
    status = "met" if ratio >= 1 else "missed"
    noise = max(float(r.get("spread") or 0.0) for r in involved)  # "inf" is stored as a string
    if abs(ratio - 1) < noise:
        status += f" (within the {100 * noise:.1f}% spread)"
    return Verdict(measured, ratio, status)


# ---------------------------------------------------------------------------------------------
# Which file, and the table.
# ---------------------------------------------------------------------------------------------


def latest_results(directory: Path = RESULTS_DIR) -> Optional[Path]:
    files = sorted(Path(directory).glob("*.json"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(path: Optional[Path], rows: Optional[list]) -> str:
    """The targets table, with a line saying where its numbers come from."""
    if path is None:
        lines = ["No results file in bench/results yet; `python -m bench all` on a GPU writes one, and "
                 "`python -m bench.targets --update-readme` regenerates this table from it.", ""]
        verdicts = [Verdict("-", None, NO_GPU_YET) for _ in TARGETS]
    else:
        env = next((r for r in rows if r.get("device")), {})
        lines = [f"Generated by `python -m bench.targets --update-readme` from `{path.name}`: {env.get('device')}, "
                 f"torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}.", ""]
        verdicts = [evaluate(t, rows) for t in TARGETS]
    lines += ["| target | measured | ratio | met? |", "|---|---|---|---|"]
    for t, v in zip(TARGETS, verdicts):
        ratio = "-" if v.ratio is None else f"{v.ratio:.2f}"
        lines.append(f"| {_escape(t.text)} | {_escape(v.measured)} | {ratio} | {_escape(v.status)} |")
    return "\n".join(lines)


def update_readme(readme: Path, table: str) -> None:
    """Replace what stands between the two markers in readme by the table; everything else is kept."""
    text = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"{readme}: expected exactly one {BEGIN} ... {END} block to replace")
    readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{table}\n{END}", text))


@dataclass
class Config:
    results: Optional[Path] = None  # default: the newest file in bench/results
    update_readme: bool = False
    readme: Path = README


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m bench.targets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=None,
                        help=f"a results file (default: the newest in {RESULTS_DIR})")
    parser.add_argument("--update-readme", action="store_true", help="rewrite the targets table in the README")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    cfg = Config(args.results, args.update_readme, args.readme)

    path = cfg.results or latest_results()
    if cfg.results is not None and not cfg.results.is_file():
        parser.error(f"--results {cfg.results}: no such file")
    rows = read_rows(path) if path is not None else None
    if rows is not None and any(r.get("smoke") for r in rows):
        if cfg.update_readme:
            parser.error(f"{path} holds smoke rows, which are not measurements; the README is left as it is")
        print(f"note: {path} holds smoke rows; they are not measurements")
    table = markdown(path, rows)
    print(table)
    if cfg.update_readme:
        update_readme(cfg.readme, table)
        print(f"updated {cfg.readme}")
    return table


if __name__ == "__main__":
    main()
