"""One training run: its settings (`Config`), its model, and the `Trainer` that fits it.

`Trainer(cfg, dist, device)` sets up everything a run needs (the data splits, the model with its
new head at the training resolution, the frozen prefix and what trains (tinyvit/freeze.py), the
AdamW optimizer with warm-up and cosine decay (tinyvit/schedule.py), MixUp/CutMix and the loss
(tinyvit/recipe.py), the feature caches (tinyvit/cache.py), a teacher (tinyvit/distill.py)), then
`fit(stop)` runs the epochs and `finish()` writes the model, summary and figures. Every file goes
through the run directory (tinyvit/rundir.py), only on rank 0; checkpoint.pt holds the whole
resume state. The command line around it, and the resume rules, are tinyvit/finetune.py.
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
from tinyvit.checkpoint import save_pretrained
from tinyvit.evaluate import Tally, amp_dtype, autocast, evaluate, per_class_accuracy
from tinyvit.hub import create_model
from tinyvit.mae import PRETRAIN_FILE, finetune_model, param_groups_lrd
from tinyvit.presets import PRESETS, build_model, parse_overrides
from tinyvit.preprocess import Preprocess
from tinyvit.processes import Dist, Interrupted, StopRequest, random_state, set_random_state, start_workers
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
        raise ValueError(f"--image-size {size}: expected a positive number of pixels")
    preset = PRESETS[cfg.model]
    if preset["arch"] == "vit":
        patch = parse_overrides(cfg.override, cfg.model).get("patch_size", preset["config"]["patch_size"])
        if isinstance(patch, int) and patch >= 1 and (size < patch or size % patch):
            raise ValueError(f"--image-size {size}: {cfg.model} cuts images into {patch}x{patch} patches; "
                             f"use a multiple of {patch} (the smallest is {patch})")
    elif size < RESNET_MIN_SIZE:
        raise ValueError(f"--image-size {size}: a ResNet downsamples by 32; use at least {RESNET_MIN_SIZE} pixels")


# ---------------------------------------------------------------------------------------------
# The model: preset + weights, then the new head and the training resolution.
# ---------------------------------------------------------------------------------------------


def load_model(cfg: Config, num_classes: int, warn: Callable[[str], None]) -> nn.Module:
    overrides = parse_overrides(cfg.override, cfg.model)
    if cfg.weights == "none":
        return create_model(cfg.model, num_classes=num_classes, image_size=cfg.image_size, **overrides)
    if cfg.weights == "official":
        source = True
    else:
        source = Path(cfg.weights)
        if not source.exists():
            raise FileNotFoundError(f"--weights {source}: no such file or directory")
        if (source / PRETRAIN_FILE).is_file():  # a tinyvit.pretrain run: its encoder, with a new head
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
    except RuntimeError as e:  # tinyvit.hub.DownloadError: offline, or the file failed its checksum
        if source is not True:
            raise
        raise RuntimeError(f"{e}. On this command line: --weights PATH (that file), or --weights none") from e
    if not cfg.keep_head:
        model.reset_classifier(num_classes)
    native = model.preprocess.image_size
    size = cfg.image_size or native
    if size != native:
        if size < native:
            warn(f"--image-size {size} is below the checkpoint's {native}: the weights saw {native}-pixel images "
                 f"and accuracy suffers (USERS.md 1.1, 1.4); 32-pixel datasets are upsampled to --image-size")
        if hasattr(model, "set_image_size"):
            model.set_image_size(size)  # resamples the position embedding
        else:  # a ResNet takes any size: only the preprocessing changes
            model.preprocess = model.preprocess.with_image_size(size)
    return model


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != rundir.CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a tinyvit.finetune checkpoint")
    if state.get("version") != rundir.CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')!r}, expected {rundir.CHECKPOINT_VERSION}")
    return state


# ---------------------------------------------------------------------------------------------
# The trainer.
# ---------------------------------------------------------------------------------------------


class NonFiniteLoss(RuntimeError):
    pass


WHERE = {"device": "in GPU memory", "memory": "in memory", "disk": "on disk (memmap)"}
SYNC_EVERY = 20  # steps between host syncs: NaN check, progress-bar text, agreement on stopping


class Trainer:
    """Sets up one run (data, model, freezing, optimizer, caches, resume state), then `fit()`s it."""

    def __init__(self, cfg: Config, dist: Dist, device: torch.device, resume_state: Optional[dict] = None):
        self.cfg, self.dist, self.device = cfg, dist, device
        self.out = cfg.out_dir()
        self.dtype = amp_dtype(cfg.amp, device)
        self.num_workers = cfg.num_workers if cfg.num_workers is not None else min(8, (os.cpu_count() or 1) // dist.world)
        if cfg.epochs < 1 or cfg.batch_size < 1:
            raise ValueError(f"--epochs {cfg.epochs} and --batch-size {cfg.batch_size} must be at least 1")
        if cfg.batch_size % dist.world:
            raise ValueError(f"--batch-size {cfg.batch_size} is the global batch: it must divide among {dist.world} processes")
        if cfg.lr is not None and not (math.isfinite(cfg.lr) and cfg.lr >= 0):
            raise ValueError(f"--lr {cfg.lr}: expected a learning rate of 0 or more")
        if cfg.warmup_epochs is not None and not (math.isfinite(cfg.warmup_epochs) and cfg.warmup_epochs >= 0):
            raise ValueError(f"--warmup-epochs {cfg.warmup_epochs}: expected 0 (no warm-up) or more")
        check_image_size(cfg)
        self.batch = cfg.batch_size // dist.world

        torch.manual_seed(cfg.seed)  # the same initialisation on every process
        random.seed(cfg.seed)
        self.splits = data.load_splits(
            cfg.dataset, Path(cfg.data_dir) if cfg.data_dir else None,
            seed=cfg.seed if cfg.data_seed is None else cfg.data_seed, limit_train=cfg.limit_train, limit_val=cfg.limit_val,
        )
        self.classes = self.splits.classes
        if cfg.repeat_train < 1:
            raise ValueError(f"--repeat-train {cfg.repeat_train} must be at least 1")
        if cfg.repeat_train > 1:  # each repeat draws its own augmentation: the sample keys differ
            self.splits.train = data.Repeat(self.splits.train, cfg.repeat_train)
        if len(self.splits.train) == 0 or len(self.splits.val) == 0:
            raise data.DatasetError(f"{cfg.dataset}: {len(self.splits.train)} training and {len(self.splits.val)} validation images")

        if resume_state is None:
            self.model = load_model(cfg, len(self.classes), self.warn)
        else:
            if resume_state["classes"] != self.classes:
                raise data.DatasetError(f"the dataset's classes changed since the run began: {resume_state['classes'][:10]} vs {self.classes[:10]}")
            self.model = build_model(resume_state["arch"], resume_state["model_config"],
                                     Preprocess.from_dict(resume_state["preprocess"]))
            self.model.load_state_dict(resume_state["model"])
        self.model.to(device)
        self.preprocess = self.model.preprocess  # at the training resolution
        self.split = freeze.apply(self.model, cfg.unfreeze)
        self.prefix_frozen = self.split.frozen_depth is not None
        self.distiller = self._distiller()

        self.train_tf, self.eval_tf = data.transforms(self.preprocess, self.splits.low_res, cfg.augment,
                                                      source_size=self.splits.source_size, flip=self.splits.flip,
                                                      shift=self.splits.shift)
        self.recipe = recipe.Recipe.from_config(cfg)
        if self.recipe.augments_images:
            self.train_tf = self.recipe.train_transform(self.preprocess, self.splits.low_res, self.splits.source_size,
                                                        self.splits.flip, self.splits.shift)
        self.mix = self.recipe.batch_transform(len(self.classes))  # MixUp/CutMix: soft targets, or None
        self.cache_train, self.cache_val = self._cache_plan()
        self.features = {"train": None, "val": None}  # cache.FeatureCache per split, once built

        # With BatchNorm, a last training batch of one image joins the one before (epoch_batches).
        self.merge_single = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        self.steps_per_epoch = steps_per_epoch(len(self.splits.train), self.batch, dist.world, self.merge_single)
        self.merged_single = self.steps_per_epoch < steps_per_epoch(len(self.splits.train), self.batch, dist.world)
        total = cfg.epochs * self.steps_per_epoch
        if cfg.warmup_epochs is None:  # one epoch, or a tenth of a shorter run, always short of the whole run
            self.warmup = min(max(1, round(min(1.0, cfg.epochs / 10) * self.steps_per_epoch)), total - 1)
        else:
            self.warmup = max(1, round(cfg.warmup_epochs * self.steps_per_epoch)) if cfg.warmup_epochs > 0 else 0
            if self.warmup and self.warmup >= total:
                raise ValueError(f"--warmup-epochs {cfg.warmup_epochs:g} covers the whole run of {cfg.epochs} epochs "
                                 f"({total} steps); use fewer, or 0 for no warm-up")
        self.lr = cfg.resolved_lr()
        if self.lr == 0:
            self.warn("--lr 0: the learning rate is zero, so nothing will train")
        self.schedule = partial(lr_factor, warmup=self.warmup, total=total)
        if cfg.layer_decay is None:
            groups = freeze.param_groups(self.model, cfg.weight_decay)
        elif not self.split.is_vit:
            raise ValueError(f"--layer-decay {cfg.layer_decay}: layer-wise decay counts ViT blocks; {cfg.model} is a ResNet")
        else:  # each group at lr x its layer's scale: LambdaLR then scales them all by the schedule
            groups = [dict(g, lr=self.lr * g["lr_scale"]) for g in param_groups_lrd(self.model, cfg.weight_decay, cfg.layer_decay)]
        self.optimizer = torch.optim.AdamW(groups, lr=self.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.ddp = self.split
        if dist.world > 1:
            # Frozen before wrapping: DDP reduces exactly the parameters that require grad, and every
            # one of them is used by Split.forward, so no find_unused_parameters.
            self.ddp = nn.parallel.DistributedDataParallel(self.split, device_ids=[device.index] if device.type == "cuda" else None)

        self.epoch, self.batches_done, self.partial = 0, 0, None  # where the run stands
        self.saved: Optional[tuple[int, int]] = None  # (epoch, batches_done) in checkpoint.pt, if there is one
        self.run: Optional[rundir.RunDir] = None  # rank 0: every file goes through it (main sets it)
        self.history: list[dict] = []
        self.last_confusion: Optional[torch.Tensor] = None
        self.rng_state = None
        if resume_state is not None:
            self._load_resume_state(resume_state)

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

    def _distiller(self):
        from tinyvit import distill

        cfg = self.cfg
        if cfg.teacher is None:
            if cfg.distill is not None:
                raise ValueError(f"--distill {cfg.distill} needs --teacher PATH")
            return None
        teacher = distill.load_teacher(cfg.teacher, self.classes, self.device)
        self.split.both_heads = True  # the loss needs the class and distillation heads apart
        return distill.Distiller(teacher, data.eval_preprocess(self.preprocess, self.splits.low_res), cfg.distill or "hard",
                                 cfg.distill_alpha, cfg.distill_tau, source=cfg.teacher)

    # -- caching ------------------------------------------------------------------------------

    def _cache_plan(self) -> tuple[bool, bool]:
        """(cache the training features?, cache the validation features?)"""
        cfg = self.cfg
        if cfg.cache == "off":
            return False, False
        if cfg.cache != "auto":  # an explicit storage: say why it cannot be honoured rather than ignore it
            if not self.prefix_frozen:
                raise ValueError(f"--cache {cfg.cache}: --unfreeze all leaves no frozen prefix to cache")
            if cfg.augment:
                raise ValueError(f"--cache {cfg.cache}: augmented images differ every epoch; pass --no-augment "
                                 f"to cache the training features")
        # Validation images are never augmented: their features are cached whenever the prefix is frozen.
        return self.prefix_frozen and not cfg.augment, self.prefix_frozen

    def build_caches(self, stop: Callable[[], bool]) -> float:
        from tinyvit import cache

        seconds = 0.0
        for name, wanted, dataset in (("train", self.cache_train, self.splits.train), ("val", self.cache_val, self.splits.val)):
            if not wanted or self.features[name] is not None:
                continue
            with self.bar(len(dataset), f"caching {name} features") as bar:
                built = cache.build(
                    self.split.prefix, data.Transformed(dataset, self.eval_tf), storage=self.cfg.cache,
                    device=self.device, dtype=self.dtype, path=self.out / rundir.CACHE_DIR / f"{name}.npy",
                    batch_size=self.batch, num_workers=self.num_workers, rank=self.dist.rank,
                    world=self.dist.world, progress=bar, should_stop=stop,
                )
            if built is None:
                raise Interrupted(self.epoch + 1, self.batches_done, self.partial)
            self.features[name] = built
            seconds += built.seconds
            self.log(f"cached {name} features: {len(built):,} x {list(built.features.shape[1:])} {str(built.dtype)[6:]} "
                     f"{WHERE[built.storage]} ({built.nbytes / 2**20:,.0f} MiB), {built.seconds:.1f} s, "
                     f"{len(built) / max(built.seconds, 1e-9):,.0f} img/s through the frozen prefix")
        if self.distiller is not None:  # the teacher's val accuracy, and its logits once when not augmenting
            seconds += self.distiller.build(
                data.Transformed(self.splits.train, self.eval_tf), data.Transformed(self.splits.val, self.eval_tf),
                cached=not self.cfg.augment, dtype=self.dtype, batch_size=self.batch, num_workers=self.num_workers,
                rank=self.dist.rank, world=self.dist.world, path=self.out / rundir.CACHE_DIR, progress=self.bar, log=self.log)
        return seconds

    def batches(self, name: str, index_batches: list, epoch: Optional[int]):
        """(inputs, labels) per batch: cached features, or images through the data pipeline."""
        if self.features[name] is not None:
            return self.features[name].batches(index_batches, self.device)
        dataset = self.splits.train if name == "train" else self.splits.val
        transform = self.train_tf if name == "train" else self.eval_tf
        keys = index_batches if epoch is None else [[(i, epoch) for i in b] for b in index_batches]
        return start_workers(torch.utils.data.DataLoader(
            data.Transformed(dataset, transform, seed=self.cfg.seed), batch_sampler=keys,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # DataLoader draws worker seeds; keep the global RNG (dropout) untouched
        ))

    def is_cached(self, name: str) -> bool:
        return self.features[name] is not None

    # -- one epoch ----------------------------------------------------------------------------

    def _stop_or_nan(self, stop: StopRequest, loss_sum: torch.Tensor) -> bool:
        """A host sync: raise NonFiniteLoss if the loss went NaN/Inf anywhere; True if a stop was
        requested anywhere (all processes decide together, so they leave the loop at the same step)."""
        flags = torch.tensor([float(stop.requested), float(not torch.isfinite(loss_sum).item())], device=self.device)
        if self.dist.world > 1:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        if flags[1]:
            if self.saved is None:
                kept = "no checkpoint was saved before it (rerun with --force to start over)"
            else:
                e, b = self.saved
                kept = f"checkpoint.pt holds the last good state (epoch {e}" + (f" and {b} batches of epoch {e + 1})" if b else ")")
            raise NonFiniteLoss(
                f"the training loss became NaN/Inf in epoch {self.epoch + 1} (batch {self.batches_done} or up to "
                f"{SYNC_EVERY} before); stopped without saving: {kept}. Try a lower --lr (now {self.lr:g})"
                + (" or --amp bf16 / off (fp16 overflows more easily)" if self.dtype == torch.float16 else "")
            )
        return bool(flags[0])

    def train_epoch(self, stop: StopRequest) -> dict:
        cfg, epoch = self.cfg, self.epoch + 1
        cached = self.is_cached("train")
        index_batches = epoch_batches(len(self.splits.train), self.batch, self.dist, cfg.seed, epoch,
                                      merge_single=self.merge_single)
        start = self.batches_done
        # A resumed partial epoch holds sums over all processes: restore them on one only, since
        # state() below adds the processes' sums together.
        p = self.partial if self.partial and self.dist.main else {}
        loss_sum = torch.tensor(p.get("loss_sum", 0.0), dtype=torch.float64, device=self.device)
        correct = torch.tensor(p.get("correct", 0.0), dtype=torch.float64, device=self.device)
        count, seconds = p.get("count", 0), p.get("train_seconds", 0.0)
        t0 = time.perf_counter()

        def state(done):  # the partial epoch, as plain numbers, summed over processes
            sums = torch.stack([loss_sum, correct, torch.tensor(float(count), dtype=torch.float64, device=self.device)])
            if self.dist.world > 1:
                torch.distributed.all_reduce(sums)
            return {"loss_sum": sums[0].item(), "correct": sums[1].item(), "count": int(sums[2].item()),
                    "train_seconds": seconds + time.perf_counter() - t0, "batches_done": done}

        self.ddp.train()  # the frozen prefix stays in eval mode (freeze.apply pinned it)
        todo = index_batches[start:]
        with self.bar(sum(map(len, todo)) * self.dist.world, f"epoch {epoch}/{cfg.epochs} train") as bar:
            for b, (inputs, labels) in enumerate(self.batches("train", todo, epoch), start=start):
                inputs, labels = inputs.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
                targets = labels  # [b] class indices, or [b, classes] soft targets after MixUp/CutMix
                if self.mix is not None:
                    inputs, targets = self.mix(inputs, labels)
                with autocast(self.device, self.dtype):
                    features = inputs if cached else self.split.prefix(inputs)
                    logits = self.ddp(features)
                    if self.distiller is None:
                        loss = self.recipe.loss(logits, targets)
                    else:  # DeiT's loss (tinyvit/distill.py); logits becomes the heads' mean
                        loss, logits = self.distiller.loss(logits, targets, inputs, index_batches[b])
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                loss_sum += loss.detach().double() * labels.numel()
                correct += (logits.argmax(1) == labels).sum()
                count += labels.numel()
                self.batches_done = b + 1
                bar.update(labels.numel() * self.dist.world)
                sync = (b + 1) % SYNC_EVERY == 0 or b + 1 == len(index_batches)
                # A single process may stop at any step (no one to agree with); the NaN check comes
                # first either way, so a poisoned state is never saved.
                if (sync or (self.dist.world == 1 and stop.requested)) and self._stop_or_nan(stop, loss_sum):
                    raise Interrupted(epoch, b + 1, state(b + 1))
                if sync:
                    bar.set_postfix(loss=f"{loss_sum.item() / count:.4f}", acc=f"{100 * correct.item() / count:.1f}%")
        return state(len(index_batches))

    @torch.no_grad()
    def validate(self, stop: StopRequest) -> Optional[Tally]:
        cached = self.is_cached("val")
        index_batches = epoch_batches(len(self.splits.val), self.batch, self.dist, self.cfg.seed, 0, shuffle=False)
        self.split.eval()

        def forward(inputs):
            return self.split(inputs if cached else self.split.prefix(inputs))

        # Processes hold unequal shares of the validation set, so only a single process may stop midway.
        should_stop = (lambda: stop.requested) if self.dist.world == 1 else (lambda: False)
        with self.bar(len(self.splits.val), f"epoch {self.epoch + 1}/{self.cfg.epochs} val") as bar:
            tally = evaluate(forward, self.batches("val", index_batches, None), len(self.classes),
                             self.device, self.dtype, bar, should_stop)
        return tally.all_reduce() if tally is not None else None

    # -- the loop -----------------------------------------------------------------------------

    def fit(self, stop: StopRequest) -> None:
        cfg = self.cfg
        self.log(self.split.describe())
        if getattr(self.model.cfg, "token_learner_tokens", 0):  # the compute TokenLearner saves
            from tinyvit.flops import describe_token_learner

            self.log(describe_token_learner(self.model.cfg))
        self.log(f"{cfg.model} ({cfg.weights} weights) on {cfg.dataset}: {len(self.splits.train):,} train / "
                 f"{len(self.splits.val):,} val images at {self.preprocess.image_size} px, {len(self.classes)} classes; "
                 f"AdamW lr {self.lr:g} wd {cfg.weight_decay:g}, batch {cfg.batch_size}"
                 f"{f' ({self.dist.world} x {self.batch})' if self.dist.world > 1 else ''}, {self.steps_per_epoch} steps/epoch, "
                 f"warm-up {self.warmup} steps, recipe: {self.recipe.describe()}, amp {str(self.dtype)[6:] if self.dtype else 'off'}, {self.device}")
        if self.merged_single:
            self.log(f"note: the last training batch of each epoch would hold a single image (per process), which "
                     f"BatchNorm cannot train on; it joins the batch before ({self.steps_per_epoch} steps/epoch)")
        if not self.dist.main:
            print(f"[rank {self.dist.rank}/{self.dist.world}] {self.device}: {self.batch} images per step, "
                  f"{self.steps_per_epoch} steps per epoch", flush=True)
        if self.rng_state is not None:
            set_random_state(self.rng_state)
        elif self.dist.world > 1:
            torch.manual_seed(cfg.seed + self.dist.rank)  # different dropout masks on each process
        while self.epoch < cfg.epochs:
            epoch_start = time.perf_counter()
            cache_seconds = self.build_caches(lambda: self._stop_or_nan(stop, torch.zeros(())))
            train = self.train_epoch(stop)
            val_start = time.perf_counter()
            tally = self.validate(stop)
            if tally is None or self._stop_or_nan(stop, torch.zeros(())):
                raise Interrupted(self.epoch + 1, self.batches_done, train)
            seconds = time.perf_counter() - epoch_start + (self.partial or {}).get("train_seconds", 0.0)
            self.epoch += 1
            self.batches_done, self.partial = 0, None
            step = self.epoch * self.steps_per_epoch - 1  # the epoch's last step
            row = {
                "epoch": self.epoch,
                "train_loss": train["loss_sum"] / train["count"], "train_acc": train["correct"] / train["count"],
                "val_loss": tally.loss, "val_acc": tally.acc, "seconds": seconds,
                "lr": self.lr * self.schedule(step),
                "train_seconds": train["train_seconds"], "val_seconds": time.perf_counter() - val_start,
                "cache_seconds": cache_seconds, "train_images_per_s": train["count"] / max(train["train_seconds"], 1e-9),
                "cached": self.is_cached("train"), "train_images": train["count"], "val_images": int(tally.count.item()),
            }
            if self.distiller is not None:
                row.update(self.distiller.epoch_metrics(self.dist.world))
            self.history.append(row)
            self.last_confusion = tally.confusion.cpu()
            self.save_checkpoint()
            self.save_metrics()  # after the checkpoint: metrics.jsonl never has an epoch that checkpoint.pt lacks
            self.log(f"epoch {self.epoch}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%  "
                     f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%  lr {row['lr']:.2e}  "
                     f"{seconds:.1f} s ({row['train_images_per_s']:,.0f} img/s{', cached features' if row['cached'] else ''})")
            if self.epoch == 2 and self.history[0]["cached"]:
                self.log(speedup_line(self.history))

    # -- state --------------------------------------------------------------------------------

    def run_config(self) -> dict:
        """The run's settings as resolved (the learning rate), as --resume will read them back."""
        return asdict(replace(self.cfg, lr=self.lr, resume=False, force=False))

    def checkpoint_state(self) -> dict:
        """Everything a resume needs, as tensors and plain Python values (torch.load(weights_only=True))."""
        return {
            "format": rundir.CHECKPOINT_FORMAT, "version": rundir.CHECKPOINT_VERSION,
            "config": self.run_config(),
            "arch": "vit" if self.split.is_vit else "resnet",
            "model_config": self.model.cfg.to_dict(), "preprocess": self.preprocess.to_dict(),
            "classes": self.classes, "world_size": self.dist.world,
            "epoch": self.epoch, "batches_done": self.batches_done, "partial": self.partial,
            "history": self.history, "last_confusion": self.last_confusion,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": random_state(),
        }

    def save_checkpoint(self) -> None:
        if self.dist.main:
            state = self.checkpoint_state()
            self.run.write("checkpoint.pt", lambda f: torch.save(state, f))
        self.saved = (self.epoch, self.batches_done)

    def save_metrics(self) -> None:
        """metrics.jsonl: one line per epoch of the history, rewritten whole (it is small) so its
        checksum is always the one recorded."""
        if self.dist.main:
            self.run.write("metrics.jsonl", lambda f: f.write("".join(json.dumps(r) + "\n" for r in self.history).encode()))

    def _load_resume_state(self, state: dict) -> None:
        if state["batches_done"] and state["world_size"] != self.dist.world:
            raise ValueError(f"the run was interrupted mid-epoch with {state['world_size']} processes; "
                             f"resume it with the same number (now {self.dist.world})")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"checkpoint.pt: the optimizer state does not fit this run ({e})") from e
        self.epoch, self.batches_done, self.partial = state["epoch"], state["batches_done"], state["partial"]
        if self.epoch > self.cfg.epochs or (self.epoch == self.cfg.epochs and self.batches_done):
            raise ValueError(f"--epochs {self.cfg.epochs}: the run in {self.out} already has {self.epoch} epochs")
        if self.cfg.epochs != state["config"]["epochs"]:
            self.log(f"note: --epochs {self.cfg.epochs} (was {state['config']['epochs']}): the cosine schedule now spans "
                     f"{self.cfg.epochs} epochs and the learning rate continues on it")
        self.history = list(state["history"])
        self.last_confusion = state["last_confusion"]
        self.saved = (self.epoch, self.batches_done)
        if self.dist.main or self.dist.world == 1:
            self.rng_state = state["rng"]
        else:  # only rank 0's RNG was saved; the others continue from a derived seed
            torch.manual_seed(hash((self.cfg.seed, self.dist.rank, self.epoch, self.batches_done)) % 2**63)

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
            "image_size": self.preprocess.image_size, "epochs": self.epoch,
            "final": self.history[-1], "best": best,
            "trainable_params": trainable, "total_params": total,
            "trainable_groups": self.split.trainable_groups(),
            "classes": self.classes, "per_class_acc": per_class_accuracy(confusion), "confusion": confusion.tolist(),
            "timing": timing(self.history), "config": self.run_config(),
        }
        self.run.write_json("summary.json", summary)
        self.run.write_files(["curves.png"], lambda d: plot_curves(self.history, d / "curves.png"))
        self.run.write_files(["confusion.png"], lambda d: plot_confusion(confusion, self.classes, d / "confusion.png"))
        return summary
