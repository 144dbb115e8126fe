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

What to expect (google-research/vision_transformer#84, NielsRogge/Transformers-Tutorials#297,
facebookresearch/deit#45). With CIFAR-10 upsampled to 224 and the checkpoint's own
normalisation, last-block fine-tuning of ViT-B/16 or DeiT-B lands in the mid-to-high 90s (full
fine-tuning reaches 97-99%); the paper reports the CNN baselines below the transformers (its
exact figures are not reproduced here). Below about 90% for the ViT, suspect a bug before the
recipe: 32-pixel inputs that were not upsampled (~51-81%), the wrong mean/std for the
checkpoint, or a backbone that was not really frozen.

Defaults, and why:
- AdamW over the trainable parameters only, no weight decay on biases, norms and tokens; weight
  decay 0.05 (DeiT's fine-tuning value) on the rest.
- Learning rate by how much trains (batch 128): 1e-3 for the head alone (a linear probe tolerates
  a large step), 1e-4 when blocks train (lucidrains/vit-pytorch#55 starts near 3e-4; at 1e-2 a
  pretrained ViT predicted one class, lucidrains/vit-pytorch#34), 2e-5 for everything (full fine-tuning of ViT-B is
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
import os
import shutil
import signal
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from tinyvit import data, freeze, recipe, rundir
from tinyvit.checkpoint import CheckpointError, NotRunState, read_run_state
from tinyvit.device import AMP_CHOICES
from tinyvit.errors import TinyvitError
from tinyvit.presets import PRESETS
from tinyvit.processes import StopRequest, init_distributed
from tinyvit.report import format_table, speedup_line
from tinyvit.trainer import LR_DEFAULTS, Config, NonFiniteLoss, Trainer


# ---------------------------------------------------------------------------------------------
# The command line: argparse into tinyvit.trainer.Config.
# ---------------------------------------------------------------------------------------------

OLD_PRETRAIN_FORMAT = "tinyvit.pretrain"  # pretraining's checkpoint.pt before it ran through tinyvit/trainer.py

# What may differ when resuming: where and how the run executes, not what it computes.
RUNTIME_FIELDS = {"epochs", "device", "num_workers", "cache", "data_dir", "progress", "out", "resume", "force",
                  "allow_data_change", "compile"}


class Offered:
    """argparse's parser, adding only the flags a command offers (None: all of them)."""

    def __init__(self, parser: argparse.ArgumentParser, flags=None):
        self.parser, self.flags = parser, flags

    def add_argument(self, *names, **kwargs):
        if self.flags is None or names[0] in self.flags:
            self.parser.add_argument(*names, **kwargs)

    def add_argument_group(self, *args, **kwargs) -> "Offered":
        return Offered(self.parser.add_argument_group(*args, **kwargs) if self.flags is None else self.parser, self.flags)

    def add_mutually_exclusive_group(self, **kwargs) -> "Offered":
        return Offered(self.parser.add_mutually_exclusive_group(**kwargs) if self.flags is None else self.parser, self.flags)


def build_parser(prog: str = "tinyvit.finetune", description: str = __doc__, defaults: Optional[dict] = None,
                 flags=None) -> argparse.ArgumentParser:
    """The one table of flags, for both commands: each setting's flag, type (its validation) and help
    once, its default from `Config` (`defaults`: a command's own, as tinyvit.pretrain's); `flags`:
    the ones the command offers (None: all but pretraining's)."""
    d = Config(**(defaults or {}))
    parser = argparse.ArgumentParser(
        prog=f"python -m {prog}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # Unset flags stay out of the namespace, so --resume can tell what was given from what defaulted.
        argument_default=argparse.SUPPRESS,
    )
    p = Offered(parser, flags)
    p.add_argument("--model", choices=list(PRESETS), metavar="PRESET", help=f"a preset of tinyvit.PRESETS (default: {d.model})")
    p.add_argument("--weights", help="official (default: the preset's published weights), none (random init), or a checkpoint path")
    p.add_argument("--dataset", type=data.dataset_arg, help=f"{', '.join(data.DATASETS)}, fractals:KEY=VALUE,... "
                   f"(tinyvit/data.py fractal_db) or hf:NAME_OR_PATH (default: {d.dataset})")
    p.add_argument("--data-dir", help=f"dataset location; CIFAR downloads here when missing (default: {d.data_dir})")
    p.add_argument("--image-size", type=int, help="training resolution (default: the checkpoint's); CIFAR is upsampled to it")
    p.add_argument("--unfreeze", type=_unfreeze_arg, help="head | last (default) | all | N: the last N blocks/stages train")
    p.add_argument("--epochs", type=int, help=f"default: {d.epochs}")
    p.add_argument("--batch-size", type=int, help=f"global batch size (default: {d.batch_size})")
    p.add_argument("--lr", type=float, help="peak learning rate (default: " + (
        "--blr x batch / 256)" if d.method else f"by --unfreeze: {LR_DEFAULTS})"))
    p.add_argument("--weight-decay", type=at_least_zero(float), help=f"AdamW decoupled weight decay (default: {d.weight_decay})")
    p.add_argument("--warmup-epochs", type=float, help="linear warm-up length (default: " + (
        "a twentieth of the run)" if d.method else "1, or a tenth of a shorter run)"))
    p.add_argument("--layer-decay", type=float, metavar="D", help="layer-wise lr decay (MAE/BEiT): block k trains at lr x "
                   "D^(depth-k), the embeddings at lr x D^(depth+1), the head at lr (MAE: 0.65 for ViT-B; default: off)")
    p.add_argument("--seed", type=int, help=f"default: {d.seed}")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--amp", choices=AMP_CHOICES, help="autocast dtype (default auto: bf16 on GPU, off on CPU)")
    p.add_argument("--out", help="output directory (default: runs/" + ("<method>-<model>-<dataset>)" if d.method
                                                                       else "<model>-<dataset>-<unfreeze>)"))
    p.add_argument("--resume", action="store_true", help="continue the run in --out up to --epochs")
    p.add_argument("--force", action="store_true", help="remove the files of an earlier run in --out (only those) and start over")
    p.add_argument("--allow-data-change", action="store_true",
                   help="--resume although the dataset differs from the one the run began with")
    p.add_argument("--num-workers", type=at_least_zero(int), help="data loading processes (0: in the main process; default: min(8, CPUs per process))")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop/flip (enables training on cached features)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction,
                   help="horizontal flips in the augmentation (default: the dataset's: on for CIFAR, photos, "
                        "synthetic and small hf: images; off for digits and MNIST)")
    p.add_argument("--shift", action=argparse.BooleanOptionalAction,
                   help="random shifts of a low-res source by an eighth of its side (default: the dataset's: "
                        "on, off for digits)")
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
    p.add_argument("--compile", action="store_true", help="torch.compile the trained part of the model (for GPUs; "
                   "it gained nothing on a 2-core CPU, bench/README.md)")
    add_objective_flags(p, d, pretraining=flags is not None)
    return parser


def add_objective_flags(p: Offered, d: Config, pretraining: bool) -> None:
    """The flags of what a run trains for (tinyvit/tasks.py): the recipe, distillation, FDViT's
    reconstruction term; and, for the pretraining command, MAE's."""
    recipe.add_arguments(p)
    p.add_argument("--teacher", metavar="PATH", help="distil from this model (any format tinyvit.load_pretrained reads, "
                   "a run directory too); it must predict the dataset's classes (DeiT, see tinyvit/distill.py)")
    p.add_argument("--distill", choices=("hard", "soft"), help="with --teacher: the teacher's argmax (hard, default) or its softened probabilities")
    p.add_argument("--distill-alpha", type=float, help=f"weight of the distillation term (default: {d.distill_alpha})")
    p.add_argument("--distill-tau", type=float, help=f"temperature of --distill soft (default: {d.distill_tau})")
    p.add_argument("--fd-ratio", type=float, help="FDViT: weight of the FD layers' masked reconstruction loss "
                   "(official 0.03; default 0: no decoders)")
    p.add_argument("--fd-mask", type=float, help=f"FDViT: probability a token is masked for it (default: {d.fd_mask})")
    g = p.add_argument_group("semi-supervised: FixMatch (tinyvit/fixmatch.py)")
    g.add_argument("--unlabelled", choices=("none", "rest"), help="rest: FixMatch also learns from the training images "
                   "--limit-train leaves out, their labels never read; none (default): the labelled images only")
    g.add_argument("--mu", type=int, help=f"FixMatch: unlabelled images per labelled one in each step (default: {d.mu})")
    g.add_argument("--tau", type=float, help=f"FixMatch: confidence a pseudo-label needs (default: {d.tau})")
    g.add_argument("--lambda-u", type=at_least_zero(float), help=f"FixMatch: weight of the unlabelled loss (default: {d.lambda_u})")
    g.add_argument("--ema", type=float, metavar="DECAY", help="FixMatch: validate and save a moving average of the "
                   "weights with this decay, warmed up over the first steps (default: 0.999; 0: off)")
    if not pretraining:
        return
    p.add_argument("--method", choices=("mae",), help="the self-supervised method (default: mae)")
    p.add_argument("--blr", type=at_least_zero(float), help=f"base learning rate: lr = blr x batch / 256 (default: {d.blr})")
    p.add_argument("--mask-ratio", type=float, help=f"fraction of the patches hidden (default: {d.mask_ratio})")
    p.add_argument("--decoder-dim", type=int, help=f"decoder width (default: {d.decoder_dim}; MAE's models: 512)")
    p.add_argument("--decoder-depth", type=int, help=f"decoder blocks (default: {d.decoder_depth}; MAE's models: 8)")
    p.add_argument("--decoder-heads", type=int, help=f"decoder heads (default: {d.decoder_heads}; MAE's models: 16)")
    p.add_argument("--norm-pix-loss", action="store_true", help="targets: each patch normalised to mean 0, variance 1")


def at_least_zero(kind):
    """An argparse type: a finite number of `kind`, 0 or more (a negative weight decay would push
    weights outwards; a negative worker count means nothing to the DataLoader)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {'an integer' if kind is int else 'a number'}") from None
        if not (value >= 0 and value != float("inf")):
            raise argparse.ArgumentTypeError(f"{text!r}: expected 0 or more")
        return value
    parse.__name__ = kind.__name__
    return parse


def _unfreeze_arg(text: str) -> str:
    try:
        return str(freeze.parse_mode(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv=None) -> tuple[Config, set]:
    """(config, the names of the flags given on the command line)."""
    given = vars(build_parser().parse_args(argv))
    return recipe.apply_bundle(Config(**given), set(given)), set(given)


# ---------------------------------------------------------------------------------------------
# The output directory (its manifest, lock and checksums: tinyvit/rundir.py), and resuming.
# ---------------------------------------------------------------------------------------------

OUTPUTS = (rundir.MANIFEST, "metrics.jsonl", "checkpoint.pt", "model.safetensors", "config.json", "classes.json",
           "summary.json", "curves.png", "confusion.png")


def check_out_dir(out: Path, cfg: Config) -> None:
    """Before anything is loaded: refuse to overwrite an earlier run, or anyone's files, by accident."""
    if cfg.teacher is not None:
        teacher, where = Path(cfg.teacher).resolve(), out.resolve()
        if teacher == where or where in teacher.parents:
            raise rundir.RunDirError(f"--teacher {cfg.teacher} is in --out {out}: this run would replace (--force) or "
                                     f"write over the teacher it learns from; choose another --out")
    rundir.check(out, resume=cfg.resume, force=cfg.force)


def check_memory(cfg: Config) -> None:
    """--image-size against the machine's memory, before a model is built: the ViT's position table
    (tokens x width) and one image's first activation must fit, or the allocator's message is all
    the user would see."""
    from tinyvit.cache import total_ram
    from tinyvit.presets import parse_overrides

    size = cfg.image_size
    if size is None or size < 1:
        return
    preset = PRESETS[cfg.model]
    config = {**preset["config"], **parse_overrides(cfg.override, cfg.model)}
    if preset["arch"] == "vit":
        patch, dim = config.get("patch_size", 16), config.get("dim", 768)
        values = (size // max(1, patch)) ** 2 * dim  # the position table: one row per patch
    else:
        values = 64 * (size // 2) ** 2  # the stem's output for one image
    if isinstance(values, int) and 4 * values > total_ram():
        raise TinyvitError(f"--image-size {size}: too large for this machine's memory ({4 * values / 2**30:,.0f} GiB for "
                           f"{'the position embedding' if preset['arch'] == 'vit' else 'one image'} alone, "
                           f"{total_ram() / 2**30:,.0f} GiB of RAM); use a smaller --image-size")


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e)))


def out_of_memory_message(e: BaseException, cfg: Config, during: str) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    size = f" (now {cfg.image_size})" if cfg.image_size else ""
    if during.startswith("in epoch"):  # a batch's activations: the batch is what to shrink first
        return (f"out of memory {during} ({first[:160]}); try a smaller --batch-size (now {cfg.batch_size}) or "
                f"--image-size{size}; --resume continues from the last checkpoint")
    return f"out of memory {during} ({first[:160]}); try a smaller --image-size{size} or model"


def resumed_config(cfg, given: set, stored: dict, runtime: set = RUNTIME_FIELDS):
    """The stored run's config (of cfg's class: finetune's or pretrain's); flags given now may change
    only how it runs (`runtime`)."""
    known = {f.name for f in fields(cfg)}
    run = type(cfg)(**{k: v for k, v in stored.items() if k in known})
    changed = [
        f"--{k.replace('_', '-')} {getattr(cfg, k)!r} (the run has {getattr(run, k)!r})"
        for k in sorted(given - runtime) if getattr(cfg, k) != getattr(run, k)
    ]
    if changed:
        raise TinyvitError("--resume continues a run as it was configured; these flags differ: " + "; ".join(changed))
    now = {k: getattr(cfg, k) for k in given & runtime}
    # The folder this command opened and locked, never the one checkpoint.pt names: a run copied
    # or edited elsewhere would otherwise put its feature cache into that recorded path.
    now["out"] = str(cfg.out_dir())
    return replace(run, **{**now, "resume": True, "force": False, "allow_data_change": cfg.allow_data_change})


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def report(trainer: Trainer, summary: dict) -> None:
    trainer.log("\n" + format_table(trainer.history))
    best, final = summary["best"], summary["final"]
    trainer.log(f"\nfinal val acc {100 * final['val_acc']:.2f}%, best {100 * best['val_acc']:.2f}% (epoch {best['epoch']}); "
                f"{summary['trainable_params']:,} of {summary['total_params']:,} parameters trained")
    if len(trainer.history) > 1 and trainer.history[0]["cached"]:
        trainer.log(speedup_line(trainer.history))
    trainer.log(f"wrote {trainer.out}/: model.safetensors + config.json (tinyvit.load_pretrained), metrics.jsonl, "
                f"summary.json, curves.png, confusion.png, checkpoint.pt")


def read_resume_state(path: Path) -> dict:
    """checkpoint.pt of the run to continue; a pretraining checkpoint of the old format (counted in
    epochs and batches, before pretraining ran through tinyvit/trainer.py) is refused in one line."""
    try:
        return read_run_state(path)
    except NotRunState:
        try:
            read_run_state(path, OLD_PRETRAIN_FORMAT, version=None, verify=False)
        except NotRunState:
            raise
        raise CheckpointError(f"{path}: a tinyvit.pretrain checkpoint of an older version (counted in epochs); this "
                              f"version resumes from a step counter and cannot continue it: start over with --force") from None


def set_up(cfg: Config, given: set, out: Path, prog: str):
    """Everything that can reject the input, before --out is written to: (cfg, run directory, dist,
    trainer, resume state, dataset fingerprints). Rank 0 locks --out first: a directory in use or
    not writable is refused before minutes of set-up, and released again if set-up fails."""
    run, fingerprints = None, None
    try:
        if int(os.environ.get("RANK", "0")) == 0:
            run = rundir.RunDir.open(out)
        check_out_dir(out, cfg)
        check_memory(cfg)
        resume_state = None
        if cfg.resume:
            resume_state = read_resume_state(out / "checkpoint.pt")
            cfg = resumed_config(cfg, given, resume_state["config"])
        dist, device = init_distributed(cfg.device)
        trainer = Trainer(cfg, dist, device, resume_state)
        if run is not None:
            fingerprints = trainer.task.fingerprints()
            if cfg.resume:
                run.check_dataset(fingerprints, cfg.allow_data_change, f"--dataset {cfg.dataset} --data-dir {cfg.data_dir}")
        return cfg, run, dist, trainer, resume_state, fingerprints
    except BaseException as e:
        if run is not None:
            run.abandon()  # unlocked, and --out removed again if this run created it
        if isinstance(e, data.DatasetError):
            raise SystemExit(f"{prog}: error: {data.error_message(e)}") from None
        if is_out_of_memory(e):
            raise SystemExit(f"{prog}: error: {out_of_memory_message(e, cfg, 'while setting up the run')}") from None
        if isinstance(e, TinyvitError):  # the user's mistake; anything else is a bug and keeps its traceback
            raise SystemExit(f"{prog}: error: {e}") from None
        raise


def main(argv=None) -> int:
    cfg, given = parse_args(argv)
    return train(cfg, given, "tinyvit.finetune", report)


def train(cfg: Config, given: set, prog: str, report: Callable) -> int:
    """A run of `python -m {prog}` (tinyvit.finetune, tinyvit.pretrain), start to end: set-up, the
    loop, the final files, `report(trainer, summary)`; the exit code (128 + the signal when stopped)."""
    out = cfg.out_dir()
    cfg, run, dist, trainer, resume_state, fingerprints = set_up(cfg, given, out, prog)
    if dist.world > 1:
        torch.distributed.barrier()  # every process has checked --out before rank 0 writes to it
    try:
        if dist.main:
            trainer.run = run
            run.start(fresh=not cfg.resume, dataset=fingerprints)  # the manifest first
            trainer.task.start(run)
            if resume_state is not None:
                trainer.save_metrics()  # = the checkpoint's history: no epoch twice, none lost
                epoch, batches = trainer.position()
                trainer.log(f"resuming {out} after epoch {epoch}" +
                            (f" and {batches} batches of epoch {epoch + 1}" if batches else ""))
        if dist.world > 1:
            torch.distributed.barrier()

        with StopRequest(trainer.log) as stop:  # also over finish(): a Ctrl-C there waits for the files to be written
            try:
                if not trainer.fit(stop):
                    epoch, batches = trainer.position()
                    trainer.log(f"stopped in epoch {epoch + 1} after {batches} of {trainer.steps_per_epoch} batches; "
                                f"checkpoint saved. Continue with: python -m {prog} --out {out} --resume")
                    return 128 + (stop.signum or signal.SIGINT)
            except KeyboardInterrupt:
                kept = (f"{out / 'checkpoint.pt'} holds step {trainer.saved_step}" if trainer.saved_step is not None
                        else "no checkpoint had been saved yet")
                trainer.log(f"interrupted twice: quitting without saving; {kept}")
                return 130
            except NonFiniteLoss as e:
                raise SystemExit(f"{prog}: error: {e}") from None
            except data.DatasetError as e:
                raise SystemExit(f"{prog}: error: {data.error_message(e)}") from None
            except (RuntimeError, MemoryError) as e:
                if not is_out_of_memory(e):
                    raise
                raise SystemExit(f"{prog}: error: " + out_of_memory_message(
                    e, cfg, f"in epoch {trainer.step // trainer.steps_per_epoch + 1}")) from None
            finally:
                if dist.main:
                    shutil.rmtree(out / rundir.CACHE_DIR, ignore_errors=True)
            if dist.main and trainer.history:
                report(trainer, trainer.task.finish())
        if dist.world > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        return 0
    except rundir.WriteError as e:  # a full disk while writing a file: the run's files are as they were
        raise SystemExit(f"{prog}: error: {e}") from None
    finally:
        if run is not None:
            run.close()  # the feature cache goes, and the lock


if __name__ == "__main__":
    sys.exit(main())
