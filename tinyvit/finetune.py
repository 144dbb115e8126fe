"""`python -m tinyvit.finetune`: fine-tune a pretrained ViT or ResNet with a single trainable block.

The study of Malpure et al. 2021 ("Investigating Transfer Learning Capabilities of Vision
Transformers and CNNs by Fine-Tuning a Single Trainable Block", arXiv 2110.05270): take an ImageNet
model, freeze everything but its last transformer block (ViT, DeiT) or last convolutional stage
(ResNet's layer4), put a new classifier on top, and fine-tune on CIFAR-10. The paper finds the
transformers more accurate than the CNNs, some with about 4x fewer parameters. (Its new classifier
is a small MLP; here it is the model's own linear head, re-initialised.)

    # the study, on a machine with a GPU and network access (CIFAR-10 and the weights download once)
    python -m tinyvit.finetune --model vit_base_patch16_224 --dataset cifar10 --no-augment --out runs/study/vit_b16
    python -m tinyvit.finetune --model deit_base_patch16_224 --dataset cifar10 --no-augment --out runs/study/deit_b
    python -m tinyvit.finetune --model resnet50 --dataset cifar10 --no-augment --out runs/study/resnet50

    # offline, on a CPU: the same pipeline on generated images, from random weights (no downloads);
    # a minute or two on 2 cores, ~98% validation accuracy (chance: 10%)
    python -m tinyvit.finetune --model vit_tiny_patch16_224 --weights none --dataset synthetic \\
        --image-size 64 --unfreeze last --no-augment --lr 1e-3 --epochs 4 --limit-train 2000 \\
        --limit-val 500 --out runs/offline

--unfreeze last is the default (head, N or all are the other modes, see tinyvit/freeze.py), and
--no-augment lets every epoch after the first train on cached features.

What to expect (USERS.md 1.9). With CIFAR-10 upsampled to 224 and the checkpoint's own
normalisation, last-block fine-tuning of ViT-B/16 or DeiT-B lands in the mid-to-high 90s (full
fine-tuning reaches 97-99%); the paper reports the CNN baselines below the transformers (its
exact figures are not reproduced here). Below about 90% for the ViT, suspect a bug before the
recipe: 32-pixel inputs that were not upsampled (~51-81%), the wrong mean/std for the
checkpoint, or a backbone that was not really frozen.

Defaults, and why:
- AdamW over the trainable parameters only, no weight decay on biases, norms and tokens; weight
  decay 0.05 (DeiT's fine-tuning value) on the rest.
- Learning rate by how much trains (batch 128): 1e-3 for the head alone (a linear probe tolerates
  a large step), 1e-4 when blocks train (USERS.md 1.5: 1e-4 to 3e-4 for last block + head; 1e-2
  made a pretrained ViT predict one class), 2e-5 for everything (full fine-tuning of ViT-B is
  best at 1e-5 to 2e-5 and degrades at 5e-5: NielsRogge/Transformers-Tutorials#297). These come
  from the literature; they were not tuned here.
- Linear warm-up (one epoch, or a tenth of a shorter run, always short of the whole run;
  --warmup-epochs 0 for none) then cosine decay to zero, per step.
- 10 epochs: the pretrained features do most of the work; the short official Colab run of a full
  fine-tune already reaches ~97% (google-research/vision_transformer#84).
- bf16 autocast on GPUs that have it (fp16 with loss scaling on older ones), fp32 on the CPU.
- Augmentation on (CIFAR: 4-pixel random crop and flip before the upsampling). `--no-augment`
  turns it off, which lets the frozen prefix's output be cached (tinyvit/cache.py): every epoch
  after the first then runs only the trainable block. The log reports that speed-up.

Everything lands in --out (default runs/<model>-<dataset>-<unfreeze>): metrics.jsonl (one line per
epoch), checkpoint.pt (the whole resume state, rewritten atomically every epoch, loadable with
torch.load(weights_only=True)), the final model (model.safetensors + config.json:
tinyvit.load_pretrained(out) loads it), classes.json, summary.json (final and best metrics,
confusion matrix, timings), curves.png and confusion.png, each recorded with its SHA-256 in the
run's manifest, tinyvit-run.json (tinyvit/rundir.py: --force removes only those files; one run per
directory). `--resume` continues an interrupted run (Ctrl-C or SIGTERM saves one at the next step
boundary and exits with code 130 or 143) up to --epochs, on the same data.

Several GPUs: `torchrun --nproc_per_node=N -m tinyvit.finetune ...` trains with
DistributedDataParallel. --batch-size stays the global batch (each process takes batch/N), so the
recipe and the result do not depend on N; only rank 0 writes.
"""
from __future__ import annotations

