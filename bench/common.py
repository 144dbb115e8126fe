"""What every benchmark shares: settings, the timer, result rows, the results file, tables and plots.

The method (bench/README.md says it at length):
- Time on the device: CUDA events around each repetition, synchronised once at the end of a run.
- Warm up first. The first call is timed on its own, host clock and synchronise: it holds compilation,
  autotuning and cache loads, which the steady-state numbers must not contain.
- Flush the L2 cache before every repetition, outside the timed region, by writing a 256 MB buffer
  (H100's L2 is 50 MB), so a small input is not read from the cache run after run.
- Report medians, and take the measurement twice: the relative difference of the two medians
  (`spread`) is the noise floor; a difference between providers smaller than it means nothing.
- Check each provider's result against an fp32 reference before timing it: a fast wrong answer is
  recorded as wrong, not timed.

Importing this is cheap: matplotlib loads inside the plotting functions, nothing touches the device
until a Runner is built.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Relative error ||out - ref|| / ||ref|| against an fp32 reference above which a provider's result is
# called wrong. bf16 keeps 8 mantissa bits (~4e-3 per rounding), fp16 11; fp32 allows TF32 (~5e-4).
# A wrong kernel (bad indexing, a missed tail) lands near 1.
TOLERANCE = {"bf16": 3e-2, "fp16": 1e-2, "fp32": 5e-3}

# Every row has these keys (None where a quantity does not apply, e.g. TFLOP/s of a copy).
REQUIRED_FIELDS = (
    "op", "shape", "dtype", "pass", "provider", "ms", "tflops", "gbps", "device", "torch", "triton", "cuda",
)
ROW_KEY = ("op", "shape", "dtype", "pass", "provider")  # a new row with the same key replaces the old

SMOKE_BANNER = (
    "SMOKE MODE: tiny shapes, 1 call per run, fp32. It checks that the benchmark runs end to end;\n"
    "its timings are not measurements (CPU timings are not the point) and never go to bench/results."
)

L2_FLUSH_BYTES = 256 * 2**20  # > every current L2 (H100 50 MB, H200 60 MB, B200 126 MB)
MIN_REPS, MAX_REPS = 5, 2000


# ---------------------------------------------------------------------------------------------
# Settings: the options every script takes. Each script's Config subclasses this.
# ---------------------------------------------------------------------------------------------


@dataclass
class Settings:
    smoke: bool = False  # tiny shapes, one call per run; automatic when there is no CUDA device
    out: Path = RESULTS_DIR  # where <device>-<date>.json and the plots go
    dtypes: tuple = ("bf16", "fp16", "fp32")
    warmup_ms: float = 25.0  # per run, as triton.testing.do_bench's warmup
    rep_ms: float = 100.0  # per run: repetitions = rep_ms / estimated time, within MIN_REPS..MAX_REPS
    compile: bool = True  # include torch.compile providers

    @property
    def device(self) -> str:
        return "cuda" if torch.cuda.is_available() else "cpu"


def make_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first paragraph as the description, the common options added."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    add_common_arguments(parser)
    return parser


def comma_list(parser: argparse.ArgumentParser, flag: str, text: Optional[str], allowed=None, convert=str):
    """`text` ("a,b,c") as a tuple of convert(item), None if the option was not given; anything empty,
    unconvertible or outside `allowed` exits through parser.error, naming the flag and what it expects."""
    if text is None:
        return None
    expected = f"from {', '.join(map(str, allowed))}" if allowed else f"of {convert.__name__}"
    try:
        items = tuple(convert(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        items = ()
    if not items or (allowed is not None and any(x not in allowed for x in items)):
        parser.error(f"{flag} {text!r}: expected a comma list {expected}")
    return items


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, one call per run, fp32 (automatic without CUDA); results go to a temp dir")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results directory (default {RESULTS_DIR}; a fresh temp dir in smoke mode)")
    parser.add_argument("--dtypes", default=None,
                        help=f"comma list from {','.join(DTYPES)} (default: all; fp32 in smoke mode)")
    parser.add_argument("--warmup-ms", type=float, default=Settings.warmup_ms)
    parser.add_argument("--rep-ms", type=float, default=Settings.rep_ms)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="include torch.compile providers (default: yes; no in smoke mode, where "
                             "a CPU compile takes tens of seconds)")


def common_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """The Settings fields from parsed arguments, with smoke-mode defaults; bad values exit via parser.error."""
    smoke = args.smoke or not torch.cuda.is_available()
    dtypes = comma_list(parser, "--dtypes", args.dtypes, allowed=tuple(DTYPES)) or (
        ("fp32",) if smoke else Settings.dtypes)
    if args.out is None:
        out = Path(tempfile.mkdtemp(prefix="tinyvit-bench-smoke-")) if smoke else RESULTS_DIR
    else:
        out = args.out
        if smoke and out.resolve() == RESULTS_DIR:
            parser.error(f"--out {out}: smoke results are not measurements and do not go to {RESULTS_DIR}")
    for name in ("warmup_ms", "rep_ms"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    compile_ = (not smoke) if args.compile is None else args.compile
    return dict(smoke=smoke, out=out, dtypes=dtypes, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms,
                compile=compile_)


# ---------------------------------------------------------------------------------------------
# Environment: what produced the numbers, recorded in every row.
# ---------------------------------------------------------------------------------------------


def _version(package: str) -> Optional[str]:
    try:  # metadata, not an import: triton's import is cheap but need not happen here
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict:
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"cpu {platform.machine()} {os.cpu_count()} cores"
    return {
        "device": name,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda": torch.version.cuda,  # the CUDA torch was built with
        "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "python": platform.python_version(),
    }


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ---------------------------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------------------------


@dataclass
class Timing:
    first_call_ms: float  # the first call alone: compilation, autotuning, lazy initialisation
    ms: float  # median over the repetitions of both runs
    ms_runs: tuple  # each run's median, taken one after the other (one run: no spread is known)
    reps: int  # repetitions per run

    @property
    def spread(self) -> Optional[float]:
        """Relative difference of the two runs' medians: the noise floor of this measurement."""
        if len(self.ms_runs) < 2:
            return None
        a, b = self.ms_runs
        return abs(a - b) / min(a, b) if min(a, b) > 0 else math.inf


