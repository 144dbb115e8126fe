"""One training run: its settings (`Config`), the set-up, and the loop over optimizer steps.

The set-up is a flat sequence of `build_*` functions, each returning plain objects: the data splits
(tinyvit/data.py), the task (tinyvit/tasks.py: a classifier with its new head, what trains and its
loss's terms, or MAE), where batches come from (tinyvit/batches.py: small low-res datasets as one tensor on the device, augmented a batch
at a time; photos through per-image transforms), AdamW with warm-up and cosine decay per step
(tinyvit/schedule.py), and the modules a step and an evaluation call (DDP, torch.compile).

`Trainer.fit` is the loop, the same for every task: batch, forward, loss, backward, step, schedule;
at the end of each epoch the task's row (a classifier's validation), checkpoint and log. Its state is one counter, `step`: the epoch and the batch within it
follow from it, since the batches of an epoch are a pure function of (seed, epoch) and augmentation
is seeded by (seed, step). checkpoint.pt holds {model, optimizer, scheduler, scaler, step, rng} and
the epoch's running sums for the log. Every file goes through the run directory
(tinyvit/rundir.py), only on rank 0. The command lines and the resume rules are tinyvit/finetune.py
(`python -m tinyvit.pretrain` is the same command with MAE's task and defaults).
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from tinyvit import data, freeze, recipe, rundir
from tinyvit.augment import BatchAugment, seeded
from tinyvit.batches import ImageBatches, TensorBatches
from tinyvit.checkpoint import arch_of
from tinyvit.device import amp_dtype, autocast
from tinyvit.errors import TinyvitError
from tinyvit.presets import PRESETS, parse_overrides
from tinyvit.preprocess import Preprocess
from tinyvit.processes import Dist, StopRequest, random_state, set_random_state
from tinyvit.sums import Sums
from tinyvit.schedule import epoch_batches, lr_factor, steps_per_epoch, warmup_steps


LR_DEFAULTS = {"head": 1e-3, "blocks": 1e-4, "all": 2e-5}  # for batch 128; tinyvit/finetune.py says why
RESNET_MIN_SIZE = 32  # as ResNet.check_input: five stride-2 steps leave one pixel of 32


@dataclass
class Config(recipe.Settings):
    """Every setting of one run, with its default: the from-scratch recipe's (randaugment, mixup ...:
    recipe.Settings, declared there), then the rest below. `python -m tinyvit.finetune` fills it from
    flags of the same names; checkpoint.pt stores it, so --resume continues the run as configured."""

    model: str = "vit_base_patch16_224"
    weights: str = "official"  # "official", "none" (random init) or a checkpoint path
    dataset: str = "cifar10"
    data_dir: str = "data"
    image_size: Optional[int] = None  # None: the checkpoint's native resolution
    unfreeze: str = "last"  # head, last, all, or N final blocks / stages
    epochs: int = 10
    batch_size: int = 128  # global: split across processes under torchrun
    lr: Optional[float] = None  # None: LR_DEFAULTS by unfreeze mode
    weight_decay: float = 0.05
    warmup_epochs: Optional[float] = None  # None: one epoch, or a tenth of a shorter run
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    out: Optional[str] = None  # None: runs/<model>-<dataset>-<unfreeze>
    resume: bool = False
    force: bool = False
    allow_data_change: bool = False  # --resume on data whose fingerprint changed (tinyvit/rundir.py)
    num_workers: Optional[int] = None  # None: min(8, CPUs per process)
    augment: bool = True
    flip: Optional[bool] = None  # horizontal flips in the augmentation; None: the dataset's default
    shift: Optional[bool] = None  # random shifts of a low-res source; None: the dataset's default
    cache: str = "auto"
    limit_train: Optional[int] = None
    limit_val: Optional[int] = None
    override: list = field(default_factory=list)  # ["depth=2", "dim=64", ...]: config fields of --model
    keep_head: bool = False
    progress: bool = True
    data_seed: Optional[int] = None  # which images --limit-train picks (None: --seed); tinyvit.study nests sizes with it
    repeat_train: int = 1  # passes over the training images per epoch (small subsets: one validation per K passes)
    recipe: str = "none"  # a bundle of recipe.Settings (tinyvit/recipe.py); --recipe scratch fills in those not given
    teacher: Optional[str] = None  # distillation (tinyvit/distill.py): a checkpoint or run directory
    distill: Optional[str] = None  # "hard" (the default with --teacher) or "soft"
    distill_alpha: float = 0.5
    distill_tau: float = 1.0
    compile: bool = False  # torch.compile the trained part of the model, for training and evaluation
    # FDViT's masked reconstruction (tinyvit/fdvit.py): loss = CE + fd_ratio * the FD layers' mean MSE;
    # 0 trains without decoders. The official commands use 0.03 with mask probability 0.2.
    fd_ratio: float = 0.0
    fd_mask: float = 0.2
    layer_decay: Optional[float] = None  # MAE/BEiT layer-wise lr decay (tinyvit/freeze.py param_groups); None: off
    # Self-supervised pretraining (`python -m tinyvit.pretrain`, tinyvit/tasks.py): None trains a
    # classifier on the labels; "mae" a masked autoencoder (tinyvit/mae.py) on the images alone.
    method: Optional[str] = None
    blr: float = 1.5e-4  # MAE's base learning rate (its pretraining guide): lr = blr x batch / 256
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = False
    # FixMatch (tinyvit/fixmatch.py): "rest" learns also from the training images --limit-train leaves out.
    unlabelled: str = "none"
    mu: int = 7  # unlabelled images per labelled one in a step
    tau: float = 0.95  # the confidence a pseudo-label needs
    lambda_u: float = 1.0  # weight of the unlabelled loss
    ema: Optional[float] = None  # decay of the weights' average used for evaluation; None: 0.999 with FixMatch

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.method is not None:
            return self.blr * self.batch_size / 256
        mode = freeze.parse_mode(self.unfreeze)
        return LR_DEFAULTS["head" if mode in ("head", 0) else "all" if mode == "all" else "blocks"]

    def out_dir(self) -> Path:
        if self.method is not None:
            return Path(self.out or f"runs/{self.method}-{self.model}-{self.dataset}")
        return Path(self.out or f"runs/{self.model}-{self.dataset}-{self.unfreeze}")


def check_image_size(cfg: Config) -> None:
    """--image-size against the preset, before any data or weights are fetched."""
    size = cfg.image_size
    if size is None:
        return
    if size < 1:
        raise TinyvitError(f"--image-size {size}: expected a positive number of pixels")
    preset = PRESETS[cfg.model]
    if preset["arch"] == "vit":
        patch = parse_overrides(cfg.override, cfg.model).get("patch_size", preset["config"]["patch_size"])
        if isinstance(patch, int) and patch >= 1 and (size < patch or size % patch):
            raise TinyvitError(f"--image-size {size}: {cfg.model} cuts images into {patch}x{patch} patches; "
                               f"use a multiple of {patch} (the smallest is {patch})")
    elif preset["arch"] == "resnet" and size < RESNET_MIN_SIZE:
        raise TinyvitError(f"--image-size {size}: a ResNet downsamples by 32; use at least {RESNET_MIN_SIZE} pixels")


# ---------------------------------------------------------------------------------------------
# Set-up: one small function per piece, each returning plain objects (the task's model and what
# trains: tinyvit/tasks.py).
# ---------------------------------------------------------------------------------------------


def check_config(cfg: Config, dist: Dist) -> None:
    """The numbers of the run, before anything is loaded."""
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise TinyvitError(f"--epochs {cfg.epochs} and --batch-size {cfg.batch_size} must be at least 1")
    if cfg.batch_size % dist.world:
        raise TinyvitError(f"--batch-size {cfg.batch_size} is the global batch: it must divide among {dist.world} processes")
    if cfg.lr is not None and not (math.isfinite(cfg.lr) and cfg.lr >= 0):
        raise TinyvitError(f"--lr {cfg.lr}: expected a learning rate of 0 or more")
    if cfg.warmup_epochs is not None and not (math.isfinite(cfg.warmup_epochs) and cfg.warmup_epochs >= 0):
        raise TinyvitError(f"--warmup-epochs {cfg.warmup_epochs}: expected 0 (no warm-up) or more")
    if cfg.repeat_train < 1:
        raise TinyvitError(f"--repeat-train {cfg.repeat_train} must be at least 1")
    check_image_size(cfg)


def build_data(cfg: Config, validates: bool = True) -> data.Splits:
    splits = data.load_splits(
        cfg.dataset, Path(cfg.data_dir) if cfg.data_dir else None,
        seed=cfg.seed if cfg.data_seed is None else cfg.data_seed, limit_train=cfg.limit_train, limit_val=cfg.limit_val,
    )
    if len(splits.train) == 0 or (validates and len(splits.val) == 0):
        raise data.DatasetError(f"{cfg.dataset}: {len(splits.train)} training and {len(splits.val)} validation images")
    given = {name: getattr(cfg, name) for name in ("flip", "shift") if getattr(cfg, name) is not None}
    if given:  # --flip / --no-shift ...: the run overrides the dataset's default
        splits.traits = replace(splits.traits, **given)
    return splits


def build_sources(cfg: Config, splits: data.Splits, preprocess: Preprocess, recipe_: recipe.Recipe,
                  device: torch.device, dist: Dist, num_workers: int, validates: bool = True):
    """(training source, validation source), tinyvit/batches.py: low-res images held as one tensor on
    the device and augmented there, or PIL images through per-image transforms (photos; TrivialAugmentWide).
    A task that does not validate (MAE) never reads the validation images: its validation source is empty."""
    traits, seed = splits.traits, cfg.seed
    pre = data.eval_preprocess(preprocess, traits.low_res)
    held = None
    if traits.low_res and not recipe_.trivialaugment:
        train = data.as_tensor(splits.train)
        held = [train, data.as_tensor(splits.val) if validates else train and (train[0][:0], train[1][:0])]
    if held is not None and None not in held:
        pipeline = BatchAugment(
            pre.image_size, pre.interpolation, pre.mean, pre.std,
            padding=data.shift_padding(traits.size) if cfg.augment and traits.shift else 0,
            flip=cfg.augment and traits.flip, randaugment=recipe_.randaugment, random_erasing=recipe_.random_erasing)
        (train_x, train_y), (val_x, val_y) = held
        return (TensorBatches(train_x.to(device), train_y.to(device), pipeline, augment=cfg.augment, seed=seed,
                              rank=dist.rank, world=dist.world, repeat=cfg.repeat_train),
                TensorBatches(val_x.to(device), val_y.to(device), pipeline, augment=False))
    flags = dict(source_size=traits.size, flip=traits.flip, shift=traits.shift)
    train_tf, eval_tf = data.transforms(preprocess, traits.low_res, cfg.augment, **flags)
    if recipe_.augments_images:
        train_tf = recipe_.train_transform(preprocess, traits.low_res, **flags)
    kw = dict(device=device, seed=seed, num_workers=num_workers)
    return (ImageBatches(splits.train, train_tf, eval_tf, repeat=cfg.repeat_train, **kw),
            ImageBatches(splits.val if validates else [], eval_tf, eval_tf, **kw))


def build_optimizer(cfg: Config, task, steps_per_epoch: int, warn: Callable[[str], None]):
    """(AdamW over the task's parameter groups, its per-step LambdaLR schedule, warm-up steps, peak lr).
    The warm-up defaults to one epoch, or a tenth of a shorter run; MAE's to a twentieth of the run
    (its pretraining guide: 40 of 800 epochs) and its betas are (0.9, 0.95) (main_pretrain.py)."""
    total = cfg.epochs * steps_per_epoch
    default = cfg.epochs / 20 if cfg.method == "mae" else min(1.0, cfg.epochs / 10)
    warmup = warmup_steps(cfg.warmup_epochs, default, cfg.epochs, steps_per_epoch)
    lr = cfg.resolved_lr()
    if lr == 0:
        warn("--lr 0: the learning rate is zero, so nothing will train")
    betas = (0.9, 0.95) if cfg.method == "mae" else (0.9, 0.999)
    optimizer = torch.optim.AdamW(task.param_groups(lr), lr=lr, betas=betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, warmup=warmup, total=total))
    return optimizer, scheduler, warmup, lr


def build_networks(split: freeze.Split, dist: Dist, device: torch.device, compile_: bool):
    """(the module a training step calls, the one evaluation calls): the split, under
    DistributedDataParallel with several processes, under torch.compile with --compile."""
    train = split
    if dist.world > 1:
        # Frozen before wrapping: DDP reduces exactly the parameters that require grad, and every
        # one of them is used by Split.forward, so no find_unused_parameters.
        train = nn.parallel.DistributedDataParallel(split, device_ids=[device.index] if device.type == "cuda" else None)
    if not compile_:
        return train, split
    return torch.compile(train), torch.compile(split)


class Meter(Sums):
    """One epoch's training sums (tinyvit/sums.py: the loss, the images, and the task's own, e.g.
    correct predictions) and its seconds."""

    def __init__(self, device: torch.device, names: tuple = ()):
        super().__init__(device, ("loss_sum", "count", *names))
        self.load({})

    def load(self, numbers: dict) -> None:
        super().load(numbers)
        self.seconds, self.since = numbers.get("train_seconds", 0.0), time.perf_counter()

    def state(self) -> dict:
        """The sums over all processes, as plain numbers, and the epoch's seconds so far."""
        total = self.total()
        return {**total, "count": int(total["count"]), "train_seconds": self.seconds + time.perf_counter() - self.since}