import argparse
import ast
import atexit
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tinyvit import data, freeze, recipe, rundir
from tinyvit.atomic import write_atomic
from tinyvit.evaluate import AMP_CHOICES, Tally, amp_dtype, autocast, evaluate, per_class_accuracy, resolve_device
from tinyvit.presets import PRESETS, build_model, create_model
from tinyvit.preprocess import Preprocess
from tinyvit.resnet import ResNetConfig
from tinyvit.vit import ViTConfig

# ---------------------------------------------------------------------------------------------
# Configuration: argparse into this dataclass.
# ---------------------------------------------------------------------------------------------

LR_DEFAULTS = {"head": 1e-3, "blocks": 1e-4, "all": 2e-5}  # for batch 128; see the module docstring
RESNET_MIN_SIZE = 32  # as ResNet.check_input: five stride-2 steps leave one pixel of 32


@dataclass
class Config:
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

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        mode = freeze.parse_mode(self.unfreeze)
        return LR_DEFAULTS["head" if mode in ("head", 0) else "all" if mode == "all" else "blocks"]

    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.model}-{self.dataset}-{self.unfreeze}")


# What may differ when resuming: where and how the run executes, not what it computes.
RUNTIME_FIELDS = {"epochs", "device", "num_workers", "cache", "data_dir", "progress", "out", "resume", "force",
                  "allow_data_change"}


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m tinyvit.finetune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # Unset flags stay out of the namespace, so --resume can tell what was given from what defaulted.
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--model", choices=list(PRESETS), metavar="PRESET", help=f"a preset of tinyvit.PRESETS (default: {d.model})")
    p.add_argument("--weights", help="official (default: the preset's published weights), none (random init), or a checkpoint path")
    p.add_argument("--dataset", type=_dataset_arg, help=f"{', '.join(data.DATASETS)} or hf:NAME_OR_PATH (default: {d.dataset})")
    p.add_argument("--data-dir", help=f"dataset location; CIFAR downloads here when missing (default: {d.data_dir})")
    p.add_argument("--image-size", type=int, help="training resolution (default: the checkpoint's); CIFAR is upsampled to it")
    p.add_argument("--unfreeze", type=_unfreeze_arg, help="head | last (default) | all | N: the last N blocks/stages train")
    p.add_argument("--epochs", type=int, help=f"default: {d.epochs}")
    p.add_argument("--batch-size", type=int, help=f"global batch size (default: {d.batch_size})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default by --unfreeze: {LR_DEFAULTS})")
    p.add_argument("--weight-decay", type=float, help=f"AdamW decoupled weight decay (default: {d.weight_decay})")
    p.add_argument("--warmup-epochs", type=float, help="linear warm-up length (default: 1, or a tenth of a shorter run)")
    p.add_argument("--seed", type=int, help=f"default: {d.seed}")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--amp", choices=AMP_CHOICES, help="autocast dtype (default auto: bf16 on GPU, off on CPU)")
    p.add_argument("--out", help="output directory (default: runs/<model>-<dataset>-<unfreeze>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out up to --epochs")
    p.add_argument("--force", action="store_true", help="remove the files of an earlier run in --out (only those) and start over")
    p.add_argument("--allow-data-change", action="store_true",
                   help="--resume although the dataset differs from the one the run began with")
    p.add_argument("--num-workers", type=int, help="data loading processes (default: min(8, CPUs per process))")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop/flip (enables training on cached features)")
    p.add_argument("--cache", choices=("auto", "off", "device", "memory", "disk"),
                   help="keep the frozen prefix's outputs: auto (default) whenever possible, or force where, or off")
    p.add_argument("--limit-train", type=int, help="train on a fixed random subset of N images")
    p.add_argument("--limit-val", type=int, help="validate on a fixed random subset of N images")
    p.add_argument("--override", action="append", metavar="KEY=VALUE",
                   help="change a ViTConfig/ResNetConfig field of --model, e.g. --override depth=2,dim=64 (repeatable)")
    p.add_argument("--keep-head", action="store_true", help="keep a checkpoint's head when its class count matches")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--data-seed", type=int, help="seed of the --limit-train/--limit-val subsets (default: --seed)")
    p.add_argument("--repeat-train", type=int, metavar="K", help="an epoch passes K times over the training images (default: 1)")
    recipe.add_arguments(p)
    p.add_argument("--teacher", metavar="PATH", help="distil from this model (any format tinyvit.load_pretrained reads, "
                   "a run directory too); it must predict the dataset's classes (DeiT, see tinyvit/distill.py)")
    p.add_argument("--distill", choices=("hard", "soft"), help="with --teacher: the teacher's argmax (hard, default) or its softened probabilities")
    p.add_argument("--distill-alpha", type=float, help=f"weight of the distillation term (default: {d.distill_alpha})")
    p.add_argument("--distill-tau", type=float, help=f"temperature of --distill soft (default: {d.distill_tau})")
    return p


