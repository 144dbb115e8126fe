"""`python -m tinyvit.study`: a grid of tinyvit.finetune runs, gathered into one table and one plot.

Two studies the ViT literature is built on, each one command:

- **Data scaling** (Dosovitskiy et al. 2021, fig. 3 and 4): the same models trained on growing
  subsets of one training set. A CNN's built-in assumptions (locality, translation equivariance)
  are worth most when data is scarce; a ViT has to learn them, so it should close the gap, or
  overtake, as the set grows. `--train-sizes 0.125 0.25 0.5 1` and a log-x plot of accuracy.
- **Architecture sweeps**: a from-scratch ViT's patch size, depth, heads, patch embedding (linear
  or conv) and positions (learned or sin-cos): `--override patch_size=2,4 pos_embed=learned,sincos`
  and grouped bars.

    python -m tinyvit.study --out runs/digits-scaling --models resnet18 \\
        'vit=vit_tiny_patch16_224 --image-size 16 --override patch_size=4,dim=64,depth=6,num_heads=4,mlp_dim=256' \\
        --train-sizes 0.125 0.25 0.5 1 --seeds 0 1 --steps 300 -- --dataset digits --recipe scratch

A model is a preset name, or `LABEL=PRESET FLAGS...`: that model's own tinyvit.finetune flags.
Everything after the study's own flags (optionally behind `--`) goes to every run unchanged.

How the runs are made comparable:
- **Nested subsets.** Every run draws its training images with the same data seed (`--data-seed`,
  passed to finetune): a fixed permutation of the training split whose first n images are the
  subset of size n (tinyvit.data.limit), so a larger subset contains every smaller one and all
  training seeds see the same images. `--seeds` vary initialisation, order and augmentation.
- **A fixed budget of optimizer steps.** With the same number of epochs, 10% of the data gets 10%
  of the updates and the curve would measure training length, not data (a small ViT on 10% of the
  digits with 30 epochs: 90 steps, 17%). So every run of a model gets the same number of steps
  (`--steps`, default: --epochs x the full split's steps per epoch, where a model's own --epochs
  or --batch-size give it its own budget), and a smaller subset makes more passes over its images. Passes are grouped by `--repeat-train` so that one epoch, and one validation,
  covers about as many images as an epoch of the full split. `--same-epochs` turns this off.
  Steps, epochs and passes are recorded per run.

Levers a run needs from another run (the levers study, `make levers`):
- **Self-supervised pretraining**, `--pretrain LABEL='FLAGS'`: before model LABEL is fine-tuned,
  one `python -m tinyvit.pretrain` run per seed (its folder `pretrain-LABEL-seedS`) learns from the
  images of the full training split without labels, with the model's own --model, --image-size and
  --override, the study's --dataset, and FLAGS (--epochs, --blr, --mask-ratio, ...); every run of
  LABEL with that seed then starts from its encoder (`--weights`). Its steps are in the table.
- **Supervised pretraining**: a model whose flags give `--weights DIR`, DIR a finished
  tinyvit.finetune run (e.g. on `--dataset fractals`, `make transfer`), starts every run from it;
  that run's steps, seconds and final validation accuracy become columns of results.csv.
- **Distillation**, `--teacher LABEL=TEACHER`: each run of LABEL distils from the run of model
  TEACHER with the same training images and seed (`--teacher`), so the teacher saw the same labels
  and no others. TEACHER's runs go first.
- **Reference lines**, `--reference knn logreg spreading`: 1-nearest-neighbour and logistic
  regression (scikit-learn) on the raw pixels of the same nested subsets, and label spreading (Zhou
  et al. 2004, a classical semi-supervised baseline: scikit-learn's LabelSpreading over a 7-nearest-
  neighbour graph of the whole training split, the subset's labels given, the rest's hidden, as
  FixMatch's `--unlabelled rest` sees them), drawn dashed (label spreading dotted) in the plot and
  written to reference.json; they have no seed.

Every run lives in its own folder under --out, a pretraining run as much as a fine-tuning one (both
are `Run`s, made and checked the same way); a finished one (summary.json) is skipped, an
interrupted one resumed (`--resume`), so the same command continues a study after Ctrl-C. A run
already there counts only if its recorded config is the one this command plans for it (another
pass-through flag is refused, naming it), and its summary.json and metrics.jsonl are read only
after they are checked against the run's manifest. The study's own flags (--seed, --limit-train,
...) are refused in the pass-through and in every model's flags, and a seed listed twice is refused.
Each run's output (its finetune command line, epoch table, errors) goes to --out/logs/<run>.log.
At the end: results.csv (one row per run), results.md (mean ± std over seeds) and scaling.png (accuracy
against training-set size, one line per model, log x) or sweep.png (grouped bars). Runs are
sequential in this process by default; `--jobs N` runs N processes at once, each on cpu_count / N
threads (a run starts once the runs it reads, its pretraining and its teacher, have finished).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Optional

from tinyvit.atomic import open_append, write_atomic
from tinyvit.errors import TinyvitError


class StudyError(TinyvitError):
    """A study folder, or a grid, the study refuses; one line."""


# Flags the study sets for each run; giving them as pass-through would contradict the grid.
OWNED = ("--model", "--out", "--seed", "--limit-train", "--data-seed", "--resume", "--force", "--repeat-train")

# ---------------------------------------------------------------------------------------------
# The grid.
# ---------------------------------------------------------------------------------------------


def check_owned(flags: list, where: str) -> None:
    """Refuse the flags the study sets itself, however spelled (argparse takes --limit-t for
    --limit-train): finetune's parser says which Config fields they set."""
    from tinyvit import finetune

    spelled = sorted({a.split("=")[0] for a in flags} & set(OWNED))
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            _, given = finetune.parse_args(list(flags))
    except SystemExit:
        given = set()  # a bad flag: the full check of each model's command line says which
    owned = {o[2:].replace("-", "_") for o in OWNED}
    names = spelled or sorted(f"--{k.replace('_', '-')}" for k in given & owned)
    if names:
        raise StudyError(f"{where}: {', '.join(names)}: the study sets these for each run (use --models, --out, "
                         f"--seeds, --train-sizes, --data-seed)")


