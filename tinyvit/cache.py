"""Frozen-prefix feature caching: run the frozen part of the model once per image, not once per epoch.

With `--unfreeze last` on ViT-B/16, the patch embedding and 11 of the 12 blocks are frozen. Without
augmentation every epoch feeds them the same images and gets the same activations back, so an
epoch of a plain loop is mostly recomputation. Here the frozen prefix (`Split.prefix`, see
tinyvit/freeze.py) runs over the dataset once:

    ViT      tokens entering the first trainable block      [N, n, d]      (n = 197, d = 768 for B/16)
    ResNet   feature maps entering the first trainable stage [N, C, H, W]   ([N, 256, 14, 14] before layer4 of R-18)

and every epoch after that trains the suffix on rows of this table. Per image, a cached step
costs the suffix's forward and backward only; the plain step adds the prefix's forward and the
image decoding and upsampling. In FLOPs, for ViT-B/16 with the last block: prefix 11 block
forwards; suffix 1 block forward + ~1-2 for its backward (there is no gradient to the cached
input), so an upper bound from compute alone is (11 + 3) / 3 ~ 4.7x to (11 + 2) / 2 = 6.5x, before
the data pipeline is counted.

Where the table lives (`--cache`): `device` (GPU memory: no copies at all), `memory` (host RAM),
`disk` (a numpy memmap under --out/.tinyvit-feature-cache, read back through the page cache); `auto` picks the first
that fits. Rows are stored in the autocast dtype when mixed precision is on (what the suffix
would have seen anyway: under autocast the prefix already outputs bf16/fp16), fp32 otherwise.
numpy has no bfloat16, so bf16 rows are stored on disk as their int16 bit patterns.

Under torch.distributed every process computes a 1/world share of the rows and all-gathers them,
so each holds the whole table (`device`/`memory`), or rank 0 writes the one file that all read
(`disk`; the processes must share --out: one machine or a shared file system).
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from tinyvit.errors import TinyvitError

STORAGES = ("auto", "off", "device", "memory", "disk")
MEMORY_FRACTION = 0.25  # 'auto' keeps host-RAM caches under a quarter of the machine's memory
DEVICE_FRACTION = 0.5  # and GPU caches under half of the free GPU memory, leaving room to train

_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}


def total_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a modest machine
        return 8 << 30


def choose_storage(kind: str, nbytes: int, device: torch.device, directory: Path) -> str:
    """Resolve 'auto' to the fastest storage that fits `nbytes`; check an explicit choice fits."""
    if kind not in STORAGES or kind == "off":
        raise TinyvitError(f"cache storage {kind!r}; expected one of device, memory, disk, auto")
    if kind == "device" and device.type != "cuda":
        raise TinyvitError("--cache device keeps the features in GPU memory; this run is on the CPU (use memory or disk)")
    if kind == "auto":
        if device.type == "cuda" and nbytes < DEVICE_FRACTION * torch.cuda.mem_get_info(device)[0]:
            return "device"
        if nbytes < MEMORY_FRACTION * total_ram():
            return "memory"
        kind = "disk"
    if kind == "disk":
        directory.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(directory).free
        if nbytes > free:
            raise TinyvitError(
                f"the feature cache needs {nbytes / 2**30:.1f} GiB but {directory} has {free / 2**30:.1f} GiB free; "
                f"use --cache off (or a smaller --image-size / --limit-train)"
            )
    return kind


@dataclass
class FeatureCache:
    """The prefix's output for every image of a split, and the labels, row i = dataset item i."""

    features: Union[torch.Tensor, np.memmap]  # [N, *shape]
    labels: torch.Tensor  # [N], int64, on the host
    dtype: torch.dtype  # of the features (a memmap of bf16 holds int16 bit patterns)
    storage: str
    seconds: float = 0.0  # how long building it took

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes)

    def gather(self, indices: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `indices` as (features, labels) on `device`."""
        if isinstance(self.features, np.memmap):
            rows = torch.from_numpy(self.features[np.asarray(indices)])  # reads only these rows
            if self.dtype == torch.bfloat16:
                rows = rows.view(torch.bfloat16)
            feats = rows.to(device, non_blocking=True)
        else:
            idx = torch.as_tensor(indices, device=self.features.device)
            feats = self.features.index_select(0, idx).to(device, non_blocking=True)
        return feats, self.labels[indices].to(device, non_blocking=True)

    def batches(self, index_batches: list[list[int]], device: torch.device):
        for indices in index_batches:
            yield self.gather(indices, device)


def _allocate(storage: str, shape: tuple, dtype: torch.dtype, device: torch.device, path: Path, writer: bool):
    if storage == "disk":
        # Only the writing process creates the file; the others open it once it is complete.
        return np.lib.format.open_memmap(path, mode="w+", dtype=_NUMPY[dtype], shape=shape) if writer else None
    where = device if storage == "device" else torch.device("cpu")
    return torch.empty(shape, dtype=dtype, device=where, pin_memory=storage == "memory" and device.type == "cuda")


def _write(table, start: int, rows: torch.Tensor) -> None:
    if isinstance(table, np.memmap):
        rows = rows.cpu()
        table[start:start + len(rows)] = (rows.view(torch.int16) if rows.dtype == torch.bfloat16 else rows).numpy()
    else:
        table[start:start + len(rows)] = rows.to(table.device)


def _chunks(n: int, batch: int, rank: int, world: int) -> list[range]:
    """Step j of the pass covers items [j*B*W, (j+1)*B*W); process r computes the r-th slice of B of them."""
    steps = math.ceil(n / (batch * world))
    return [range(min(n, (j * world + rank) * batch), min(n, (j * world + rank + 1) * batch)) for j in range(steps)]


@torch.no_grad()
def build(
    prefix: Callable[[torch.Tensor], torch.Tensor],
    source,  # tinyvit/batches.py: len(source) items, source.batches(index_lists) -> (images, labels), unaugmented
    *,
    storage: str,
    device: torch.device,
    dtype: Optional[torch.dtype],  # the autocast dtype, or None for fp32
    path: Path,  # the .npy memmap when storage resolves to 'disk'
    batch_size: int = 256,
    rank: int = 0,
    world: int = 1,
    progress=None,
    should_stop: Callable[[], bool] = lambda: False,  # must agree across processes
) -> Optional[FeatureCache]:
    """Run `prefix` once over every item of `source` and keep its outputs; None if `should_stop()` turned true."""
    from tinyvit.device import autocast

    start = time.perf_counter()
    n = len(source)
    store_dtype = dtype or torch.float32
    chunks = [_chunks(n, batch_size, r, world) for r in range(world)]  # chunks[r][j]: process r, step j
    # A process whose slice of the last step is empty still takes part in the all-gather, with a dummy item.
    batches = source.batches([list(c) or [0] for c in chunks[rank]])
    table, labels = None, torch.empty(n, dtype=torch.int64)
    for j, (images, targets) in enumerate(batches):
        with autocast(device, dtype):
            feats = prefix(images.to(device, non_blocking=True)).to(store_dtype)  # [b, *shape]
        if j == 0:
            shape = (n,) + tuple(feats.shape[1:])
            storage = _agree(choose_storage(storage, math.prod(shape) * feats.element_size(), device, path.parent), device, world)
            table = _allocate(storage, shape, store_dtype, device, path, writer=rank == 0)
        if world == 1:
            parts, part_labels = [feats], [targets]
        else:
            parts, part_labels = _all_gather(feats, batch_size), _all_gather(targets.to(device), batch_size)
        for r, (rows, ys) in enumerate(zip(parts, part_labels)):
            span = chunks[r][j]
            if table is not None:
                _write(table, span.start, rows[: len(span)])
            labels[span.start:span.stop] = ys[: len(span)].cpu()
        if progress is not None:
            progress.update(sum(len(chunks[r][j]) for r in range(world)))
        if should_stop():
            return None
    if storage == "disk":
        if table is not None:
            table.flush()
            del table
        if world > 1:
            torch.distributed.barrier()  # the file is complete: every process may open it
        table = np.load(path, mmap_mode="r")
    return FeatureCache(table, labels, store_dtype, storage, time.perf_counter() - start)


def _agree(storage: str, device: torch.device, world: int) -> str:
    """One storage for all processes (they may see different free memory): the most conservative."""
    if world == 1:
        return storage
    order = ["device", "memory", "disk"]
    code = torch.tensor([order.index(storage)], device=device)
    torch.distributed.all_reduce(code, op=torch.distributed.ReduceOp.MAX)
    return order[int(code.item())]


def _all_gather(t: torch.Tensor, rows: int) -> list[torch.Tensor]:
    """All processes' `t`, padded to `rows` rows so that every process sends the same shape."""
    import torch.distributed as dist

    padded = torch.zeros((rows,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    out = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(out, padded)
    return out
