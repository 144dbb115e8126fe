"""What a run reports: its epoch table, the feature cache's speed-up, and its two figures.

Plain functions of the run's history (one dict per epoch, as metrics.jsonl holds them).
matplotlib loads only when a figure is drawn (`pyplot`: files only, no display); tinyvit.study
draws its scaling plot through the same `pyplot` and `save_figure`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tinyvit.atomic import write_atomic


def timing(history: list) -> dict:
    """Epoch 1 against the later ones. With a feature cache, epoch 1 runs the frozen prefix once per
    image (building the cache), as every epoch of a plain loop does; the later epochs do not, so
    their ratio is the cache's speed-up over a plain loop."""
    first, later = history[0], history[1:]
    out = {"epoch1_seconds": first["seconds"], "cache_seconds": first["cache_seconds"],
           "epoch1_train_images_per_s": first["train_images_per_s"], "cached": first["cached"]}
    if later:
        mean = sum(r["seconds"] for r in later) / len(later)
        out.update(later_epoch_seconds=mean, speedup=first["seconds"] / max(mean, 1e-9),
                   later_train_images_per_s=sum(r["train_images_per_s"] for r in later) / len(later))
    return out


def speedup_line(history: list) -> str:
    t = timing(history)
    return (f"feature cache: epoch 1 took {t['epoch1_seconds']:.1f} s ({t['cache_seconds']:.1f} s building the cache), "
            f"later epochs {t['later_epoch_seconds']:.1f} s: {t['speedup']:.1f}x faster per epoch; training "
            f"{t['epoch1_train_images_per_s']:,.0f} -> {t['later_train_images_per_s']:,.0f} img/s")


def format_table(history: list) -> str:
    lines = [f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'val loss':>9} {'val acc':>8} {'lr':>9} {'seconds':>8} {'img/s':>8}"]
    for r in history:
        lines.append(f"{r['epoch']:>5} {r['train_loss']:>10.4f} {100 * r['train_acc']:>8.2f}% {r['val_loss']:>9.4f} "
                     f"{100 * r['val_acc']:>7.2f}% {r['lr']:>9.2e} {r['seconds']:>8.1f} {r['train_images_per_s']:>8,.0f}")
    return "\n".join(lines)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt, fig, path: Path) -> None:
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def plot_curves(history: list, path: Path) -> None:
    plt = pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], marker="o", label=split)
        ax_acc.plot(epochs, [100 * r[f"{split}_acc"] for r in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(plt, fig, path)


def plot_confusion(confusion: torch.Tensor, classes: list, path: Path) -> None:
    plt = pyplot()
    c = len(classes)
    rows = confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)  # each true class sums to 1
    fig, ax = plt.subplots(figsize=(min(4 + 0.5 * c, 16), min(3.5 + 0.5 * c, 15)))
    im = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    if c <= 20:  # beyond that, labels and counts are unreadable
        ax.set_xticks(range(c), classes, rotation=45, ha="right")
        ax.set_yticks(range(c), classes)
        for i in range(c):
            for j in range(c):
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if rows[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="validation confusion (counts; colour: fraction of the true class)")
    fig.colorbar(im, ax=ax)
    save_figure(plt, fig, path)