class Timer:
    """Times a callable: first call, a repetition-count estimate, then two runs of warm-up + repetitions."""

    def __init__(self, device: str, warmup_ms: float, rep_ms: float, smoke: bool):
        self.cuda = device == "cuda"
        self.warmup_ms, self.rep_ms, self.smoke = warmup_ms, rep_ms, smoke
        self.flush_buffer = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device) if self.cuda else None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def flush(self) -> None:
        if self.flush_buffer is not None:
            self.flush_buffer.zero_()  # queued before the start event: not in the timed region

    def first_call(self, fn: Callable):
        """(fn's result, milliseconds of this first call, synchronised)."""
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return out, (time.perf_counter() - t0) * 1e3

    def repetitions(self, fn: Callable, n: int) -> list:
        """Milliseconds of each of n calls, each after an L2 flush."""
        if not self.cuda:
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return times
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for start, end in zip(starts, ends):
            self.flush()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()  # once per run: a synchronise per repetition would add host latency
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]

    def steady_state(self, fn: Callable, first_call_ms: float) -> Timing:
        """After the first call: choose warm-up and repetition counts, then two runs."""
        if self.smoke:
            warmup, reps = 0, 1  # the first call was the warm-up; two runs of one still give a spread
        else:
            estimate = max(statistics.median(self.repetitions(fn, 3)), 1e-4)
            warmup = max(1, math.ceil(self.warmup_ms / estimate))
            reps = min(max(MIN_REPS, math.ceil(self.rep_ms / estimate)), MAX_REPS)
        runs, pooled = [], []
        for _ in range(2):
            for _ in range(warmup):
                fn()
            times = self.repetitions(fn, reps)
            runs.append(statistics.median(times))
            pooled += times
        return Timing(first_call_ms, statistics.median(pooled), tuple(runs), reps)


# ---------------------------------------------------------------------------------------------
# Correctness: each provider's result against an fp32 reference.
# ---------------------------------------------------------------------------------------------