def _dataset_arg(text: str) -> str:
    if text in data.DATASETS or (text.startswith(data.HF_PREFIX) and len(text) > len(data.HF_PREFIX)):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: expected one of {', '.join(data.DATASETS)} or hf:NAME_OR_PATH")


def _unfreeze_arg(text: str) -> str:
    try:
        return str(freeze.parse_mode(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv=None) -> tuple[Config, set]:
    """(config, the names of the flags given on the command line)."""
    given = vars(build_parser().parse_args(argv))
    return recipe.apply_bundle(Config(**given), set(given)), set(given)


def parse_overrides(items: list, model: str) -> dict:
    """['depth=2,dim=64', 'drop_path=0.1'] -> {'depth': 2, 'dim': 64, 'drop_path': 0.1}, checked
    against the fields of the preset's config class."""
    cls = ViTConfig if PRESETS[model]["arch"] == "vit" else ResNetConfig
    allowed = {f.name for f in fields(cls)} - {"num_classes", "image_size"}
    out = {}
    # Commas separate fields only before "key=": layers=[1,1,1,1] stays whole.
    for part in (p for item in items for p in re.split(r",(?=\s*\w+=)", item) if p):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in allowed:
            raise ValueError(f"--override {part!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(allowed))}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()  # a bare string, e.g. pool=mean
        _check_override_type(cls, key.strip(), out[key.strip()])
    return out


def _check_override_type(cls, key: str, value) -> None:
    """The value's type against the config field's annotation (int, float, bool, str, tuple,
    Optional[...]): depth=two must fail here, by name, not as a TypeError inside the model."""
    hint = typing.get_type_hints(cls)[key]
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] if typing.get_origin(hint) is typing.Union else [hint]
    optional = hint is not kinds[0]
    accepts = {
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        bool: lambda v: isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        tuple: lambda v: isinstance(v, (list, tuple)),
    }
    if (optional and value is None) or any(accepts.get(k, lambda v: True)(value) for k in kinds):
        return
    names = {int: "an integer", float: "a number", bool: "True or False", str: "a string", tuple: "a list, e.g. [2,2,2,2]"}
    expected = " or ".join(names.get(k, k.__name__) for k in kinds) + (" or None" if optional else "")
    raise ValueError(f"--override {key}={value!r}: {cls.__name__}.{key} expects {expected}, got {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# Processes (torchrun), and stopping cleanly on Ctrl-C.
# ---------------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_flag: str) -> tuple[Dist, torch.device]:
    """One process per GPU under torchrun (it sets WORLD_SIZE, RANK, LOCAL_RANK); NCCL on GPUs, gloo on CPUs."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), resolve_device(device_flag)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_flag, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank), device


class Interrupted(Exception):
    """Raised inside the loop when a stop was requested; carries where the run stands."""

    def __init__(self, epoch: int, batches_done: int, partial: Optional[dict]):
        super().__init__(f"interrupted in epoch {epoch} after {batches_done} batches")
        self.epoch, self.batches_done, self.partial = epoch, batches_done, partial


class StopRequest:
    """SIGINT (Ctrl-C) or SIGTERM: finish the current step, save a checkpoint, exit 128 + signal.

    Stopping between steps, never inside one, is what makes the saved state exact: an interrupt
    in the middle of optimizer.step() would leave some parameters updated and others not. A second
    Ctrl-C raises KeyboardInterrupt at once.
    """

    def __init__(self, log: Callable[[str], None]):
        self.signum: Optional[int] = None
        self.log = log
        self._previous = {}

    def __enter__(self):
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker inherited this handler: the main process decides
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self.log(f"\n{signal.Signals(signum).name}: stopping after this step to save a checkpoint (again to quit at once)")

    @property
    def requested(self) -> bool:
        return self.signum is not None


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def start_workers(loader: torch.utils.data.DataLoader):
    """iter(loader), with DataLoader workers that leave SIGINT and SIGTERM to the main process.

    Ctrl-C, `timeout`, Slurm and Kubernetes signal the whole process group. PyTorch's workers die
    of a SIGTERM that does not come from their parent, and the main process then fails with
    "DataLoader worker ... killed by signal" before it can save (issue 11). So workers ignore both
    signals, and while they start (fork) the signals are held back: one that arrives meanwhile
    waits in the main process, and in a worker is dropped when `_ignore_stop_signals` runs.
    """
    if loader.num_workers == 0:
        return iter(loader)
    global _exit_hook_registered
    if not _exit_hook_registered:  # after multiprocessing's own exit handler, so it runs before it
        atexit.register(_kill_leftover_workers)
        _exit_hook_registered = True
    loader.worker_init_fn = _ignore_stop_signals
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _ignore_stop_signals(worker_id: int) -> None:
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


_exit_hook_registered = False


def _kill_leftover_workers() -> None:
    """At exit, SIGKILL the daemonic workers of a loader that was never shut down (an exception
    kept its iterator alive). multiprocessing's exit handler would SIGTERM and then join them, and
    since they ignore SIGTERM the interpreter would wait forever."""
    import multiprocessing

    for p in multiprocessing.active_children():
        if p.daemon:
            p.kill()


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


def _random_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_random_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------------------------
# The output directory (its manifest, lock and checksums: tinyvit/rundir.py), and checkpoints.
# ---------------------------------------------------------------------------------------------

OUTPUTS = (rundir.MANIFEST, "metrics.jsonl", "checkpoint.pt", "model.safetensors", "config.json", "classes.json",
           "summary.json", "curves.png", "confusion.png")
CACHE_DIR = rundir.CACHE_DIR
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "tinyvit.finetune", 1


def check_out_dir(out: Path, cfg: Config) -> None:
    """Before anything is loaded: refuse to overwrite an earlier run, or anyone's files, by accident."""
    rundir.check(out, resume=cfg.resume, force=cfg.force)


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a tinyvit.finetune checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')!r}, expected {CHECKPOINT_VERSION}")
    return state


def resumed_config(cfg: Config, given: set, stored: dict) -> Config:
    """The stored run's config; flags given now may change only how it runs (RUNTIME_FIELDS)."""
    known = {f.name for f in fields(Config)}
    run = Config(**{k: v for k, v in stored.items() if k in known})
    changed = [
        f"--{k.replace('_', '-')} {getattr(cfg, k)!r} (the run has {getattr(run, k)!r})"
        for k in sorted(given - RUNTIME_FIELDS) if getattr(cfg, k) != getattr(run, k)
    ]
    if changed:
        raise ValueError("--resume continues a run as it was configured; these flags differ: " + "; ".join(changed))
    now = {k: getattr(cfg, k) for k in given & RUNTIME_FIELDS}
    return replace(run, **{**now, "resume": True, "force": False, "allow_data_change": cfg.allow_data_change})


# ---------------------------------------------------------------------------------------------
# Learning-rate schedule and batches.
# ---------------------------------------------------------------------------------------------


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up from 1/warmup to 1 over `warmup` steps (0: none), then half a cosine down to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(1, total - warmup), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_batches(n: int, batch: int, dist: Dist, seed: int, epoch: int, shuffle: bool = True,
                  merge_single: bool = False) -> list[list[int]]:
    """This process's batches of item indices for one epoch: the DistributedSampler order (a seeded
    permutation per epoch, process r taking every world-th item), cut into batches. The same
    function with world = 1 serves a single process, so both see the same global order.
    merge_single: a last training batch of one image joins the one before."""
    from torch.utils.data import DistributedSampler

    if shuffle:
        sampler = DistributedSampler(range(n), num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        order = list(sampler)
    else:  # validation: a plain shard, no padding with repeated items
        order = list(range(dist.rank, n, dist.world))
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    if merge_single and shuffle and len(batches) > 1 and len(batches[-1]) == 1:
        # BatchNorm in training mode cannot normalise one image when the feature map is 1x1 (a
        # ResNet's layer4 at 32 px): "Expected more than 1 value per channel". Every process has
        # the same count (the sampler pads), so all of them merge, or none.
        last = batches.pop()
        batches[-1] = batches[-1] + last
    return batches


def steps_per_epoch(n: int, batch: int, world: int, merge_single: bool = False) -> int:
    """len(epoch_batches(...)) for training, without drawing the permutation."""
    per_process = math.ceil(n / world)
    steps = math.ceil(per_process / batch)
    return steps - 1 if merge_single and steps > 1 and per_process % batch == 1 else steps


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
# Reporting.
# ---------------------------------------------------------------------------------------------


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _save_figure(plt, fig, path: Path) -> None:
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def plot_curves(history: list, path: Path) -> None:
    plt = _pyplot()
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
    _save_figure(plt, fig, path)


def plot_confusion(confusion: torch.Tensor, classes: list, path: Path) -> None:
    plt = _pyplot()
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
    _save_figure(plt, fig, path)


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
        self.optimizer = torch.optim.AdamW(freeze.param_groups(self.model, cfg.weight_decay), lr=self.lr)
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
                    device=self.device, dtype=self.dtype, path=self.out / CACHE_DIR / f"{name}.npy",
                    batch_size=self.batch, num_workers=self.num_workers, rank=self.dist.rank,
                    world=self.dist.world, progress=bar, should_stop=stop, start_workers=start_workers,
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
                rank=self.dist.rank, world=self.dist.world, path=self.out / CACHE_DIR, progress=self.bar, log=self.log)
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
            _set_random_state(self.rng_state)
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
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "config": self.run_config(),
            "arch": "vit" if self.split.is_vit else "resnet",
            "model_config": self.model.cfg.to_dict(), "preprocess": self.preprocess.to_dict(),
            "classes": self.classes, "world_size": self.dist.world,
            "epoch": self.epoch, "batches_done": self.batches_done, "partial": self.partial,
            "history": self.history, "last_confusion": self.last_confusion,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": _random_state(),
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
        self.run.write_files(["model.safetensors", "config.json"], self.model.save_pretrained)
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


def report(trainer: Trainer, summary: dict) -> None:
    trainer.log("\n" + format_table(trainer.history))
    best, final = summary["best"], summary["final"]
    trainer.log(f"\nfinal val acc {100 * final['val_acc']:.2f}%, best {100 * best['val_acc']:.2f}% (epoch {best['epoch']}); "
                f"{summary['trainable_params']:,} of {summary['total_params']:,} parameters trained")
    if len(trainer.history) > 1 and trainer.history[0]["cached"]:
        trainer.log(speedup_line(trainer.history))
    trainer.log(f"wrote {trainer.out}/: model.safetensors + config.json (tinyvit.load_pretrained), metrics.jsonl, "
                f"summary.json, curves.png, confusion.png, checkpoint.pt")


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

SETUP_ERRORS = (ValueError, OSError, RuntimeError)  # OSError: missing files and folders; RuntimeError: downloads, state dicts


def main(argv=None) -> int:
    cfg, given = parse_args(argv)
    out = cfg.out_dir()
    run = None
    try:
        # Everything that can reject the input happens before --out is written to. Rank 0 locks it
        # first: a directory in use or not writable is refused before minutes of set-up.
        if int(os.environ.get("RANK", "0")) == 0:
            run = rundir.RunDir.open(out)
        check_out_dir(out, cfg)
        resume_state = None
        if cfg.resume:
            rundir.verify(out / "checkpoint.pt")  # the bytes the run wrote, or a clear refusal
            resume_state = load_checkpoint(out / "checkpoint.pt")
            cfg = resumed_config(cfg, given, resume_state["config"])
        dist, device = init_distributed(cfg.device)
        trainer = Trainer(cfg, dist, device, resume_state)
        if run is not None:
            fingerprints = rundir.fingerprints(trainer.splits.train, trainer.splits.val)
            if cfg.resume:
                run.check_dataset(fingerprints, cfg.allow_data_change, f"--dataset {cfg.dataset} --data-dir {cfg.data_dir}")
    except BaseException as e:
        if run is not None:
            run.abandon()  # unlocked, and --out removed again if this run created it
        if isinstance(e, data.DatasetError):
            raise SystemExit(f"tinyvit.finetune: error: {data.error_message(e)}") from None
        if isinstance(e, SETUP_ERRORS):
            raise SystemExit(f"tinyvit.finetune: error: {e}") from None
        raise

    if dist.world > 1:
        torch.distributed.barrier()  # every process has checked --out before rank 0 writes to it
    try:
        if dist.main:
            trainer.run = run
            run.start(fresh=not cfg.resume, dataset=fingerprints)  # the manifest first
            run.write_json("classes.json", trainer.classes)
            if resume_state is not None:
                trainer.save_metrics()  # = the checkpoint's history: no epoch twice, none lost
                trainer.log(f"resuming {out} after epoch {trainer.epoch}" +
                            (f" and {trainer.batches_done} batches of epoch {trainer.epoch + 1}" if trainer.batches_done else ""))
        if dist.world > 1:
            torch.distributed.barrier()

        with StopRequest(trainer.log) as stop:  # also over finish(): a Ctrl-C there waits for the files to be written
            try:
                trainer.fit(stop)
            except Interrupted as e:
                trainer.batches_done, trainer.partial = e.batches_done, e.partial
                trainer.save_checkpoint()
                trainer.log(f"stopped in epoch {e.epoch} after {e.batches_done} of {trainer.steps_per_epoch} batches; "
                            f"checkpoint saved. Continue with: python -m tinyvit.finetune --out {out} --resume")
                return 128 + (stop.signum or signal.SIGINT)
            except KeyboardInterrupt:
                kept = (f"{out / 'checkpoint.pt'} holds epoch {trainer.saved[0]}" if trainer.saved
                        else "no checkpoint had been saved yet")
                trainer.log(f"interrupted twice: quitting without saving; {kept}")
                return 130
            except NonFiniteLoss as e:
                raise SystemExit(f"tinyvit.finetune: error: {e}") from None
            except data.DatasetError as e:
                raise SystemExit(f"tinyvit.finetune: error: {data.error_message(e)}") from None
            finally:
                if dist.main:
                    shutil.rmtree(out / CACHE_DIR, ignore_errors=True)
            if dist.main and trainer.history:
                report(trainer, trainer.finish())
        if dist.world > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        return 0
    finally:
        if run is not None:
            run.close()  # the feature cache goes, and the lock


if __name__ == "__main__":
    sys.exit(main())
