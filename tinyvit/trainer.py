"""One training run: its settings (`Config`), the set-up, and the loop over optimizer steps.

The set-up is a flat sequence of `build_*` functions, each returning plain objects: the data splits
(tinyvit/data.py), the model with its new head at the training resolution and its split into a
frozen prefix and what trains (tinyvit/freeze.py), a teacher (tinyvit/distill.py), where batches
come from (tinyvit/batches.py: small low-res datasets as one tensor on the device, augmented a batch
at a time; photos through per-image transforms), AdamW with warm-up and cosine decay per step
(tinyvit/schedule.py), and the modules a step and an evaluation call (DDP, torch.compile).

`Trainer.fit` is the loop: batch, forward, loss, backward, step, schedule; at the end of each epoch
evaluation, checkpoint and log. Its state is one counter, `step`: the epoch and the batch within it
follow from it, since the batches of an epoch are a pure function of (seed, epoch) and augmentation
is seeded by (seed, step). checkpoint.pt holds {model, optimizer, scheduler, scaler, step, rng} and
the epoch's running sums for the log. Every file goes through the run directory
(tinyvit/rundir.py), only on rank 0. The command line and the resume rules are tinyvit/finetune.py.
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
from tinyvit.checkpoint import arch_of, save_pretrained
from tinyvit.convert import model_of_run_state
from tinyvit.device import amp_dtype, autocast
from tinyvit.errors import MissingFileError, TinyvitError
from tinyvit.evaluate import Tally, evaluate, per_class_accuracy
from tinyvit.flops import LAYERS_ONLY, model_flops
from tinyvit.hub import DownloadError, create_model
from tinyvit.mae import PRETRAIN_FILE, finetune_model, param_groups_lrd
from tinyvit.presets import PRESETS, parse_overrides
from tinyvit.preprocess import Preprocess
from tinyvit.processes import Dist, StopRequest, random_state, set_random_state
from tinyvit.report import plot_confusion, plot_curves, speedup_line, timing
from tinyvit.schedule import epoch_batches, lr_factor, steps_per_epoch


LR_DEFAULTS = {"head": 1e-3, "blocks": 1e-4, "all": 2e-5}  # for batch 128; tinyvit/finetune.py says why
RESNET_MIN_SIZE = 32  # as ResNet.check_input: five stride-2 steps leave one pixel of 32


@dataclass
class Config:
    """Every setting of one run, with its default. `python -m tinyvit.finetune` fills it from flags
    of the same names; checkpoint.pt stores it, so --resume continues the run as configured."""

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
    # The from-scratch recipe (tinyvit/recipe.py); --recipe scratch fills in those not given.
    recipe: str = "none"
    randaugment: bool = False
    trivialaugment: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    random_erasing: float = 0.0
    teacher: Optional[str] = None  # distillation (tinyvit/distill.py): a checkpoint or run directory
    distill: Optional[str] = None  # "hard" (the default with --teacher) or "soft"
    distill_alpha: float = 0.5
    distill_tau: float = 1.0
    compile: bool = False  # torch.compile the trained part of the model, for training and evaluation
    # FDViT's masked reconstruction (tinyvit/fdvit.py): loss = CE + fd_ratio * the FD layers' mean MSE;
    # 0 trains without decoders. The official commands use 0.03 with mask probability 0.2.
    fd_ratio: float = 0.0
    fd_mask: float = 0.2
    layer_decay: Optional[float] = None  # MAE/BEiT layer-wise lr decay (tinyvit/mae.py param_groups_lrd); None: off

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        mode = freeze.parse_mode(self.unfreeze)
        return LR_DEFAULTS["head" if mode in ("head", 0) else "all" if mode == "all" else "blocks"]

    def out_dir(self) -> Path:
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
# The model: preset + weights, then the new head and the training resolution.
# ---------------------------------------------------------------------------------------------


def fd_reconstruction(model: nn.Module, cfg: Config) -> nn.Module:
    """FDViT (tinyvit/fdvit.py): its FD layers' decoders exist only while --fd-ratio trains them."""
    if not (math.isfinite(cfg.fd_ratio) and cfg.fd_ratio >= 0):
        raise TinyvitError(f"--fd-ratio {cfg.fd_ratio}: expected a loss weight of 0 or more")
    try:
        return model.set_reconstruction(cfg.fd_mask if cfg.fd_ratio else None)
    except ValueError as e:
        raise TinyvitError(f"--fd-ratio {cfg.fd_ratio:g} on {cfg.model}: {e}") from e


