"""`python -m tinyvit.evaluate`: loss, accuracy and confusion matrix of a saved model on a dataset's
validation split.

    python -m tinyvit.evaluate --model-dir runs/vit_base_patch16_224-cifar10-last --dataset cifar10 --data-dir data

--model-dir is anything `tinyvit.load_pretrained` reads; a directory written by tinyvit.finetune
also holds classes.json, and the dataset's classes must match it. The images get the checkpoint's
own preprocessing (upsampled straight to its resolution for 32-pixel datasets, as in training).

The loop below (`evaluate`) is also the one tinyvit.finetune validates with.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

from tinyvit.device import AMP_CHOICES, amp_dtype, autocast, resolve_device
from tinyvit.errors import MissingFileError, TinyvitError
from tinyvit.sums import Sums

# ---------------------------------------------------------------------------------------------
# The evaluation loop.
# ---------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """One pass over a dataset, summed over all processes: images, mean loss, accuracy and the
    confusion matrix [true class, predicted class] (on the CPU)."""

    count: int
    loss: float
    acc: float
    confusion: torch.Tensor

    @classmethod
    def of(cls, sums: Sums) -> "Tally":
        t = sums.total()
        n = max(t["count"], 1)
        return cls(int(t["count"]), t["loss_sum"] / n, t["correct"] / n, t["confusion"].cpu())

    def per_class_acc(self) -> list[float]:
        return per_class_accuracy(self.confusion)


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    """Recall of each true class (row) of a confusion matrix; 0 for a class with no images."""
    conf = confusion.cpu().double()
    return (conf.diag() / conf.sum(1).clamp(min=1)).tolist()


@torch.no_grad()
def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    device: torch.device,
    dtype: Optional[torch.dtype] = None,
    progress=None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Optional[Tally]:
    """Run `forward` (inputs -> logits) over `batches` of (inputs, labels); the Tally over all
    processes (each passes its own share of the batches), or None when `should_stop()` turned true
    on the way (a single process only: the others would wait for it)."""
    c = num_classes
    sums = Sums(device, ("loss_sum", "correct", "count"), confusion=(c, c))
    for inputs, labels in batches:
        inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = forward(inputs)
        pred = logits.argmax(dim=1)
        sums.add(loss_sum=F.cross_entropy(logits.float(), labels, reduction="sum"), correct=(pred == labels).sum(),
                 count=labels.numel(), confusion=torch.bincount(labels * c + pred, minlength=c * c).view(c, c))
        if progress is not None:
            progress.update(labels.numel())
        if should_stop():
            return None
    return Tally.of(sums)


# ---------------------------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    model_dir: str
    dataset: str = "cifar10"
    data_dir: Optional[str] = "data"
    batch_size: int = 256
    device: str = "auto"
    amp: str = "auto"
    num_workers: int = 2
    limit: Optional[int] = None
    seed: int = 0  # as given to tinyvit.finetune: it draws the synthetic images and the --limit subset
    json: Optional[str] = None  # also write the results to this file


def parse_args(argv=None) -> EvalConfig:
    from tinyvit.data import DATASETS, dataset_arg

    d = EvalConfig(model_dir="")
    p = argparse.ArgumentParser(prog="python -m tinyvit.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True, help="a saved model (any format tinyvit.load_pretrained reads)")
    p.add_argument("--dataset", type=dataset_arg, default=d.dataset,
                   help=f"{', '.join(DATASETS)}, fractals:KEY=VALUE,... or hf:NAME_OR_PATH (default: {d.dataset})")
    p.add_argument("--data-dir", default=d.data_dir, help=f"where the dataset is (default: {d.data_dir})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--amp", choices=AMP_CHOICES, default=d.amp, help="autocast dtype (default: bf16 on GPU, off on CPU)")
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--limit", type=int, default=None, help="evaluate on a fixed random subset of N images")
    p.add_argument("--seed", type=int, default=d.seed, help="the --seed of the fine-tuning run (synthetic data, --limit subset)")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    return EvalConfig(**vars(p.parse_args(argv)))


def run(cfg: EvalConfig) -> dict:
    from tinyvit.convert import load_pretrained
    from tinyvit.rundir import read_classes
    from tinyvit.data import DatasetError, load_splits, transforms, Transformed

    if cfg.json:  # checked before the evaluation, which may take long, not when writing its result
        target = Path(cfg.json)
        if target.is_dir():
            raise TinyvitError(f"--json {target}: is a directory; give a file name, e.g. {target / 'eval.json'}")
        if not target.parent.is_dir():
            raise MissingFileError(f"--json {target}: no directory {target.parent} to write it in")
    device = resolve_device(cfg.device)
    model_dir = Path(cfg.model_dir)
    if not model_dir.exists():
        raise MissingFileError(f"--model-dir {model_dir}: no such file or directory")
    model = load_pretrained(model_dir).to(device).eval()
    if model.preprocess is None:
        raise TinyvitError(f"{model_dir}: the checkpoint carries no preprocessing (mean/std, resolution)")
    splits = load_splits(cfg.dataset, Path(cfg.data_dir) if cfg.data_dir else None, seed=cfg.seed, limit_val=cfg.limit)
    trained_on = read_classes(model_dir)
    if trained_on is not None and trained_on != splits.classes:
        raise DatasetError(
            f"{model_dir} was trained on classes {trained_on[:10]}{'...' if len(trained_on) > 10 else ''}, "
            f"but {cfg.dataset} has {splits.classes[:10]}{'...' if len(splits.classes) > 10 else ''}"
        )
    if model.cfg.num_classes != len(splits.classes):
        raise DatasetError(
            f"{model_dir}: the model has {model.cfg.num_classes} outputs but {cfg.dataset} has {len(splits.classes)} classes"
        )
    _, eval_tf = transforms(model.preprocess, splits.low_res, augment=False)
    loader = torch.utils.data.DataLoader(
        Transformed(splits.val, eval_tf), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    from tqdm import tqdm

    with tqdm(total=len(splits.val), unit="img", desc="evaluate", disable=None) as bar:
        tally = evaluate(model, loader, len(splits.classes), device, amp_dtype(cfg.amp, device), bar)
    result = {
        "model_dir": str(model_dir), "dataset": cfg.dataset, "images": tally.count,
        "loss": tally.loss, "acc": tally.acc, "classes": splits.classes,
        "per_class_acc": tally.per_class_acc(), "confusion": tally.confusion.tolist(),
    }
    print(f"{cfg.dataset}: loss {result['loss']:.4f}  accuracy {100 * result['acc']:.2f}%  ({result['images']} images)")
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        run(cfg)
    except TinyvitError as e:  # the user's mistake; anything else is a bug and keeps its traceback
        raise SystemExit(f"tinyvit.evaluate: error: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