# ---------------------------------------------------------------------------------------------
# The trainer: the set-up above, then one loop over steps.
# ---------------------------------------------------------------------------------------------


class NonFiniteLoss(RuntimeError):
    pass


SYNC_EVERY = 20  # steps between host syncs: NaN check, progress-bar text, agreement on stopping


class Trainer:
    """One run: `Trainer(cfg, dist, device)` builds it, `fit(stop)` trains it step by step up to
    cfg.epochs, `task.finish()` writes the model, summary and figures. What it trains for is its task
    (tinyvit/tasks.py: classification, MAE). `step` counts optimizer steps; the epoch and the batch
    within it follow from it (the batches of an epoch are a pure function of (seed, epoch),
    tinyvit/schedule.py), and so does a resume."""

    def __init__(self, cfg: Config, dist: Dist, device: torch.device, resume_state: Optional[dict] = None):
        from tinyvit.fixmatch import task_of

        check_config(cfg, dist)
        self.cfg, self.dist, self.device = cfg, dist, device
        self.out = cfg.out_dir()
        self.dtype = amp_dtype(cfg.amp, device)
        self.batch = cfg.batch_size // dist.world
        num_workers = cfg.num_workers if cfg.num_workers is not None else min(8, (os.cpu_count() or 1) // dist.world)
        torch.manual_seed(cfg.seed)  # the same initialisation on every process
        random.seed(cfg.seed)
        task = task_of(cfg)
        self.splits = build_data(cfg, task.validates)
        self.classes = self.splits.classes
        for note in self.splits.notes:  # how the labels were read (hf: string labels ...)
            self.log(note)
        self.task = task(self, resume_state)
        self.model, self.preprocess = self.task.model, self.task.preprocess
        self.train_data, self.val_data = build_sources(cfg, self.splits, self.preprocess, self.task.recipe, device, dist,
                                                       num_workers, task.validates)
        self.features = {"train": None, "val": None}  # cache.FeatureCache per split, once built
        # With BatchNorm, a last training batch of one image joins the one before (epoch_batches).
        self.join_lone_last = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        self.steps_per_epoch = steps_per_epoch(len(self.train_data), self.batch, dist.world, self.join_lone_last)
        self.optimizer, self.scheduler, self.warmup, self.lr = build_optimizer(cfg, self.task, self.steps_per_epoch, self.warn)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.train_net, self.eval_net = build_networks(self.task.network, dist, device, cfg.compile)
        self.step, self.history, self.meter = 0, [], Meter(device, self.task.sums)  # where the run stands
        self.saved_step: Optional[int] = None  # the step checkpoint.pt holds, if there is one
        self.run: Optional[rundir.RunDir] = None  # rank 0: every file goes through it (finetune.run sets it)
        self.rng_state = cfg.seed + dist.rank if dist.world > 1 else None  # seed_steps: a seed, a resume's state, or as is
        if resume_state is not None:
            self.load_state(resume_state)

    # -- the loop -----------------------------------------------------------------------------

    def fit(self, stop: StopRequest) -> bool:
        """Train up to the last step of cfg.epochs; False when a signal stopped it (checkpoint.pt then
        holds the step reached)."""
        self.log_setup()
        self.seed_steps()
        spe, last = self.steps_per_epoch, self.cfg.epochs * self.steps_per_epoch
        if not self.task.prepare(stop):  # caches
            return self.save_and_stop()
        batches = self.train_batches(self.step // spe + 1, self.step % spe)  # a generator: it starts at next()
        try:
            while True:
                epoch, b = divmod(self.step, spe)
                if b == 0 and len(self.history) < epoch and not self.end_epoch(stop):  # evaluate, checkpoint, log
                    return self.save_and_stop()
                if self.step == last:
                    return True
                if b == 0:
                    batches = self.train_batches(epoch + 1, 0)
                self.train_step(*next(batches))
                self.step += 1
                if self.sync_due(stop) and self.stop_or_nan(stop):
                    return self.save_and_stop()
        finally:  # its DataLoader workers end with the loop, not when a failed run's traceback is collected
            batches.close()

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, indices: list) -> torch.Tensor:
        """One optimizer step on one batch, for every task: the one place that calls backward and step."""
        with autocast(self.device, self.dtype):
            loss = self.task.loss(inputs, targets, labels, indices, self.meter)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.task.after_step()  # FixMatch: the weights' moving average
        return loss

    def train_batches(self, epoch: int, start: int):
        """Epoch `epoch`'s batches from batch `start` on, as (inputs, targets, labels, item indices);
        targets are the labels, or soft targets [b, classes] after MixUp/CutMix."""
        lists = epoch_batches(len(self.train_data), self.batch, self.dist, self.cfg.seed, epoch,
                              join_lone_last=self.join_lone_last)[start:]
        first = (epoch - 1) * self.steps_per_epoch + start
        self.train_net.train()  # the frozen prefix stays in eval mode (freeze.apply pinned it)
        self.meter.since = time.perf_counter()
        with self.bar(sum(map(len, lists)) * self.dist.world, f"epoch {epoch}/{self.cfg.epochs} train") as bar:
            for k, ((inputs, labels), indices) in enumerate(zip(self.batches("train", lists, first), lists)):
                targets = labels
                if self.task.mix is not None:
                    with seeded(data.sample_seed(self.cfg.seed, first + k, self.dist.rank)):
                        inputs, targets = self.task.mix(inputs, labels)
                bar.update(labels.numel() * self.dist.world)
                yield inputs, targets, labels, indices

    def batches(self, name: str, lists: list, first_step: Optional[int] = None):
        """(inputs, labels) on the device per list of indices: cached features, or images from the source."""
        if self.features[name] is not None:
            return self.features[name].batches(lists, self.device)
        return (self.train_data if name == "train" else self.val_data).batches(lists, first_step)

    def sync_due(self, stop: StopRequest) -> bool:
        # A single process may stop at any step (no one to agree with).
        return self.step % SYNC_EVERY == 0 or self.step % self.steps_per_epoch == 0 or (self.dist.world == 1 and stop.requested)

    def stop_or_nan(self, stop: StopRequest) -> bool:
        """A host sync: raise NonFiniteLoss if the epoch's loss went NaN/Inf anywhere (before anything
        is saved); True if a stop was requested anywhere (all processes leave at the same step)."""
        nan = not torch.isfinite(self.meter["loss_sum"]).item()
        flags = torch.tensor([float(stop.requested), float(nan)], device=self.device)
        if self.dist.world > 1:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        if flags[1]:
            if self.saved_step is None:
                kept = "no checkpoint was saved before it (rerun with --force to start over)"
            else:
                e, b = self.position(self.saved_step)
                kept = f"checkpoint.pt holds the last good state (epoch {e}" + (f" and {b} batches of epoch {e + 1})" if b else ")")
            epoch, b = divmod(self.step - 1, self.steps_per_epoch)
            raise NonFiniteLoss(f"the training loss became NaN/Inf in epoch {epoch + 1} (batch {b + 1} or up to {SYNC_EVERY} before); "
                                f"stopped without saving: {kept}. Try a lower --lr (now {self.lr:g})"
                                + (" or --amp bf16 / off (fp16 overflows more easily)" if self.dtype == torch.float16 else ""))
        return bool(flags[0])

    def end_epoch(self, stop: StopRequest) -> bool:
        """The epoch that just ended: the task's row (a validation), the checkpoint, the log; False if
        stopped on the way."""
        row = self.task.end_epoch(self.meter.state(), stop)
        if row is None or self.stop_or_nan(stop):
            return False
        self.history.append(row)
        self.meter.load({})
        self.save_checkpoint()
        self.save_metrics()  # after the checkpoint: metrics.jsonl never has an epoch that checkpoint.pt lacks
        self.log(self.task.epoch_line(row))
        return True

    def save_and_stop(self) -> bool:
        self.save_checkpoint()
        return False

    # -- logging ------------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        if self.dist.main:
            print(msg, flush=True)

    def warn(self, msg: str) -> None:
        if self.dist.main:
            print(f"warning: {msg}", file=sys.stderr, flush=True)

    def bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="img", unit_scale=True, leave=False, dynamic_ncols=True,
                    disable=None if self.dist.main and self.cfg.progress else True)  # None: only on a terminal

    def log_setup(self) -> None:
        cfg = self.cfg
        for line in self.task.describe():
            self.log(line)
        where = "one tensor on the device" if isinstance(self.train_data, TensorBatches) else "image files"
        self.log(f"{cfg.model} ({cfg.weights} weights) on {cfg.dataset}: {len(self.splits.train):,} train / "
                 f"{len(self.val_data):,} val images at {self.preprocess.image_size} px ({where}), {len(self.classes)} classes; "
                 f"AdamW lr {self.lr:g} wd {cfg.weight_decay:g}, batch {cfg.batch_size}"
                 f"{f' ({self.dist.world} x {self.batch})' if self.dist.world > 1 else ''}, {self.steps_per_epoch} steps/epoch, "
                 f"warm-up {self.warmup} steps, recipe: {self.task.recipe.describe()}, amp {str(self.dtype)[6:] if self.dtype else 'off'}, "
                 f"{self.device}{', compiled' if cfg.compile else ''}")
        if self.steps_per_epoch < steps_per_epoch(len(self.train_data), self.batch, self.dist.world):
            self.log(f"note: the last training batch of each epoch would hold a single image (per process), which "
                     f"BatchNorm cannot train on; it joins the batch before ({self.steps_per_epoch} steps/epoch)")
        if not self.dist.main:
            print(f"[rank {self.dist.rank}/{self.dist.world}] {self.device}: {self.batch} images per step, "
                  f"{self.steps_per_epoch} steps per epoch", flush=True)

    # -- state --------------------------------------------------------------------------------

    def seed_steps(self) -> None:
        """The RNG the steps draw on (dropout, drop path), as training starts: a resume's, else one per process."""
        if isinstance(self.rng_state, dict):
            set_random_state(self.rng_state)
        elif self.rng_state is not None:
            torch.manual_seed(self.rng_state)

    def position(self, step: Optional[int] = None) -> tuple[int, int]:
        """(epochs finished and logged, batches done of the next) at `step` (default: now); the batches
        equal a whole epoch when it ended but was not yet validated."""
        step = self.step if step is None else step
        return len(self.history), step - len(self.history) * self.steps_per_epoch

    def run_config(self) -> dict:
        """The run's settings as resolved (the learning rate), as --resume will read them back."""
        return asdict(replace(self.cfg, lr=self.lr, resume=False, force=False))

    def checkpoint_state(self, meters: dict) -> dict:
        """Everything a resume needs, as tensors and plain Python values (torch.load(weights_only=True)).
        `epoch` and `batches_done` follow from `step`; they are there for readers (tinyvit.study)."""
        epoch, batches_done = self.position()
        encoder = getattr(self.task, "encoder", self.model)  # what model_config describes (MAE: its encoder)
        return {
            "format": rundir.CHECKPOINT_FORMAT, "version": rundir.CHECKPOINT_VERSION,
            "config": self.run_config(),
            "arch": arch_of(encoder), "model_config": encoder.cfg.to_dict(), "preprocess": self.preprocess.to_dict(),
            # what tinyvit.export of an unfinished run serves with (model.safetensors's preprocessing)
            "eval_preprocess": data.eval_preprocess(self.preprocess, self.splits.low_res).to_dict(),
            "world_size": self.dist.world, "steps_per_epoch": self.steps_per_epoch,
            "step": self.step, "epoch": epoch, "batches_done": batches_done, "meters": meters, "history": self.history,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": random_state(), **self.task.state(),
        }

    def save_checkpoint(self) -> None:
        meters = self.meter.state()  # on every process: the sums are all-reduced
        if self.dist.main:
            state = self.checkpoint_state(meters)
            self.run.write("checkpoint.pt", lambda f: torch.save(state, f))
        self.saved_step = self.step

    def save_metrics(self) -> None:
        """metrics.jsonl: one line per epoch of the history, rewritten whole (it is small) so its
        checksum is always the one recorded."""
        if self.dist.main:
            self.run.write("metrics.jsonl", lambda f: f.write("".join(json.dumps(r) + "\n" for r in self.history).encode()))

    def load_state(self, state: dict) -> None:
        step, spe, was, done = state["step"], self.steps_per_epoch, state["steps_per_epoch"], len(state["history"])
        if step != done * was and (was != spe or state["world_size"] != self.dist.world):
            raise TinyvitError(f"the run was interrupted mid-epoch with {state['world_size']} processes and {was} steps per "
                               f"epoch (now {self.dist.world} and {spe}); resume it with the same processes and data")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise TinyvitError(f"checkpoint.pt: the optimizer state does not fit this run ({e})") from e
        if was != spe:  # at an epoch's end, on other data (--allow-data-change): the epochs done count
            step = self.scheduler.last_epoch = done * spe
        if step > self.cfg.epochs * spe:
            raise TinyvitError(f"--epochs {self.cfg.epochs}: the run in {self.out} already has {len(state['history'])} epochs")
        if self.cfg.epochs != state["config"]["epochs"]:
            self.log(f"note: --epochs {self.cfg.epochs} (was {state['config']['epochs']}): the cosine schedule now spans "
                     f"{self.cfg.epochs} epochs and the learning rate continues on it")
        self.step, self.saved_step, self.history = step, step, list(state["history"])
        if self.dist.main:  # the saved sums are over all processes: restored on one, summed by Meter.state
            self.meter.load(state["meters"])
        # Only rank 0's RNG was saved; the others continue from a seed derived from the step.
        self.rng_state = state["rng"] if self.dist.main else hash((self.cfg.seed, self.dist.rank, step)) % 2**63