@dataclass(frozen=True)
class ModelSpec:
    label: str  # how the model is named in the table and the plot
    preset: str
    flags: tuple = ()  # its own finetune flags


def parse_model(text: str) -> ModelSpec:
    """'resnet18' or 'vit=vit_tiny_patch16_224 --image-size 16 --override depth=6'."""
    head, _, rest = text.strip().partition(" ")
    label, eq, preset = head.partition("=")
    if not eq:
        label, preset = head, head
    if not re.fullmatch(r"[\w.-]+", label):
        raise StudyError(f"--models {text!r}: the label {label!r} may hold letters, digits, '.', '_' and '-' only")
    return ModelSpec(label, preset, tuple(shlex.split(rest)))


def split_values(text: str) -> list[str]:
    """'2,4' -> ['2', '4']; commas inside brackets stay: '[1,1,1,1],[2,2,2,2]' -> two values."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[("
        depth -= ch in "])"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [v.strip() for v in out + [cur] if v.strip()]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """['patch_size=2,4', 'pos_embed=learned,sincos'] -> {'patch_size': ['2', '4'], 'pos_embed': [...]}"""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not split_values(values):
            raise StudyError(f"--override {item!r}: expected KEY=V1,V2,... (e.g. patch_size=2,4)")
        if key.strip() in grid:
            raise StudyError(f"--override {key.strip()} appears twice")
        grid[key.strip()] = split_values(values)
    return grid


def parse_size(text: str, full: int) -> int:
    """'0.25' (a fraction of the training split) or '200' (a count) -> a count in [1, full]."""
    try:
        value = float(text)
    except ValueError:
        raise StudyError(f"--train-sizes {text!r}: expected a fraction (0.25) or a count (200)") from None
    if not math.isfinite(value):
        raise StudyError(f"--train-sizes {text}: expected a fraction in (0, 1] or a count from 1 to {full:,}")
    n = round(value * full) if ("." in text or "e" in text.lower()) and value <= 1 else int(value)
    if not 1 <= n <= full or (value != int(value) and value > 1):
        raise StudyError(f"--train-sizes {text}: the training split has {full:,} images; expected a fraction "
                         f"in (0, 1] or a count from 1 to {full:,}")
    return n


@dataclass
class Run:
    model: ModelSpec
    size: int
    overrides: dict  # key -> value (strings, as given)
    seed: int
    out: Path
    epochs: int = 1
    repeat: int = 1
    steps: int = 0
    argv: list = field(default_factory=list)
    pretrain: Optional["Run"] = None  # the run it starts from: its --pretrain run, or the finished run its --weights names
    teacher: Optional["Run"] = None  # the run it distils from (--teacher)
    entry: str = "finetune"  # the command that makes it: tinyvit.finetune, or tinyvit.pretrain

    @property
    def passes(self) -> int:
        return self.epochs * self.repeat

    def name(self) -> str:
        if self.entry == "pretrain":
            return f"pretrain-{self.model.label}-seed{self.seed}"
        parts = [self.model.label, f"n{self.size}"] + [f"{k}={v}" for k, v in self.overrides.items()] + [f"seed{self.seed}"]
        return re.sub(r"[^\w.=,+-]", "_", "-".join(parts))


def plan(models, sizes, grid, seeds, full: int, batch: int, steps: Optional[int], epochs: int,
         same_epochs: bool, data_seed: int, out: Path, passthrough: list, per_model: Optional[dict] = None) -> list[Run]:
    """Every run of the grid, with its step budget and its finetune command line. `per_model` maps a
    label to that model's own (batch, epochs) when its flags set them: its budget follows them."""
    runs = []
    for model, size, combo, seed in itertools.product(models, sizes, itertools.product(*grid.values()), seeds):
        m_batch, m_epochs = (per_model or {}).get(model.label, (batch, epochs))
        budget = steps if steps is not None else m_epochs * math.ceil(full / m_batch)
        overrides = dict(zip(grid, combo))
        run = Run(model, size, overrides, seed, out)
        if same_epochs:
            run.epochs, run.repeat = m_epochs, 1
        else:
            # About one full-split epoch of images per (repeated) epoch, then enough epochs for the budget.
            run.repeat = max(1, full // size)
            run.epochs = max(1, round(budget / math.ceil(size * run.repeat / m_batch)))
        run.steps = run.epochs * math.ceil(size * run.repeat / m_batch)
        run.out = out / run.name()
        # The model's own flags after the common ones: argparse keeps the last, so they win.
        argv = ["--model", model.preset, *passthrough, *model.flags, "--out", str(run.out), "--seed", str(seed),
                "--data-seed", str(data_seed), "--epochs", str(run.epochs), "--no-progress"]
        if size < full:
            argv += ["--limit-train", str(size)]
        if run.repeat > 1:
            argv += ["--repeat-train", str(run.repeat)]
        if overrides:
            argv += ["--override", ",".join(f"{k}={v}" for k, v in overrides.items())]
        run.argv = argv
        runs.append(run)
    return runs


# ---------------------------------------------------------------------------------------------
# Running: skip what finished, resume what was interrupted.
# ---------------------------------------------------------------------------------------------


def plan_pretraining(models, specs: dict, checked: dict, seeds, data_seed: int, out: Path) -> dict:
    """(label, seed) -> the tinyvit.pretrain Run that model's runs with that seed start from."""
    from tinyvit import pretrain

    plans = {}
    for m in models:
        if m.label not in specs:
            continue
        cfg = checked[m.label]
        common = ["--model", m.preset, "--dataset", cfg.dataset, "--data-dir", str(cfg.data_dir)]
        common += ["--image-size", str(cfg.image_size)] if cfg.image_size else []
        common += [a for o in cfg.override for a in ("--override", o)]
        common += ["--num-workers", str(cfg.num_workers)] if cfg.num_workers is not None else []
        for seed in seeds:
            run = Run(ModelSpec(m.label, m.preset), 0, {}, seed, out, entry="pretrain")
            run.out = out / run.name()
            run.argv = [*common, *specs[m.label], "--out", str(run.out), "--seed", str(seed), "--data-seed",
                        str(data_seed), "--no-progress"]
            try:
                run.epochs = pretrain.parse_args(run.argv)[0].epochs
            except SystemExit:
                raise StudyError(f"--pretrain {m.label}: tinyvit.pretrain rejected its flags (above)") from None
            plans[(m.label, seed)] = run
    return plans


class RunState(Enum):
    """What a run's folder holds, and so what the study does with it."""
    DONE = "done"  # summary.json: finished, read as it is
    RESUMABLE = "resumable"  # a checkpoint.pt short of its epochs: continued with --resume
    TO_START = "to start"  # nothing, or a run stopped while writing its summary: started over with --force


def run_state(run: Run) -> RunState:
    if (run.out / "summary.json").is_file():
        return RunState.DONE
    if (run.out / "checkpoint.pt").is_file() and _checkpoint_epoch(run) < run.epochs:
        return RunState.RESUMABLE
    return RunState.TO_START


def _checkpoint_epoch(run: Run) -> float:
    """How far an interrupted run got (epochs, fractional mid-epoch); 0 for an unreadable checkpoint.
    Its checksum is left to `recorded_config`, which reads what the resume will use."""
    from tinyvit.checkpoint import read_run_state

    try:
        ckpt = read_run_state(run.out / "checkpoint.pt", version=None, verify=False)
        return ckpt["epoch"] + (0.5 if ckpt["batches_done"] else 0.0)
    except (TinyvitError, KeyError, TypeError):
        return 0.0


def read_run_file(run: Run, name: str):
    """summary.json (a dict) or metrics.jsonl (one dict per epoch) of a run, checked against the
    run's manifest first: an edited accuracy must not reach results.csv (tinyvit/rundir.py: what is
    read is what was written)."""
    from tinyvit import rundir

    path = run.out / name
    try:
        if name == "metrics.jsonl":
            return rundir.read_metrics(run.out)
        rundir.verify(path)
        return json.loads(path.read_text())
    except (rundir.ChecksumError, rundir.RunDirError) as e:
        raise StudyError(f"{e}; the study reports only what its runs wrote") from None
    except TinyvitError as e:
        raise StudyError(str(e)) from None
    except (OSError, ValueError) as e:
        raise StudyError(f"{path}: not readable ({e})") from None


def recorded_config(run: Run) -> Optional[dict]:
    """The config a finished (summary.json) or interrupted (checkpoint.pt) run was made with."""
    st = run_state(run)
    if st is RunState.DONE:
        return read_run_file(run, "summary.json").get("config")
    if st is RunState.RESUMABLE:
        from tinyvit.checkpoint import read_run_state

        try:
            return read_run_state(run.out / "checkpoint.pt")["config"]
        except TinyvitError as e:
            raise StudyError(str(e)) from None
    return None


def check_recorded(runs: list[Run]) -> None:
    """A run already in --out counts only if it was made with the command this study plans for it.
    Otherwise a rerun with other pass-through flags would report the old runs under the new command."""
    from dataclasses import fields

    for run in runs:
        stored = recorded_config(run)
        if stored is None:
            continue
        if not isinstance(stored, dict):
            raise StudyError(f"{run.out}: its recorded config is not an object")
        entry = entry_point(run)
        # How a run executes, not what it computes (the --resume rule); --epochs does matter here.
        ignored = entry.RUNTIME_FIELDS - {"epochs"}
        planned, _ = entry.parse_args(run.argv)
        known = {f.name for f in fields(planned)}
        try:
            made = type(planned)(**{k: v for k, v in stored.items() if k in known})
        except TypeError as e:
            raise StudyError(f"{run.out}: its recorded config is not readable ({e})") from None
        for f in fields(planned):
            k = f.name
            if k in ignored or (k == "epochs" and run_state(run) is RunState.RESUMABLE):
                continue
            now, then = (planned.resolved_lr(), made.resolved_lr()) if k == "lr" else (getattr(planned, k), getattr(made, k))
            if now != then:
                raise StudyError(
                    f"{run.out} was made with --{k.replace('_', '-')} {then!r}; this study plans {now!r} for it. "
                    f"Its result would be reported under the wrong command: move the folder away, or choose another --out"
                )


def entry_point(run: Run):
    """The module of the command that makes the run (tinyvit.finetune or tinyvit.pretrain)."""
    import importlib

    return importlib.import_module(f"tinyvit.{run.entry}")


def command(run: Run) -> list[str]:
    """The run's finetune flags: continue an interrupted run, or (re)start one that saved nothing
    yet (--force: the folder is the study's own, and holds no finished epoch)."""
    return run.argv + (["--resume"] if run_state(run) is RunState.RESUMABLE else ["--force"])


def log_path(run: Run) -> Path:
    """Where a run's output goes: beside its folder, not in it, since a run folder holds only what
    tinyvit.finetune wrote (its manifest; anything else makes --force and --resume refuse it)."""
    return run.out.parent / "logs" / f"{run.name()}.log"


def open_log(run: Run):
    """The run's log, to append to. The study's folders hold only what it made: a log, the logs
    folder or a run folder that is a link would send its writes outside --out, so it is refused."""
    for folder in (log_path(run).parent, run.out):
        if folder.is_symlink():
            raise StudyError(f"{folder}: a symbolic link where the study keeps its own folder; not followed (remove it)")
    log_path(run).parent.mkdir(parents=True, exist_ok=True)
    try:
        return open_append(log_path(run))
    except OSError as e:
        raise StudyError(e.strerror or str(e)) from None


def run_inline(run: Run) -> int:
    """One run in this process (no interpreter start-up per run); its output goes to its log."""
    argv = command(run)
    with open_log(run) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"$ python -m tinyvit.{run.entry} {shlex.join(argv)}", flush=True)
        try:
            return entry_point(run).main(argv)
        except SystemExit as e:  # a user error: finetune's one line, which the study repeats
            print(e.code, flush=True)
            return e.code if isinstance(e.code, int) else 2