def load_model(cfg: Config, num_classes: int, warn: Callable[[str], None]) -> nn.Module:
    overrides = parse_overrides(cfg.override, cfg.model)
    if cfg.weights == "none":
        return fd_reconstruction(create_model(cfg.model, num_classes=num_classes, image_size=cfg.image_size, **overrides), cfg)
    if cfg.weights == "official":
        source = True
    else:
        source = Path(cfg.weights)
        if not source.exists():
            raise MissingFileError(f"--weights {source}: no such file or directory")
        if rundir.holds(source, PRETRAIN_FILE):  # a tinyvit.pretrain run (verified): its encoder, with a new head
            from tinyvit.convert import load_pretrained

            wanted = {**PRESETS[cfg.model]["config"], **overrides}
            model = finetune_model(load_pretrained(source), num_classes, wanted, overrides)
            if cfg.image_size is not None and cfg.image_size != model.cfg.image_size:
                model.set_image_size(cfg.image_size)
            return model
    # A different class count gets a new head from the loader already; a new head either way
    # unless --keep-head: the study trains a fresh classifier.
    try:
        model = create_model(cfg.model, num_classes=num_classes, pretrained=source, **overrides)
    except DownloadError as e:  # offline, or the file failed its checksum
        raise DownloadError(f"{e}. On this command line: --weights PATH (that file), or --weights none") from e
    if not cfg.keep_head:
        model.reset_classifier(num_classes)
    native = model.preprocess.image_size
    size = cfg.image_size or native
    if size != native:
        if size < native:
            warn(f"--image-size {size} is below the checkpoint's {native}: the weights saw {native}-pixel images "
                 f"and accuracy suffers; 32-pixel datasets are upsampled to --image-size")
        model.set_image_size(size)  # a ViT resamples its position embedding
    return fd_reconstruction(model, cfg)


# ---------------------------------------------------------------------------------------------
# Set-up: one small function per piece, each returning plain objects.
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


def build_data(cfg: Config) -> data.Splits:
    splits = data.load_splits(
        cfg.dataset, Path(cfg.data_dir) if cfg.data_dir else None,
        seed=cfg.seed if cfg.data_seed is None else cfg.data_seed, limit_train=cfg.limit_train, limit_val=cfg.limit_val,
    )
    if len(splits.train) == 0 or len(splits.val) == 0:
        raise data.DatasetError(f"{cfg.dataset}: {len(splits.train)} training and {len(splits.val)} validation images")
    given = {name: getattr(cfg, name) for name in ("flip", "shift") if getattr(cfg, name) is not None}
    if given:  # --flip / --no-shift ...: the run overrides the dataset's default
        splits.traits = replace(splits.traits, **given)
    return splits


def build_model(cfg: Config, classes: list, resume_state: Optional[dict], device: torch.device,
                warn: Callable[[str], None]) -> tuple[nn.Module, freeze.Split]:
    """The model (new, or as checkpoint.pt holds it) on `device`, and its split into frozen and trained."""
    if resume_state is None:
        model = load_model(cfg, len(classes), warn)
    else:
        if resume_state["classes"] != classes:
            raise data.DatasetError(f"the dataset's classes changed since the run began: {resume_state['classes'][:10]} vs {classes[:10]}")
        model = model_of_run_state(resume_state, cfg.out_dir() / "checkpoint.pt")
    model.to(device)
    return model, freeze.apply(model, cfg.unfreeze)


def build_teacher(cfg: Config, classes: list, preprocess: Preprocess, low_res: bool, split: freeze.Split,
                  device: torch.device):
    """tinyvit/distill.py's Distiller for --teacher, or None."""
    from tinyvit import distill

    if cfg.teacher is None:
        if cfg.distill is not None:
            raise TinyvitError(f"--distill {cfg.distill} needs --teacher PATH")
        return None
    teacher = distill.load_teacher(cfg.teacher, classes, device)
    split.both_heads = True  # the loss needs the class and distillation heads apart
    return distill.Distiller(teacher, data.eval_preprocess(preprocess, low_res), cfg.distill or "hard",
                             cfg.distill_alpha, cfg.distill_tau, source=cfg.teacher)