def wrong_result(err: Optional[float], dtype: str) -> Optional[str]:
    """Why a result with relative error err is wrong for dtype (its TOLERANCE), or None if it is right."""
    if err is None or err <= TOLERANCE[dtype]:
        return None
    return f"wrong result: rel_err {err:.3g} > {TOLERANCE[dtype]:g}"


def rel_error(outputs, references) -> float:
    """max over pairs of ||out - ref|| / ||ref||, computed in fp32 (inf if anything is not finite)."""
    worst = 0.0
    for out, ref in zip(outputs, references, strict=True):
        out, ref = out.detach().float(), ref.detach().float()
        if out.shape != ref.shape:
            raise ValueError(f"result of shape {tuple(out.shape)} where the reference has {tuple(ref.shape)}")
        err = ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()
        worst = max(worst, err if math.isfinite(err) else math.inf)
    return worst


# ---------------------------------------------------------------------------------------------
# The Runner: measures providers and collects rows.
# ---------------------------------------------------------------------------------------------


@dataclass
class Limits:
    """What the device can do, measured in the same run (bench/limits.py)."""

    copy_gbps: float  # a large device-to-device copy, bytes read + written
    matmul_tflops: float  # a large bf16 matmul (fp32 in smoke mode)


def failure_reason(exc: BaseException, caught: list) -> str:
    """One line saying why a provider could not run: the exception, plus the warnings that explain it
    (SDPA says why a backend refused the inputs only in warnings before its "No available kernel")."""
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    reasons = []
    for w in caught:
        line = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
        if line and line not in reasons:
            reasons.append(line)
    if reasons:
        text += " (" + "; ".join(reasons[:3]) + ")"
    return text[:400]


def row(op: str, shape: str, dtype: str, pass_: str, provider: str, **extra) -> dict:
    """The identifying fields of a result row (`pass` is a Python keyword, hence the helper)."""
    return {"op": op, "shape": shape, "dtype": dtype, "pass": pass_, "provider": provider, **extra}