def start_process(run: Run, threads: int) -> subprocess.Popen:
    argv = command(run)
    log = open_log(run)
    log.write(f"$ python -m tinyvit.{run.entry} {shlex.join(argv)}\n")
    log.flush()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # N processes share the cores
    return subprocess.Popen([sys.executable, "-m", f"tinyvit.{run.entry}", *argv], stdout=log, stderr=subprocess.STDOUT, env=env)


def last_line(run: Run) -> str:
    try:
        lines = [l for l in log_path(run).read_text().splitlines() if l.strip()]
        return lines[-1] if lines else ""
    except OSError:
        return ""


def ready(run: Run) -> bool:
    """The runs it reads are finished: the one it starts from and its teacher."""
    return all(dep is None or run_state(dep) is RunState.DONE for dep in (run.pretrain, run.teacher))


def execute(runs: list[Run], jobs: int, log) -> int:
    """Run what is not done; 0 when all finished, else the first failing exit code."""
    if not runs:
        return 0
    todo = [r for r in runs if run_state(r) is not RunState.DONE]
    if len(todo) < len(runs):
        log(f"{len(runs) - len(todo)} of {len(runs)} runs already finished: skipped")
    t0, done = time.perf_counter(), 0

    def finished(run: Run, code: int, seconds: float) -> int:
        nonlocal done
        done += 1
        if code == 0 and run.entry == "pretrain":
            s = read_summary(run)
            log(f"[{done}/{len(todo)}] {run.name()}: MAE loss {s['final_loss']:.4f} after {s['steps']} steps, {seconds:.0f} s")
        elif code == 0:
            s = read_summary(run)
            log(f"[{done}/{len(todo)}] {run.name()}: val acc {100 * s['final']['val_acc']:.2f}% "
                f"(best {100 * s['best']['val_acc']:.2f}%), {run.steps} steps, {seconds:.0f} s")
        elif code in (130, 143):  # finetune saved a checkpoint on Ctrl-C / SIGTERM
            log(f"{run.name()}: interrupted, checkpoint saved; run the same command again to continue the study")
        else:
            log(f"{run.name()}: failed (exit {code}): {last_line(run)}\n  full log: {log_path(run)}")
        return code

    if jobs <= 1:
        for run in todo:
            start = time.perf_counter()
            code = finished(run, run_inline(run), time.perf_counter() - start)
            if code:
                return code
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        pending, active, first_error = list(todo), {}, 0
        try:
            while pending or active:
                while len(active) < jobs and not first_error:
                    run = next((r for r in pending if ready(r)), None)  # a student waits for its teacher
                    if run is None:
                        break
                    pending.remove(run)
                    active[run.name()] = (run, start_process(run, threads), time.perf_counter())
                if pending and not active and not first_error:
                    raise RuntimeError(f"{pending[0].name()} waits for a run that is neither finished nor planned")
                time.sleep(0.2)
                for key, (run, proc, start) in list(active.items()):
                    if proc.poll() is not None:
                        del active[key]
                        code = finished(run, proc.returncode, time.perf_counter() - start)
                        first_error = first_error or code
                if first_error and not active:
                    break
        except KeyboardInterrupt:  # the children got the same SIGINT: they save a checkpoint and exit
            for run, proc, _ in active.values():
                proc.wait()
            log("interrupted: finished runs are kept, the others saved checkpoints; run the same command again to continue")
            return 130
        if first_error:
            return first_error
    log(f"{len(todo)} runs in {time.perf_counter() - t0:.0f} s")
    return 0