def build_sources(cfg: Config, splits: data.Splits, preprocess: Preprocess, recipe_: recipe.Recipe,
                  device: torch.device, dist: Dist, num_workers: int):
    """(training source, validation source), tinyvit/batches.py: low-res images held as one tensor on
    the device and augmented there, or PIL images through per-image transforms (photos; TrivialAugmentWide)."""
    traits, seed = splits.traits, cfg.seed
    pre = data.eval_preprocess(preprocess, traits.low_res)
    held = None
    if traits.low_res and not recipe_.trivialaugment:
        held = [data.as_tensor(splits.train), data.as_tensor(splits.val)]
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
            ImageBatches(splits.val, eval_tf, eval_tf, **kw))


def build_optimizer(cfg: Config, model: nn.Module, steps_per_epoch: int, warn: Callable[[str], None]):
    """(AdamW over the trainable parameters, its per-step LambdaLR schedule, warm-up steps, peak lr)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.warmup_epochs is None:  # one epoch, or a tenth of a shorter run, always short of the whole run
        warmup = min(max(1, round(min(1.0, cfg.epochs / 10) * steps_per_epoch)), total - 1)
    else:
        warmup = max(1, round(cfg.warmup_epochs * steps_per_epoch)) if cfg.warmup_epochs > 0 else 0
        if warmup and warmup >= total:
            raise TinyvitError(f"--warmup-epochs {cfg.warmup_epochs:g} covers the whole run of {cfg.epochs} epochs "
                               f"({total} steps); use fewer, or 0 for no warm-up")
    lr = cfg.resolved_lr()
    if lr == 0:
        warn("--lr 0: the learning rate is zero, so nothing will train")
    if cfg.layer_decay is None:
        groups = freeze.param_groups(model, cfg.weight_decay)
    elif model.units_name != "blocks":
        raise TinyvitError(f"--layer-decay {cfg.layer_decay}: layer-wise decay counts transformer blocks; {cfg.model} has none")
    else:  # MAE/BEiT's: each group at lr x its layer's scale, then the schedule scales them all
        groups = [dict(g, lr=lr * g["lr_scale"]) for g in param_groups_lrd(model, cfg.weight_decay, cfg.layer_decay)]
    optimizer = torch.optim.AdamW(groups, lr=lr)
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


def cache_plan(cfg: Config, split: freeze.Split) -> tuple[bool, bool]:
    """(cache the training features?, cache the validation features?)"""
    frozen = split.frozen_depth is not None
    if cfg.cache == "off":
        return False, False
    if cfg.cache != "auto":  # an explicit storage: say why it cannot be honoured rather than ignore it
        if not frozen:
            raise TinyvitError(f"--cache {cfg.cache}: --unfreeze all leaves no frozen prefix to cache")
        if cfg.augment:
            raise TinyvitError(f"--cache {cfg.cache}: augmented images differ every epoch; pass --no-augment "
                               f"to cache the training features")
    # Validation images are never augmented: their features are cached whenever the prefix is frozen.
    return frozen and not cfg.augment, frozen


class Meter:
    """One epoch's training sums on the device (loss, correct, images; no host sync per step) and its seconds."""

    def __init__(self, device: torch.device):
        self.device = device
        self.load({})

    def load(self, state: dict) -> None:
        z = lambda key: torch.tensor(float(state.get(key, 0.0)), dtype=torch.float64, device=self.device)  # noqa: E731
        self.loss_sum, self.correct, self.count = z("loss_sum"), z("correct"), z("count")
        self.aux_sum = z("aux_sum")  # FDViT's reconstruction MSE, summed like the loss (--fd-ratio)
        self.seconds, self.since = state.get("train_seconds", 0.0), time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += loss.detach().double() * labels.numel()
        self.correct += (logits.argmax(1) == labels).sum()
        self.count += labels.numel()

    def state(self, world: int) -> dict:
        """The sums over all processes, as plain numbers."""
        sums = torch.stack([self.loss_sum, self.correct, self.count, self.aux_sum])
        if world > 1:
            torch.distributed.all_reduce(sums)
        return {"loss_sum": sums[0].item(), "correct": sums[1].item(), "count": int(sums[2].item()), "aux_sum": sums[3].item(),
                "train_seconds": self.seconds + time.perf_counter() - self.since}


# ---------------------------------------------------------------------------------------------
# The trainer: the set-up above, then one loop over steps.
# ---------------------------------------------------------------------------------------------


class NonFiniteLoss(RuntimeError):
    pass