class Runner:
    """Holds the settings, the environment, the timer and the limits, and collects result rows."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.device = settings.device
        self.env = environment(self.device)
        self.timer = Timer(self.device, settings.warmup_ms, settings.rep_ms, settings.smoke)
        self.limits: Optional[Limits] = None
        self.rows: list = []
        self.started = datetime.datetime.now()
        if settings.smoke:
            print(SMOKE_BANNER)

    @property
    def results_path(self) -> Path:
        return self.settings.out / f"{slug(self.env['device'])}-{self.started.date().isoformat()}.json"

    def plot_path(self, name: str) -> Path:
        return self.settings.out / f"{slug(self.env['device'])}-{self.started.date().isoformat()}-{name}.png"

    def plot_title(self, text: str) -> str:
        return f"{text}, {self.env['device']}" + ("  [SMOKE: not measurements]" if self.settings.smoke else "")

    def measure(
        self,
        row: dict,
        fn: Callable,
        *,
        flops: Optional[float] = None,
        nbytes: Optional[float] = None,
        images: Optional[int] = None,
        check: Optional[Callable] = None,
    ) -> dict:
        """Time fn and add a row. row: op, shape, dtype, pass, provider (and any extra keys).

        flops / nbytes / images: the work of one call, for TFLOP/s, effective GB/s and images/s.
        check: turns fn's first result into a relative error against a reference; above the dtype's
        TOLERANCE the provider is recorded as wrong and not timed. A provider that raises (a backend that
        refuses the shape, out of memory) is recorded with the reason.
        """
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out, first_ms = self.timer.first_call(fn)
                err = check(out) if check is not None else None
                del out
                if wrong_result(err, row["dtype"]):
                    return self.add(row, rel_err=err, skipped=wrong_result(err, row["dtype"]))
                timing = self.timer.steady_state(fn, first_ms)
        except Exception as exc:  # noqa: BLE001 - any failure of one provider is data, not a crash
            if self.device == "cuda":
                torch.cuda.empty_cache()
            return self.add(row, skipped=failure_reason(exc, caught))
        return self.add(row, timing=timing, flops=flops, nbytes=nbytes, images=images, rel_err=err)

    def add(self, row: dict, *, timing=None, flops=None, nbytes=None, images=None, rel_err=None, skipped=None):
        ms = timing.ms if timing else None
        tflops = flops / ms / 1e9 if timing and flops else None  # FLOP / (ms 1e-3 s) / 1e12
        gbps = nbytes / ms / 1e6 if timing and nbytes else None  # B / (ms 1e-3 s) / 1e9
        full = dict(row)
        full.update(
            ms=ms,
            tflops=tflops,
            gbps=gbps,
            images_per_s=images * 1e3 / ms if timing and images else None,
            ms_runs=list(timing.ms_runs) if timing else None,
            spread=_json_number(timing.spread) if timing else None,
            reps=timing.reps if timing else None,
            first_call_ms=timing.first_call_ms if timing else None,
            pct_copy_bw=100 * gbps / self.limits.copy_gbps if gbps and self.limits else None,
            pct_matmul=100 * tflops / self.limits.matmul_tflops if tflops and self.limits else None,
            rel_err=_json_number(rel_err),
            skipped=skipped,
            smoke=self.settings.smoke,
            time=datetime.datetime.now().isoformat(timespec="seconds"),
            **self.env,
        )
        self.rows.append(full)
        return full

    def write(self) -> Path:
        """Merge this run's rows into the day's file (bench/results/<device>-<date>.json)."""
        path = merge_rows(self.results_path, self.rows)
        print(f"results: {path}" + ("  (smoke: not measurements)" if self.settings.smoke else ""))
        return path


@contextlib.contextmanager
def cpu_threads(settings: Settings):
    """One CPU thread for a smoke run on CPU, restored afterwards.

    Smoke timings are not measurements, tiny shapes gain nothing from threads, and when CI runs other
    jobs beside this one, OpenMP threads spin-waiting for a core made a smoke run 2-3x slower (seen here:
    16 s with one thread against 36 s with two, on a loaded 2-core machine).
    """
    before = torch.get_num_threads()
    if settings.smoke and settings.device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_alone(cfg: Settings, run: Callable) -> Path:
    """What each script's main() does: measure the limits, run the benchmark, merge the rows into the file."""
    from bench.limits import measure_limits

    t0 = time.perf_counter()
    with cpu_threads(cfg):
        runner = Runner(cfg)
        measure_limits(runner)
        run(cfg, runner)
        path = runner.write()
    print(f"took {time.perf_counter() - t0:.0f} s")
    return path


def _json_number(value):
    return None if value is None else (value if math.isfinite(value) else "inf")  # JSON has no inf


# ---------------------------------------------------------------------------------------------
# The results file: a JSON list of rows, merged by ROW_KEY, written atomically.
# ---------------------------------------------------------------------------------------------


class ResultsFileError(ValueError):
    pass


