"""The order of a run: its learning rate at every step and the batches of every epoch.

Both are pure functions of the step or epoch, so a resumed run continues on exactly the schedule
and the image order an uninterrupted one would have had, and every process of a DDP run agrees.
"""
from __future__ import annotations

import math
from typing import Optional

from tinyvit.errors import TinyvitError
from tinyvit.processes import Dist


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up from 1/warmup to 1 over `warmup` steps (0: none), then half a cosine down to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(1, total - warmup), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps(warmup_epochs: Optional[float], default_epochs: float, epochs: int, steps_per_epoch: int) -> int:
    """Warm-up steps of a run of `epochs` epochs: --warmup-epochs (0: none) or, when not given, the
    command's default, which stops short of the whole run. A warm-up asked for that covers the whole
    run is refused: the learning rate would never reach its peak."""
    total = epochs * steps_per_epoch
    if warmup_epochs is None:
        return min(max(1, round(default_epochs * steps_per_epoch)), total - 1) if default_epochs > 0 else 0
    warmup = max(1, round(warmup_epochs * steps_per_epoch)) if warmup_epochs > 0 else 0
    if warmup and warmup >= total:
        raise TinyvitError(f"--warmup-epochs {warmup_epochs:g} covers the whole run of {epochs} epochs "
                           f"({total} steps); use fewer, or 0 for no warm-up")
    return warmup


def epoch_batches(n: int, batch: int, dist: Dist, seed: int, epoch: int, shuffle: bool = True,
                  join_lone_last: bool = False) -> list[list[int]]:
    """This process's batches of item indices for one epoch: the DistributedSampler order (a seeded
    permutation per epoch, process r taking every world-th item), cut into batches. The same
    function with world = 1 serves a single process, so both see the same global order.
    join_lone_last: a last training batch of one image joins the one before."""
    from torch.utils.data import DistributedSampler

    if shuffle:
        sampler = DistributedSampler(range(n), num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        order = list(sampler)
    else:  # validation: a plain shard, no padding with repeated items
        order = list(range(dist.rank, n, dist.world))
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    if join_lone_last and shuffle and len(batches) > 1 and len(batches[-1]) == 1:
        # BatchNorm in training mode cannot normalise one image when the feature map is 1x1 (a
        # ResNet's layer4 at 32 px): "Expected more than 1 value per channel". Every process has
        # the same count (the sampler pads), so all of them merge, or none.
        last = batches.pop()
        batches[-1] = batches[-1] + last
    return batches


def steps_per_epoch(n: int, batch: int, world: int, join_lone_last: bool = False) -> int:
    """len(epoch_batches(...)) for training, without drawing the permutation."""
    per_process = math.ceil(n / world)
    steps = math.ceil(per_process / batch)
    return steps - 1 if join_lone_last and steps > 1 and per_process % batch == 1 else steps