WHERE = {"device": "in GPU memory", "memory": "in memory", "disk": "on disk (memmap)"}
SYNC_EVERY = 20  # steps between host syncs: NaN check, progress-bar text, agreement on stopping


class Trainer:
    """One run: `Trainer(cfg, dist, device)` builds it, `fit(stop)` trains it step by step up to
    cfg.epochs, `finish()` writes the model, summary and figures. `step` counts optimizer steps;
    the epoch and the batch within it follow from it (the batches of an epoch are a pure function
    of (seed, epoch), tinyvit/schedule.py), and so does a resume."""

    def __init__(self, cfg: Config, dist: Dist, device: torch.device, resume_state: Optional[dict] = None):
        check_config(cfg, dist)
        self.cfg, self.dist, self.device = cfg, dist, device
        self.out = cfg.out_dir()
        self.dtype = amp_dtype(cfg.amp, device)
        self.batch = cfg.batch_size // dist.world
        num_workers = cfg.num_workers if cfg.num_workers is not None else min(8, (os.cpu_count() or 1) // dist.world)
        torch.manual_seed(cfg.seed)  # the same initialisation on every process
        random.seed(cfg.seed)
        self.splits = build_data(cfg)
        self.classes = self.splits.classes
        for note in self.splits.notes:  # how the labels were read (hf: string labels ...)
            self.log(note)
        self.model, self.partly_frozen = build_model(cfg, self.classes, resume_state, device, self.warn)
        self.preprocess = self.model.preprocess  # at the training resolution
        self.distiller = build_teacher(cfg, self.classes, self.preprocess, self.splits.low_res, self.partly_frozen, device)
        self.recipe = recipe.Recipe.from_config(cfg)
        self.mix = self.recipe.batch_transform(len(self.classes))  # MixUp/CutMix: soft targets, or None
        self.train_data, self.val_data = build_sources(cfg, self.splits, self.preprocess, self.recipe, device, dist, num_workers)
        self.cache_train, self.cache_val = cache_plan(cfg, self.partly_frozen)
        self.features = {"train": None, "val": None}  # cache.FeatureCache per split, once built
        # With BatchNorm, a last training batch of one image joins the one before (epoch_batches).
        self.join_lone_last = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        self.steps_per_epoch = steps_per_epoch(len(self.train_data), self.batch, dist.world, self.join_lone_last)
        self.optimizer, self.scheduler, self.warmup, self.lr = build_optimizer(cfg, self.model, self.steps_per_epoch, self.warn)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.train_net, self.eval_net = build_networks(self.partly_frozen, dist, device, cfg.compile)
        self.step, self.history, self.meter = 0, [], Meter(device)  # where the run stands
        self.saved_step: Optional[int] = None  # the step checkpoint.pt holds, if there is one
        self.last_confusion: Optional[torch.Tensor] = None
        self.cache_seconds = 0.0  # building caches, counted in the next epoch's time
        self.run: Optional[rundir.RunDir] = None  # rank 0: every file goes through it (finetune.main sets it)
        self.rng_state = None
        if resume_state is not None:
            self.load_state(resume_state)

    # -- the loop -----------------------------------------------------------------------------

    def fit(self, stop: StopRequest) -> bool:
        """Train up to the last step of cfg.epochs; False when a signal stopped it (checkpoint.pt then
        holds the step reached)."""
        self.log_setup()
        spe, last = self.steps_per_epoch, self.cfg.epochs * self.steps_per_epoch
        if not self.build_caches(stop):
            return self.stopped()
        batches = None
        while True:
            epoch, b = divmod(self.step, spe)
            if b == 0 and len(self.history) < epoch and not self.end_epoch(stop):  # evaluate, checkpoint, log
                return self.stopped()
            if self.step == last:
                return True
            if batches is None or b == 0:
                batches = self.train_batches(epoch + 1, b)
            inputs, targets, labels, indices = next(batches)
            loss, logits = self.train_step(inputs, targets, indices)  # forward, backward, optimizer, schedule
            self.meter.add(loss, logits, labels)
            self.step += 1
            if self.sync_due(stop) and self.stop_or_nan(stop, self.meter.loss_sum):
                return self.stopped()

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor, indices: list) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on one batch; (loss, logits)."""
        with autocast(self.device, self.dtype):
            loss, logits = self.loss(inputs, targets, indices)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss, logits

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
                if self.mix is not None:
                    with seeded(data.sample_seed(self.cfg.seed, first + k, self.dist.rank)):
                        inputs, targets = self.mix(inputs, labels)
                bar.update(labels.numel() * self.dist.world)
                yield inputs, targets, labels, indices

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, indices: list) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of one training batch."""
        features = inputs if self.features["train"] is not None else self.partly_frozen.prefix(inputs)
        logits = self.train_net(features)
        if self.distiller is None:
            loss = self.recipe.loss(logits, targets)
        else:
            loss, logits = self.distiller.loss(logits, targets, inputs, indices)  # DeiT's; logits: the heads' mean
        aux = self.model.auxiliary_loss() if self.cfg.fd_ratio else None  # FDViT: the FD layers' MSE, if
        if aux is not None:  # any trained FD layer ran in this forward (a frozen prefix's did not)
            self.meter.aux_sum += aux.detach().double() * logits.shape[0]
            loss = loss + self.cfg.fd_ratio * aux
        return loss, logits

    def batches(self, name: str, lists: list, first_step: Optional[int] = None):
        """(inputs, labels) on the device per list of indices: cached features, or images from the source."""
        if self.features[name] is not None:
            return self.features[name].batches(lists, self.device)
        return (self.train_data if name == "train" else self.val_data).batches(lists, first_step)

    def sync_due(self, stop: StopRequest) -> bool:
        # A single process may stop at any step (no one to agree with).
        return self.step % SYNC_EVERY == 0 or self.step % self.steps_per_epoch == 0 or (self.dist.world == 1 and stop.requested)

    def stop_or_nan(self, stop: StopRequest, loss_sum: torch.Tensor) -> bool:
        """A host sync: raise NonFiniteLoss if the loss went NaN/Inf anywhere (before anything is
        saved); True if a stop was requested anywhere (all processes leave at the same step)."""
        flags = torch.tensor([float(stop.requested), float(not torch.isfinite(loss_sum).item())], device=self.device)
        if self.dist.world > 1:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        if flags[1]:
            if self.saved_step is None:
                kept = "no checkpoint was saved before it (rerun with --force to start over)"
            else:
                e, b = self.position(self.saved_step)
                kept = f"checkpoint.pt holds the last good state (epoch {e}" + (f" and {b} batches of epoch {e + 1})" if b else ")")
            epoch, b = divmod(self.step - 1, self.steps_per_epoch)
            raise NonFiniteLoss(
                f"the training loss became NaN/Inf in epoch {epoch + 1} (batch {b + 1} or up to {SYNC_EVERY} before); "
                f"stopped without saving: {kept}. Try a lower --lr (now {self.lr:g})"
                + (" or --amp bf16 / off (fp16 overflows more easily)" if self.dtype == torch.float16 else "")
            )
        return bool(flags[0])

    def end_epoch(self, stop: StopRequest) -> bool:
        """Validate the epoch that just ended, log it, save the checkpoint; False if stopped on the way."""
        train = self.meter.state(self.dist.world)
        val_start = time.perf_counter()
        tally = self.validate(stop)
        if tally is None or self.stop_or_nan(stop, torch.zeros(())):
            return False
        val_seconds = time.perf_counter() - val_start
        epoch = len(self.history) + 1
        row = {
            "epoch": epoch,
            "train_loss": train["loss_sum"] / train["count"], "train_acc": train["correct"] / train["count"],
            "val_loss": tally.loss, "val_acc": tally.acc,
            "seconds": train["train_seconds"] + val_seconds + self.cache_seconds,
            "lr": self.lr * self.scheduler.lr_lambdas[0](self.step - 1),
            "train_seconds": train["train_seconds"], "val_seconds": val_seconds,
            "cache_seconds": self.cache_seconds, "train_images_per_s": train["count"] / max(train["train_seconds"], 1e-9),
            "cached": self.features["train"] is not None, "train_images": train["count"], "val_images": int(tally.count.item()),
        }
        if self.distiller is not None:
            row.update(self.distiller.epoch_metrics(self.dist.world))
        if self.cfg.fd_ratio:  # FDViT's two terms: classification, and the unweighted reconstruction MSE
            recon = train["aux_sum"] / train["count"]
            row.update(train_cls_loss=row["train_loss"] - self.cfg.fd_ratio * recon, train_recon_loss=recon)
        self.history.append(row)
        self.last_confusion = tally.confusion.cpu()
        self.meter.load({})
        self.cache_seconds = 0.0
        self.save_checkpoint()
        self.save_metrics()  # after the checkpoint: metrics.jsonl never has an epoch that checkpoint.pt lacks
        self.log(f"epoch {epoch}/{self.cfg.epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%  "
                 f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%  lr {row['lr']:.2e}  "
                 f"{row['seconds']:.1f} s ({row['train_images_per_s']:,.0f} img/s{', cached features' if row['cached'] else ''})")
        if epoch == 2 and self.history[0]["cached"]:
            self.log(speedup_line(self.history))
        return True

    def stopped(self) -> bool:
        self.save_checkpoint()
        return False

    @torch.no_grad()
    def validate(self, stop: StopRequest) -> Optional[Tally]:
        cached = self.features["val"] is not None
        lists = epoch_batches(len(self.val_data), self.batch, self.dist, self.cfg.seed, 0, shuffle=False)
        self.eval_net.eval()

        def forward(inputs):
            return self.eval_net(inputs if cached else self.partly_frozen.prefix(inputs))

        # Processes hold unequal shares of the validation set, so only a single process may stop midway.
        should_stop = (lambda: stop.requested) if self.dist.world == 1 else (lambda: False)
        with self.bar(len(self.val_data), f"epoch {len(self.history) + 1}/{self.cfg.epochs} val") as bar:
            tally = evaluate(forward, self.batches("val", lists), len(self.classes), self.device, self.dtype, bar, should_stop)
        return tally.all_reduce() if tally is not None else None

    # -- caches -------------------------------------------------------------------------------

    def build_caches(self, stop: StopRequest) -> bool:
        """The frozen prefix's features and the teacher's logits, once per run; False if stopped."""
        from tinyvit import cache

        should_stop = lambda: self.stop_or_nan(stop, torch.zeros(()))  # noqa: E731
        for name, wanted, source in (("train", self.cache_train, self.train_data), ("val", self.cache_val, self.val_data)):
            if not wanted or self.features[name] is not None:
                continue
            with self.bar(len(source), f"caching {name} features") as bar:
                built = cache.build(
                    self.partly_frozen.prefix, source, storage=self.cfg.cache, device=self.device, dtype=self.dtype,
                    path=self.out / rundir.CACHE_DIR / f"{name}.npy", batch_size=self.batch, rank=self.dist.rank,
                    world=self.dist.world, progress=bar, should_stop=should_stop,
                )
            if built is None:
                return False
            self.features[name] = built
            self.cache_seconds += built.seconds
            self.log(f"cached {name} features: {len(built):,} x {list(built.features.shape[1:])} {str(built.dtype)[6:]} "
                     f"{WHERE[built.storage]} ({built.nbytes / 2**20:,.0f} MiB), {built.seconds:.1f} s, "
                     f"{len(built) / max(built.seconds, 1e-9):,.0f} img/s through the frozen prefix")
        if self.distiller is not None:  # the teacher's val accuracy, and its logits once when not augmenting
            self.cache_seconds += self.distiller.build(
                self.train_data, self.val_data, cached=not self.cfg.augment, dtype=self.dtype, batch_size=self.batch,
                rank=self.dist.rank, world=self.dist.world, path=self.out / rundir.CACHE_DIR, progress=self.bar, log=self.log)
        return True

    # -- logging ------------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        if self.dist.main:
            print(msg, flush=True)

    def warn(self, msg: str) -> None:
        if self.dist.main:
            print(f"warning: {msg}", file=sys.stderr, flush=True)

    def bar(self, total: int, desc: str):
        from tqdm import tqdm

        # disable=None: tqdm shows itself only on a terminal.
        show = None if self.dist.main and self.cfg.progress else True
        return tqdm(total=total, desc=desc, unit="img", unit_scale=True, leave=False, disable=show, dynamic_ncols=True)

    def log_setup(self) -> None:
        cfg = self.cfg
        self.log(self.partly_frozen.describe())
        if getattr(self.model.cfg, "token_learner_tokens", 0):  # the compute TokenLearner saves
            from tinyvit.flops import describe_token_learner

            self.log(describe_token_learner(self.model.cfg))
        layers_only = LAYERS_ONLY.get(self.model.arch)
        if layers_only is not None:
            self.log(f"forward FLOPs per image: {model_flops(self.model) / 1e9:.3f} G with the attention matmuls, "
                     f"{layers_only(self.model) / 1e9:.3f} G layers only (2 FLOPs per multiply-add)")
        where = "one tensor on the device" if isinstance(self.train_data, TensorBatches) else "image files"
        self.log(f"{cfg.model} ({cfg.weights} weights) on {cfg.dataset}: {len(self.splits.train):,} train / "
                 f"{len(self.splits.val):,} val images at {self.preprocess.image_size} px ({where}), {len(self.classes)} classes; "
                 f"AdamW lr {self.lr:g} wd {cfg.weight_decay:g}, batch {cfg.batch_size}"
                 f"{f' ({self.dist.world} x {self.batch})' if self.dist.world > 1 else ''}, {self.steps_per_epoch} steps/epoch, "
                 f"warm-up {self.warmup} steps, recipe: {self.recipe.describe()}, amp {str(self.dtype)[6:] if self.dtype else 'off'}, "
                 f"{self.device}{', compiled' if cfg.compile else ''}")
        if self.steps_per_epoch < steps_per_epoch(len(self.train_data), self.batch, self.dist.world):
            self.log(f"note: the last training batch of each epoch would hold a single image (per process), which "
                     f"BatchNorm cannot train on; it joins the batch before ({self.steps_per_epoch} steps/epoch)")
        if not self.dist.main:
            print(f"[rank {self.dist.rank}/{self.dist.world}] {self.device}: {self.batch} images per step, "
                  f"{self.steps_per_epoch} steps per epoch", flush=True)
        if self.rng_state is not None:
            set_random_state(self.rng_state)
        elif self.dist.world > 1:
            torch.manual_seed(cfg.seed + self.dist.rank)  # different dropout masks on each process

    # -- state --------------------------------------------------------------------------------

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
        return {
            "format": rundir.CHECKPOINT_FORMAT, "version": rundir.CHECKPOINT_VERSION,
            "config": self.run_config(),
            "arch": arch_of(self.model),
            "model_config": self.model.cfg.to_dict(), "preprocess": self.preprocess.to_dict(),
            # what tinyvit.export of an unfinished run serves with (model.safetensors's preprocessing)
            "eval_preprocess": data.eval_preprocess(self.preprocess, self.splits.low_res).to_dict(),
            "classes": self.classes, "world_size": self.dist.world, "steps_per_epoch": self.steps_per_epoch,
            "step": self.step, "epoch": epoch, "batches_done": batches_done,
            "meters": meters, "history": self.history, "last_confusion": self.last_confusion,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": random_state(),
        }

    def save_checkpoint(self) -> None:
        meters = self.meter.state(self.dist.world)  # on every process: the sums are all-reduced
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
        self.step, self.saved_step = step, step
        self.history = list(state["history"])
        self.last_confusion = state["last_confusion"]
        if self.dist.main:  # the saved sums are over all processes: restored on one, summed by Meter.state
            self.meter.load(state["meters"])
        if self.dist.main or self.dist.world == 1:
            self.rng_state = state["rng"]
        else:  # only rank 0's RNG was saved; the others continue from a derived seed
            torch.manual_seed(hash((self.cfg.seed, self.dist.rank, step)) % 2**63)

    # -- the end ------------------------------------------------------------------------------

    def finish(self) -> dict:
        """The final model, figures and summary (rank 0)."""
        cfg = self.cfg
        # The model carries the preprocessing it was trained with, so evaluate/predict reproduce it.
        self.model.preprocess = data.eval_preprocess(self.preprocess, self.splits.low_res)
        self.run.write_files(["model.safetensors", "config.json"], partial(save_pretrained, self.model))
        trainable, total = freeze.count_parameters(self.model)
        best = max(self.history, key=lambda r: r["val_acc"])
        confusion = self.last_confusion
        summary = {
            "model": cfg.model, "weights": cfg.weights, "dataset": cfg.dataset, "unfreeze": cfg.unfreeze,
            "image_size": self.preprocess.image_size, "epochs": len(self.history),
            "final": self.history[-1], "best": best,
            "trainable_params": trainable, "total_params": total,
            "trainable_groups": self.partly_frozen.trainable_groups(),
            "classes": self.classes, "per_class_acc": per_class_accuracy(confusion), "confusion": confusion.tolist(),
            "timing": timing(self.history), "config": self.run_config(),
        }
        self.run.write_json("summary.json", summary)
        self.run.write_files(["curves.png"], lambda d: plot_curves(self.history, d / "curves.png"))
        self.run.write_files(["confusion.png"], lambda d: plot_confusion(confusion, self.classes, d / "confusion.png"))
        return summary