def read_rows(path: Path) -> list:
    """The rows in a results file, checked: a list of objects, each with the ROW_KEY fields."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsFileError(f"{path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(rows, list):
        raise ResultsFileError(f"{path}: expected a JSON list of result rows, found a {type(rows).__name__}")
    for i, row in enumerate(rows):
        missing = [k for k in ROW_KEY if not isinstance(row, dict) or k not in row]
        if missing:
            raise ResultsFileError(f"{path}: row {i} lacks {', '.join(missing)} (every row needs {', '.join(ROW_KEY)})")
    return rows


def _write_json_atomically(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one
    except BaseException:
        os.unlink(tmp)
        raise


def merge_rows(path: Path, rows: list) -> Path:
    """Add rows to the file at path, replacing rows with the same ROW_KEY and keeping all others.

    If the existing file cannot be read, it is left as it is, the new rows go to a side file beside it,
    and ResultsFileError names both: a long run's numbers are never lost to a bad file.
    """
    path = Path(path)
    try:
        existing = read_rows(path) if path.exists() else []
    except ResultsFileError as exc:
        side = path.with_name(f"{path.stem}.{datetime.datetime.now():%H%M%S}.json")
        _write_json_atomically(side, rows)
        raise ResultsFileError(f"{exc}; it was left untouched and this run's rows were written to {side}") from exc
    new_keys = {tuple(r[k] for k in ROW_KEY) for r in rows}
    merged = [r for r in existing if tuple(r[k] for k in ROW_KEY) not in new_keys] + list(rows)
    _write_json_atomically(path, merged)
    return path


# ---------------------------------------------------------------------------------------------
# Tables.
# ---------------------------------------------------------------------------------------------


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def _percent(value) -> str:
    return f"{100 * float(value):.1f}%"  # float(): "inf" is stored as a string


TABLE_COLUMNS = [
    ("op", "op"), ("shape", "shape"), ("dtype", "dtype"), ("pass", "pass"), ("provider", "provider"), ("ms", "ms"),
    ("spread", "spread"), ("first_call_ms", "first ms"), ("tflops", "TFLOP/s"), ("gbps", "GB/s"),
    ("images_per_s", "img/s"), ("pct_copy_bw", "%copy_bw"), ("pct_matmul", "%matmul"), ("rel_err", "rel_err"),
]


def format_table(rows: list, title: str = "") -> str:
    """A fixed-width table of rows; columns empty in every row are left out; skipped rows say why."""
    cols = [(k, h) for k, h in TABLE_COLUMNS if any(r.get(k) is not None for r in rows)]
    cells = [[h for _, h in cols]]
    for r in rows:
        cells.append([_percent(r[k]) if k == "spread" and r.get(k) is not None else _fmt(r.get(k)) for k, _ in cols])
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    lines = []
    for r, line in zip([None] + rows, cells):
        text = "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
        lines.append(text + (f"  [not timed: {r['skipped']}]" if r and r.get("skipped") else ""))
    return (f"\n== {title} ==\n" if title else "") + "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib with the Agg backend, imported here only): one panel per pass.
# ---------------------------------------------------------------------------------------------


def _panels(rows: list, y: str, panels: tuple):
    """None when no row has a value y; else (plt, fig, [(axes, pass, that pass's rows with a y)])."""
    rows = [r for r in rows if r.get(y) is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    return plt, fig, [(ax, p, [r for r in rows if r["pass"] == p]) for ax, p in zip(axes[0], panels)]


def _save(plt, fig, path: Path, title: str) -> Path:
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}")
    return path


def plot_lines(
    rows: list, *, x: Callable, y: str, panels: tuple, path: Path, title: str, xlabel: str, ylabel: str,
    log2x: bool = False, hline: Optional[tuple] = None,
) -> Optional[Path]:
    """One line per provider: y (a row key) against x(row), in one panel per `pass` in panels.

    hline: (value, label) drawn across every panel, e.g. the measured copy bandwidth.
    Returns the path, or None when no row has a value to plot.
    """
    figure = _panels(rows, y, panels)
    if figure is None:
        return None
    plt, fig, axes = figure
    for ax, pass_, mine in axes:
        for provider in dict.fromkeys(r["provider"] for r in mine):
            pts = sorted((x(r), r[y]) for r in mine if r["provider"] == provider)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=provider)
        if hline is not None:
            ax.axhline(hline[0], color="gray", linestyle="--", label=hline[1])
        if log2x:
            ax.set_xscale("log", base=2)
        ax.set(title=pass_, xlabel=xlabel, ylabel=ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, path, title)


def plot_bars(rows: list, *, group: str, y: str, panels: tuple, path: Path, title: str, ylabel: str) -> Optional[Path]:
    """Bars of y per provider, grouped by the row key `group` (e.g. model), in one panel per `pass`."""
    figure = _panels(rows, y, panels)
    if figure is None:
        return None
    plt, fig, axes = figure
    for ax, pass_, mine in axes:
        groups = list(dict.fromkeys(r[group] for r in mine))
        providers = list(dict.fromkeys(r["provider"] for r in mine))
        width = 0.8 / max(len(providers), 1)
        for j, provider in enumerate(providers):
            values = {r[group]: r[y] for r in mine if r["provider"] == provider}
            xs = [i + j * width for i, g in enumerate(groups) if g in values]
            ax.bar(xs, [values[g] for g in groups if g in values], width, label=provider)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups, fontsize=8)
        ax.set(title=pass_, ylabel=ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, path, title)