# ---------------------------------------------------------------------------------------------
# Gathering: results.csv, results.md, the plot.
# ---------------------------------------------------------------------------------------------


def read_summary(run: Run) -> dict:
    return read_run_file(run, "summary.json")


def _flops_per_image(model) -> int:
    """Forward FLOPs per image as the model runs (tinyvit/flops.py: a ViT by formula, other models by
    hooks on their convolutions and linear layers)."""
    from tinyvit.flops import model_flops

    return model_flops(model, model.preprocess.image_size)


def gather(runs: list[Run], full: int) -> list[dict]:
    from tinyvit.convert import load_pretrained
    from tinyvit import rundir

    flops_cache = {}
    rows = []
    for run in runs:
        if run_state(run) is not RunState.DONE:
            continue
        s = read_summary(run)
        key = (run.model, tuple(run.overrides.items()))
        if key not in flops_cache:
            flops_cache[key] = _flops_per_image(load_pretrained(run.out))
        history = read_run_file(run, "metrics.jsonl")
        batch, repeat = s["config"]["batch_size"], s["config"].get("repeat_train", 1)
        rows.append({
            "model": run.model.label, "preset": run.model.preset, "train_size": run.size,
            "train_fraction": round(run.size / full, 4), **run.overrides, "seed": run.seed,
            # What the run did (its own record), not what this plan would give it today.
            "epochs": s["epochs"], "passes": s["epochs"] * repeat,
            "steps": sum(math.ceil(r["train_images"] / batch) for r in history),
            **(pretrain_columns(run.pretrain) if run.pretrain else {}),
            "params": s["total_params"], "flops_per_image": flops_cache[key],
            "final_val_acc": round(s["final"]["val_acc"], 6), "best_val_acc": round(s["best"]["val_acc"], 6),
            "seconds": round(sum(r["seconds"] for r in history), 1), "run": run.out.name,
        })
    return rows


