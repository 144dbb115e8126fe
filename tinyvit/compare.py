"""Compare fine-tuning runs side by side: `python -m tinyvit.compare RUN_DIR [RUN_DIR ...]`.

Reads each run's `metrics.jsonl` (one JSON object per epoch, written by tinyvit.finetune) and
prints, per run, the final and best validation accuracy, the final validation loss, the epochs
and the time. Used by `make study` to set the ViT beside the ResNet.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from tinyvit.errors import TinyvitError
from tinyvit.rundir import read_metrics


@dataclass
class RunSummary:
    name: str
    epochs: int
    final_val_acc: float
    best_val_acc: float
    final_val_loss: float
    final_train_acc: float
    seconds: float


def summarise(run_dir: Path) -> RunSummary:
    rows = read_metrics(run_dir)
    last = rows[-1]
    return RunSummary(
        name=Path(run_dir).name,
        epochs=int(last["epoch"]),
        final_val_acc=float(last["val_acc"]),
        best_val_acc=max(float(r["val_acc"]) for r in rows),
        final_val_loss=float(last["val_loss"]),
        final_train_acc=float(last["train_acc"]),
        seconds=sum(float(r["seconds"]) for r in rows),
    )


def format_table(runs: list[RunSummary]) -> str:
    header = f"{'run':<24} {'epochs':>6} {'val acc':>8} {'best':>8} {'val loss':>9} {'train acc':>9} {'time':>9}"
    lines = [header, "-" * len(header)]
    for r in runs:
        lines.append(
            f"{r.name:<24} {r.epochs:>6} {100 * r.final_val_acc:>7.2f}% {100 * r.best_val_acc:>7.2f}% "
            f"{r.final_val_loss:>9.4f} {100 * r.final_train_acc:>8.2f}% {r.seconds:>8.1f}s"
        )
    return "\n".join(lines)


def main(argv=None) -> list[RunSummary]:
    parser = argparse.ArgumentParser(prog="python -m tinyvit.compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="--out directories of tinyvit.finetune runs")
    args = parser.parse_args(argv)
    try:
        runs = [summarise(r) for r in args.runs]
    except TinyvitError as e:
        parser.exit(2, f"error: {e}\n")
    print(format_table(runs))
    return runs


if __name__ == "__main__":
    main()