def pretrain_columns(pre: Run) -> dict:
    """What a run's pretraining cost: its steps and seconds; a supervised one (a tinyvit.finetune run
    given as --weights) also its final validation accuracy on its own dataset (held-out fractals ...)."""
    s = read_run_file(pre, "summary.json")
    if "final" not in s:  # tinyvit.pretrain (MAE): no labels, no accuracy
        return {"pretrain_steps": s["steps"], "pretrain_seconds": round(s["seconds"], 1)}
    history = read_run_file(pre, "metrics.jsonl")
    return {"pretrain_steps": sum(math.ceil(r["train_images"] / s["config"]["batch_size"]) for r in history),
            "pretrain_seconds": round(sum(r["seconds"] for r in history), 1),
            "pretrain_val_acc": round(s["final"]["val_acc"], 6)}


def write_csv(rows: list[dict], path: Path) -> None:
    import io

    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, lambda f: f.write(buf.getvalue().encode()))


def axes_of(rows: list[dict], grid: dict) -> list[str]:
    return ["model", "train_size", *grid]


def group(rows: list[dict], keys: list[str]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return groups


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def markdown_table(rows: list[dict], grid: dict) -> str:
    """One line per grid point: the accuracies as mean ± std over seeds (percent)."""
    keys = axes_of(rows, grid)
    pre = any("pretrain_steps" in r for r in rows)  # a column only in studies with pretraining
    lines = ["| " + " | ".join(keys) + " | seeds | steps |" + (" pretrain steps |" if pre else "")
             + " params | MFLOPs/img | final val acc % | best val acc % | s/run |",
             "|" + "---|" * (len(keys) + 7 + pre)]
    for values, rs in group(rows, keys).items():
        final, best = mean_std([100 * r["final_val_acc"] for r in rs]), mean_std([100 * r["best_val_acc"] for r in rs])
        lines.append("| " + " | ".join(str(v) for v in values) + f" | {len(rs)} | {rs[0]['steps']} | "
                     + (f"{rs[0].get('pretrain_steps', 0)} | " if pre else "") + f"{rs[0]['params']:,} | "
                     f"{rs[0]['flops_per_image'] / 1e6:.2f} | {final[0]:.2f} ± {final[1]:.2f} | {best[0]:.2f} ± {best[1]:.2f} | "
                     f"{statistics.fmean(r['seconds'] for r in rs):.0f} |")
    return "\n".join(lines) + "\n"


REFERENCES = {"knn": "1-NN, raw pixels", "logreg": "logistic regression, raw pixels",
              "spreading": "label spreading, raw pixels"}


def reference_accuracies(dataset: str, data_dir, sizes: list, data_seed: int, which: list) -> dict:
    """Validation accuracy of scikit-learn classifiers on raw pixels (0..1), trained on the same nested
    subsets as the runs (tinyvit.data.limit with the data seed): {name: {size: accuracy}}."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.semi_supervised import LabelSpreading

    from tinyvit import data

    splits = data.load_splits(dataset, Path(data_dir) if data_dir else None, seed=data_seed)

    def arrays(ds, labels: bool = True):
        items = [ds[i] for i in range(len(ds))]
        x = np.stack([np.asarray(im, dtype=np.float32).ravel() / 255 for im, _ in items])
        return x, np.array([y for _, y in items]) if labels else None

    x_val, y_val = arrays(splits.val)
    x_all = arrays(splits.train, labels=False)[0] if "spreading" in which else None  # the whole split, once
    out = {}
    for name in which:
        out[REFERENCES[name]] = {}
        for n in sizes:
            subset = data.limit(splits.train, n, data_seed)
            x, y = arrays(subset)
            if name == "spreading":  # every training image; the subset's labels, the others' never read (-1)
                known = list(subset.indices) if isinstance(subset, data.Subset) else list(range(len(splits.train)))
                y_all = np.full(len(x_all), -1)
                y_all[known] = y
                # The knn kernel (k = 7, scikit-learn's default): the rbf kernel's default gamma of 20
                # leaves pixels in [0, 1] with no neighbour of weight above 0.
                model, x, y = LabelSpreading(kernel="knn", n_neighbors=7, max_iter=1000), x_all, y_all
            else:
                model = KNeighborsClassifier(1) if name == "knn" else LogisticRegression(max_iter=2000)
            out[REFERENCES[name]][n] = float((model.fit(x, y).predict(x_val) == y_val).mean())
    return out


def plot(rows: list[dict], grid: dict, out: Path, title: str, references: Optional[dict] = None) -> Optional[Path]:
    """scaling.png when the training size varies, else sweep.png (grouped bars); None for one point."""
    from tinyvit.report import pyplot, save_figure

    plt = pyplot()
    sizes = sorted({r["train_size"] for r in rows})
    varying = [k for k in grid if len({r.get(k) for r in rows}) > 1]
    if len(sizes) > 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for line, rs in group(rows, ["model", *varying]).items():
            points = sorted(group(rs, ["train_size"]).items())
            stats = [mean_std([100 * r["final_val_acc"] for r in p]) for _, p in points]
            label = ", ".join([str(line[0])] + [f"{k}={v}" for k, v in zip(varying, line[1:])])
            ax.errorbar([n for (n,), _ in points], [m for m, _ in stats], yerr=[s for _, s in stats],
                        marker="o", capsize=3, label=label)
        for name, accs in (references or {}).items():
            grey, dotted = "1-NN" in name, "spreading" in name  # one style per reference, told apart in print too
            ax.plot(sizes, [100 * accs[n] for n in sizes], linestyle=":" if dotted else "--",
                    color="grey" if grey else "black", alpha=0.7, label=name)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set(xlabel="training images (log scale)", ylabel="validation accuracy (%)", title=title)
        path = out / "scaling.png"
    else:
        hue_key = varying[-1] if varying else "model"
        group_keys = [k for k in ["model", *varying] if k != hue_key and len({r.get(k) for r in rows}) > 1]
        groups = group(rows, group_keys)
        hues = list(dict.fromkeys(r.get(hue_key) for r in rows))
        if len(groups) * len(hues) < 2:
            return None
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * len(hues) ** 0.5 + 2), 4.5))
        width = 0.8 / len(hues)
        for j, hue in enumerate(hues):
            xs, ms, ss = [], [], []
            for i, (gvalues, rs) in enumerate(groups.items()):
                picked = [100 * r["final_val_acc"] for r in rs if r.get(hue_key) == hue]
                if picked:
                    m, s = mean_std(picked)
                    xs.append(i + (j - (len(hues) - 1) / 2) * width), ms.append(m), ss.append(s)
            ax.bar(xs, ms, width, yerr=ss, capsize=3, label=f"{hue_key}={hue}")
        ax.set_xticks(range(len(groups)), [", ".join(f"{k}={v}" for k, v in zip(group_keys, g)) or "all" for g in groups],
                      rotation=20, ha="right")
        ax.set(ylabel="validation accuracy (%)", title=title)
        low = min(100 * r["final_val_acc"] for r in rows)
        ax.set_ylim(max(0, low - 10), 100)
        path = out / "sweep.png"
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(plt, fig, path)
    return path


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tinyvit.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the study's folder: one subfolder per run, results.csv, results.md, the plot")
    p.add_argument("--models", nargs="+", required=True, metavar="MODEL",
                   help="presets, or 'LABEL=PRESET FLAGS...' with that model's own finetune flags")
    p.add_argument("--train-sizes", nargs="+", default=["1.0"], metavar="SIZE",
                   help="fractions (0.25) or counts (200) of the training split (default: all of it)")
    p.add_argument("--override", nargs="+", default=[], metavar="KEY=V1,V2",
                   help="config fields to sweep, e.g. patch_size=2,4 pos_embed=learned,sincos")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (default: 0)")
    p.add_argument("--data-seed", type=int, default=0, help="the permutation the nested subsets are cut from (default: 0)")
    p.add_argument("--steps", type=int, help="optimizer steps per run (default: --epochs x the full split's steps per epoch)")
    p.add_argument("--same-epochs", action="store_true", help="every run gets --epochs as given (no step budget)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, as separate processes of cpu_count / N threads (default: 1, in this process)")
    p.add_argument("--title", help="the plot's title")
    p.add_argument("--pretrain", action="extend", nargs="+", default=[], metavar="LABEL=FLAGS",
                   help="pretrain model LABEL with tinyvit.pretrain FLAGS (one run per seed) and fine-tune from it")
    p.add_argument("--teacher", action="extend", nargs="+", default=[], metavar="LABEL=TEACHER",
                   help="model LABEL distils from model TEACHER's run on the same images and seed")
    p.add_argument("--reference", nargs="+", default=[], choices=sorted(REFERENCES),
                   help="reference lines in the plot: knn (1-NN), logreg (logistic regression), spreading (label spreading, the rest of the training split unlabelled) on raw pixels")
    return p


@dataclass
class Setup:
    """The study's arguments, checked: what `plan` and the report need."""
    models: list
    grid: dict
    checked: dict  # label -> that model's finetune Config
    pretrain: dict  # label -> tinyvit.pretrain flags
    teachers: dict  # student label -> teacher label
    cfg: object  # the first model's Config: the dataset and the shared flags
    full: int  # images in the full training split
    sizes: list


def check_arguments(args, passthrough: list) -> Setup:
    """Every flag checked, each model's by finetune's own parser, and the dataset read for its size,
    before anything runs."""
    from tinyvit import data, finetune
    from tinyvit.presets import parse_overrides

    check_owned(passthrough, "the pass-through flags")
    if args.jobs < 1:
        raise StudyError(f"--jobs {args.jobs} must be at least 1")
    repeated = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
    if repeated:
        raise StudyError(f"--seeds {' '.join(map(str, args.seeds))}: seed {repeated[0]} is listed twice "
                         f"(it would be one run, counted as two seeds)")
    if args.steps is not None and args.steps < 1:
        raise StudyError(f"--steps {args.steps} must be at least 1")
    models = [parse_model(m) for m in args.models]
    labels = {m.label for m in models}
    if len(labels) < len(models):
        raise StudyError("--models: two models share a label; name them LABEL=PRESET ...")
    grid = parse_grid(args.override)
    checked = {}
    for m in models:
        check_owned(list(m.flags), f"--models {m.label}")
        try:
            cfg, _ = finetune.parse_args(["--model", m.preset, *passthrough, *m.flags])
        except SystemExit:
            raise StudyError(f"--models {m.label}: finetune rejected its flags (above)") from None
        for combo in itertools.product(*grid.values()):
            parse_overrides(list(cfg.override) + [f"{k}={v}" for k, v in zip(grid, combo)], m.preset)
        checked[m.label] = cfg
    pretrain, teachers = {}, {}
    for item in args.pretrain:
        label, sep, flags = item.partition("=")
        if not sep or label not in labels:
            raise StudyError(f"--pretrain {item!r}: expected LABEL=FLAGS with LABEL one of {', '.join(sorted(labels))}")
        pretrain[label] = tuple(shlex.split(flags))
    for item in args.teacher:
        label, sep, teacher = item.partition("=")
        if not sep or label not in labels or teacher not in labels or teacher == label:
            raise StudyError(f"--teacher {item!r}: expected LABEL=TEACHER, two different labels of --models")
        teachers[label] = teacher
    cfg = next(iter(checked.values()))
    if cfg.limit_train is not None:
        raise StudyError("--limit-train: the study sets it from --train-sizes")
    splits = data.load_splits(cfg.dataset, Path(cfg.data_dir) if cfg.data_dir else None, seed=args.data_seed)
    full = len(splits.train)
    sizes = sorted({parse_size(s, full) for s in args.train_sizes})
    return Setup(models, grid, checked, pretrain, teachers, cfg, full, sizes)


def link_levers(runs: list[Run], pretraining: dict, teachers: dict, checked: Optional[dict] = None) -> None:
    """A pretrained model's runs start from their seed's pretraining run, or from the finished
    tinyvit.finetune run its --weights names (supervised pretraining, e.g. on fractals: its cost and
    accuracy go into the table); a student distils from the teacher's run on the same images, seed
    and overrides, and the teachers' runs go first."""
    for run in runs:
        cfg = (checked or {}).get(run.model.label)
        if (run.model.label, run.seed) in pretraining:
            run.pretrain = pretraining[(run.model.label, run.seed)]
            run.argv += ["--weights", str(run.pretrain.out)]
        elif cfg is not None and (Path(cfg.weights) / "summary.json").is_file():
            run.pretrain = Run(ModelSpec(Path(cfg.weights).name, ""), 0, {}, 0, Path(cfg.weights))
        if run.model.label in teachers:
            twin = next(r for r in runs if r.model.label == teachers[run.model.label] and r.size == run.size
                        and r.seed == run.seed and r.overrides == run.overrides)
            run.argv += ["--teacher", str(twin.out)]
            run.teacher = twin
    runs.sort(key=lambda r: r.model.label not in set(teachers.values()))  # a stable sort


def report(runs: list[Run], setup: Setup, args, out: Path, log) -> None:
    """results.csv, results.md (with the reference lines), the plot, and the table on the console."""
    rows = gather(runs, setup.full)
    if not rows:
        return
    write_csv(rows, out / "results.csv")
    table = markdown_table(rows, setup.grid)
    references = None
    if args.reference:
        references = reference_accuracies(setup.cfg.dataset, setup.cfg.data_dir, setup.sizes, args.data_seed, args.reference)
        write_atomic(out / "reference.json", lambda f: f.write((json.dumps(references, indent=1) + "\n").encode()))
        table += "\nReference, raw pixels, same subsets: " + "; ".join(
            f"{name} " + ", ".join(f"{n}: {100 * a:.1f}%" for n, a in accs.items()) for name, accs in references.items()) + "\n"
    write_atomic(out / "results.md", lambda f: f.write(table.encode()))
    title = args.title or f"{setup.cfg.dataset}: {', '.join(m.label for m in setup.models)}"
    figure = plot(rows, setup.grid, out, title, references)
    log("\n" + table)
    log(f"wrote {out}/results.csv, results.md" + (f", {figure.name}" if figure else ""))


def study(args, passthrough: list, log) -> int:
    setup = check_arguments(args, passthrough)
    out = Path(args.out)
    runs = plan(setup.models, setup.sizes, setup.grid, args.seeds, setup.full, setup.cfg.batch_size, args.steps,
                setup.cfg.epochs, args.same_epochs, args.data_seed, out, passthrough,
                per_model={label: (c.batch_size, c.epochs) for label, c in setup.checked.items()})
    pretraining = plan_pretraining(setup.models, setup.pretrain, setup.checked, args.seeds, args.data_seed, out)
    link_levers(runs, pretraining, setup.teachers, setup.checked)
    check_recorded(list(pretraining.values()) + runs)  # a run already there must have been made by this plan
    out.mkdir(parents=True, exist_ok=True)
    budgets = "" if args.same_epochs else "; optimizer steps per run: " + ", ".join(
        f"{m.label} {next(r.steps for r in runs if r.model == m and r.size == setup.sizes[-1])}"
        for m in setup.models) + " (smaller subsets: more passes)"
    log(f"study {out}: {len(setup.models)} model(s) x {len(setup.sizes)} size(s) {setup.sizes} x "
        f"{math.prod(len(v) for v in setup.grid.values())} config(s) x {len(args.seeds)} seed(s) = {len(runs)} runs "
        f"on {setup.cfg.dataset} ({setup.full:,} training images){budgets}")
    try:
        code = execute(list(pretraining.values()), args.jobs, log) or execute(runs, args.jobs, log)
    except KeyboardInterrupt:  # between two runs (inside one, finetune saves a checkpoint and returns 130)
        log("interrupted: finished runs are kept; run the same command again to continue the study")
        code = 130
    report(runs, setup, args, out, log)
    return code


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, passthrough = build_parser().parse_known_args(argv)
    passthrough = [a for a in passthrough if a != "--"]
    try:
        return study(args, passthrough, lambda msg: print(msg, flush=True))
    except TinyvitError as e:  # the user's mistake; anything else is a bug and keeps its traceback
        from tinyvit import data

        message = data.error_message(e) if isinstance(e, data.DatasetError) else str(e)
        raise SystemExit(f"tinyvit.study: error: {message}") from None


if __name__ == "__main__":
    sys.exit(main())
