"""`python -m tinyvit.pretrain --method mae`: self-supervised pretraining without labels.

A masked autoencoder (tinyvit/mae.py; He et al. 2022) learns from the images of a dataset's
training split alone: the labels are never used, the validation split is never read. Its encoder
is a tinyvit VisionTransformer, saved as the run's model, which fine-tunes with a new head:

    python -m tinyvit.pretrain --method mae --model vit_tiny_patch16_224 --dataset digits \\
        --image-size 16 --override patch_size=4,dim=64,depth=6,num_heads=4,mlp_dim=256 \\
        --epochs 200 --out runs/mae-digits
    python -m tinyvit.finetune --model vit_tiny_patch16_224 --weights runs/mae-digits --dataset digits \\
        --image-size 16 --override patch_size=4,dim=64,depth=6,num_heads=4,mlp_dim=256 \\
        --recipe scratch --layer-decay 0.75 --limit-train 67 --out runs/mae-digits-ft

(the same --model and --override: finetune checks that the encoder has that architecture, and by
default fine-tunes as MAE does: mean pooling into a new fc_norm, a new head; see mae.finetune_model).

The recipe is MAE's (main_pretrain.py and its pretraining guide,
https://github.com/facebookresearch/mae/blob/main/PRETRAIN.md): AdamW with betas (0.9, 0.95), weight decay
0.05 on everything but 1-d parameters, lr = --blr x batch / 256, linear warm-up (--warmup-epochs,
default a twentieth of the run: the guide's 40 of 800 epochs) then a half-cycle cosine to 0,
updated every step, mask ratio 0.75. Two deviations: the warm-up's first step already uses lr/warmup
(MAE's starts at 0; tinyvit.schedule.lr_factor, shared with finetune), and the augmentation is the
dataset's own (tinyvit.data.transforms: CIFAR's crop and flip, none for the digits) instead of
MAE's RandomResizedCrop(scale 0.2-1) and flip, which is tuned for ImageNet photos.

The run directory has finetune's guarantees (tinyvit/rundir.py): a manifest with every file's
SHA-256, a lock, --force removing only the run's own files, --resume after Ctrl-C or SIGTERM (the
checkpoint is saved at the next step boundary, exit code 130 or 143) with the data checked to be the
same. It holds model.safetensors + config.json (the encoder: tinyvit.load_pretrained(out) loads it),
pretrain.json (what marks the directory as a pretrained encoder for finetune --weights),
checkpoint.pt, metrics.jsonl, summary.json, loss.png, and a figure per epoch,
reconstruction-epochNNN.png: masked input, reconstruction (the visible patches pasted back, as the
paper's figures show it) and original, for the same images and masks every epoch.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Optional

import torch

from tinyvit import data, rundir
from tinyvit.checkpoint import read_run_state, save_pretrained
from tinyvit.device import AMP_CHOICES, amp_dtype, autocast, resolve_device
from tinyvit.errors import TinyvitError
from tinyvit.hub import create_model
from tinyvit.mae import PRETRAIN_FILE, MaskedAutoencoder, pretrain_param_groups
from tinyvit.presets import PRESETS, build_model, parse_overrides
from tinyvit.preprocess import Preprocess
from tinyvit.processes import Dist, StopRequest, random_state, set_random_state, start_workers
from tinyvit.schedule import epoch_batches, lr_factor, steps_per_epoch

METHODS = ("mae",)
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "tinyvit.pretrain", 1
FIGURE_IMAGES = 8
SYNC_EVERY = 20


class Interrupted(Exception):
    """Raised inside the pretraining loop when a stop was requested; carries where the run stands."""

    def __init__(self, epoch: int, batches_done: int, partial: Optional[dict]):
        super().__init__(f"interrupted in epoch {epoch} after {batches_done} batches")
        self.epoch, self.batches_done, self.partial = epoch, batches_done, partial

@dataclass
class PretrainConfig:
    method: str = "mae"
    model: str = "vit_tiny_patch16_224"
    dataset: str = "cifar10"
    data_dir: str = "data"
    image_size: Optional[int] = None
    override: list = field(default_factory=list)
    epochs: int = 100
    batch_size: int = 64
    blr: float = 1.5e-4  # MAE's base learning rate (its pretraining guide); lr = blr * batch / 256
    lr: Optional[float] = None  # absolute; overrides --blr
    weight_decay: float = 0.05
    warmup_epochs: Optional[float] = None  # None: a twentieth of the run
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = False
    augment: bool = True
    seed: int = 0
    data_seed: Optional[int] = None
    limit_train: Optional[int] = None
    device: str = "auto"
    amp: str = "auto"
    num_workers: Optional[int] = None
    out: Optional[str] = None
    resume: bool = False
    force: bool = False
    allow_data_change: bool = False
    progress: bool = True

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256

    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.method}-{self.model}-{self.dataset}")


RUNTIME_FIELDS = {"epochs", "device", "num_workers", "data_dir", "progress", "out", "resume", "force", "allow_data_change"}


def build_parser() -> argparse.ArgumentParser:
    d = PretrainConfig()
    p = argparse.ArgumentParser(prog="python -m tinyvit.pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS)
    p.add_argument("--method", choices=METHODS, help="the self-supervised method (default: mae)")
    p.add_argument("--model", choices=[k for k, v in PRESETS.items() if v["arch"] == "vit"], metavar="PRESET",
                   help=f"a ViT preset of tinyvit.PRESETS (default: {d.model})")
    p.add_argument("--dataset", help=f"{', '.join(data.DATASETS)} or hf:NAME_OR_PATH; labels are ignored (default: {d.dataset})")
    p.add_argument("--data-dir", help=f"dataset location (default: {d.data_dir})")
    p.add_argument("--image-size", type=int, help="training resolution (default: the preset's)")
    p.add_argument("--override", action="append", metavar="KEY=VALUE", help="ViTConfig fields of --model (repeatable)")
    p.add_argument("--epochs", type=int, help=f"default: {d.epochs}")
    p.add_argument("--batch-size", type=int, help=f"default: {d.batch_size}")
    p.add_argument("--blr", type=float, help=f"base learning rate: lr = blr x batch / 256 (default: {d.blr})")
    p.add_argument("--lr", type=float, help="absolute learning rate (overrides --blr)")
    p.add_argument("--weight-decay", type=float, help=f"default: {d.weight_decay}")
    p.add_argument("--warmup-epochs", type=float, help="linear warm-up (default: a twentieth of the run)")
    p.add_argument("--mask-ratio", type=float, help=f"fraction of the patches hidden (default: {d.mask_ratio})")
    p.add_argument("--decoder-dim", type=int, help=f"decoder width (default: {d.decoder_dim}; MAE's models: 512)")
    p.add_argument("--decoder-depth", type=int, help=f"decoder blocks (default: {d.decoder_depth}; MAE's models: 8)")
    p.add_argument("--decoder-heads", type=int, help=f"decoder heads (default: {d.decoder_heads}; MAE's models: 16)")
    p.add_argument("--norm-pix-loss", action="store_true", help="targets: each patch normalised to mean 0, variance 1")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop/flip")
    p.add_argument("--seed", type=int, help=f"default: {d.seed}")
    p.add_argument("--data-seed", type=int, help="seed of the --limit-train subset (default: --seed)")
    p.add_argument("--limit-train", type=int, help="pretrain on a fixed random subset of N training images")
    p.add_argument("--device", help="auto (default), cpu, cuda, ...")
    p.add_argument("--amp", choices=AMP_CHOICES, help="autocast dtype (default auto: bf16 on GPU, off on CPU)")
    p.add_argument("--num-workers", type=int, help="data loading processes (default: min(8, CPUs))")
    p.add_argument("--out", help="output directory (default: runs/<method>-<model>-<dataset>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out up to --epochs")
    p.add_argument("--force", action="store_true", help="remove the files of an earlier run in --out (only those)")
    p.add_argument("--allow-data-change", action="store_true", help="--resume although the training images differ")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def parse_args(argv=None) -> tuple[PretrainConfig, set]:
    given = vars(build_parser().parse_args(argv))
    return PretrainConfig(**given), set(given)


def resumed_config(cfg: PretrainConfig, given: set, stored: dict) -> PretrainConfig:
    """The stored run's config; flags given now may change only how it runs (RUNTIME_FIELDS)."""
    run = PretrainConfig(**{k: v for k, v in stored.items() if k in {f.name for f in fields(PretrainConfig)}})
    changed = [f"--{k.replace('_', '-')} {getattr(cfg, k)!r} (the run has {getattr(run, k)!r})"
               for k in sorted(given - RUNTIME_FIELDS) if getattr(cfg, k) != getattr(run, k)]
    if changed:
        raise TinyvitError("--resume continues a run as it was configured; these flags differ: " + "; ".join(changed))
    now = {k: getattr(cfg, k) for k in given & RUNTIME_FIELDS - {"resume", "force"}}
    return replace(run, **now, resume=True, force=False)



# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------


class Pretrainer:
    """One pretraining run: the training images (labels dropped), the MAE, AdamW and its schedule."""

    def __init__(self, cfg: PretrainConfig, device: torch.device, state: Optional[dict] = None):
        self.cfg, self.device = cfg, device
        self.dtype = amp_dtype(cfg.amp, device)
        for name in ("epochs", "batch_size", "decoder_dim", "decoder_depth", "decoder_heads"):
            if getattr(cfg, name) < 1:
                raise TinyvitError(f"--{name.replace('_', '-')} {getattr(cfg, name)} must be at least 1")
        if not (math.isfinite(cfg.resolved_lr()) and cfg.resolved_lr() > 0):
            raise TinyvitError(f"--lr / --blr give a learning rate of {cfg.resolved_lr()}; expected a positive number")
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        splits = data.load_splits(cfg.dataset, Path(cfg.data_dir) if cfg.data_dir else None,
                                  seed=cfg.seed if cfg.data_seed is None else cfg.data_seed, limit_train=cfg.limit_train)
        self.train, self.low_res = splits.train, splits.low_res  # splits.val is never read
        if len(self.train) == 0:
            raise data.DatasetError(f"{cfg.dataset}: no training images")
        overrides = parse_overrides(cfg.override, cfg.model)
        self.note = None
        if overrides.pop("fc_norm", False):
            self.note = "note: fc_norm is a fine-tuning choice (finetune --override fc_norm=True); MAE pretrains with the final norm"
        if state is None:
            encoder = create_model(cfg.model, num_classes=0, image_size=cfg.image_size, **overrides)
        else:
            encoder = build_model("vit", state["encoder_config"], Preprocess.from_dict(state["preprocess"]))
        self.mae = MaskedAutoencoder(encoder, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads,
                                     cfg.mask_ratio, cfg.norm_pix_loss)
        if state is not None:
            self.mae.load_state_dict(state["model"])
        self.mae.to(device)
        self.preprocess = encoder.preprocess
        self.train_tf, self.eval_tf = data.transforms(self.preprocess, splits.low_res, cfg.augment,
                                                      source_size=splits.source_size, flip=splits.flip, shift=splits.shift)
        self.dist = Dist()
        self.steps_per_epoch = steps_per_epoch(len(self.train), cfg.batch_size, 1)
        total = cfg.epochs * self.steps_per_epoch
        warmup_epochs = cfg.epochs / 20 if cfg.warmup_epochs is None else cfg.warmup_epochs
        self.warmup = min(round(warmup_epochs * self.steps_per_epoch), total - 1) if warmup_epochs > 0 else 0
        self.lr = cfg.resolved_lr()
        self.schedule = partial(lr_factor, warmup=self.warmup, total=total)
        self.optimizer = torch.optim.AdamW(pretrain_param_groups(self.mae, cfg.weight_decay), lr=self.lr, betas=(0.9, 0.95))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.num_workers = cfg.num_workers if cfg.num_workers is not None else min(8, os.cpu_count() or 1)
        self.epoch, self.batches_done, self.partial, self.history = 0, 0, None, []
        self.rng_state = None
        self.run: Optional[rundir.RunDir] = None
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.epoch, self.batches_done, self.partial = state["epoch"], state["batches_done"], state["partial"]
            self.history, self.rng_state = list(state["history"]), state["rng"]
            if self.epoch >= cfg.epochs:
                raise TinyvitError(f"--epochs {cfg.epochs}: the run already has {self.epoch} epochs")
        n = min(FIGURE_IMAGES, len(self.train))  # the same images and masks in every epoch's figure
        self.figure_images = torch.stack([self.eval_tf(self.train[i][0]) for i in range(n)])

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def describe(self) -> str:
        cfg, enc = self.cfg, self.mae.encoder.cfg
        L = enc.grid_size**2
        keep = int(L * (1 - cfg.mask_ratio))
        params = sum(p.numel() for p in self.mae.encoder.parameters())
        return (f"MAE on the training split only: {len(self.train):,} images of {cfg.dataset}, labels ignored, "
                f"validation images never read; {cfg.model} encoder ({params:,} parameters) at {enc.image_size} px, "
                f"{L} patches of {enc.patch_size}x{enc.patch_size}, {keep} visible ({cfg.mask_ratio:g} masked); decoder "
                f"{cfg.decoder_depth} x {cfg.decoder_dim}-d, {cfg.decoder_heads} heads; AdamW (0.9, 0.95) lr {self.lr:.3g} "
                f"(blr {cfg.blr:g} x {cfg.batch_size} / 256{' overridden by --lr' if cfg.lr is not None else ''}) wd "
                f"{cfg.weight_decay:g}, {self.steps_per_epoch} steps/epoch, warm-up {self.warmup} steps, "
                f"norm_pix_loss {cfg.norm_pix_loss}, amp {str(self.dtype)[6:] if self.dtype else 'off'}, {self.device}")

    def batches(self, epoch: int, start: int):
        keys = [[(i, epoch) for i in b] for b in epoch_batches(len(self.train), self.cfg.batch_size, self.dist,
                                                                self.cfg.seed, epoch)[start:]]
        return start_workers(torch.utils.data.DataLoader(
            data.Transformed(self.train, self.train_tf, seed=self.cfg.seed), batch_sampler=keys,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda", generator=torch.Generator()))

    def fit(self, stop: StopRequest) -> None:
        cfg = self.cfg
        self.log(self.describe())
        if self.note:
            self.log(self.note)
        if self.rng_state is not None:
            set_random_state(self.rng_state)
        while self.epoch < cfg.epochs:
            epoch, start = self.epoch + 1, self.batches_done
            p = self.partial or {}
            loss_sum = torch.tensor(p.get("loss_sum", 0.0), dtype=torch.float64, device=self.device)
            count, seconds, t0 = p.get("count", 0), p.get("seconds", 0.0), time.perf_counter()
            self.mae.train()
            for b, (imgs, _labels) in enumerate(self.batches(epoch, start), start=start):
                imgs = imgs.to(self.device, non_blocking=True)
                with autocast(self.device, self.dtype):
                    loss = self.mae(imgs)[0]
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                loss_sum += loss.detach().double() * imgs.shape[0]
                count += imgs.shape[0]
                self.batches_done = b + 1
                if (b + 1) % SYNC_EVERY == 0 or b + 1 == self.steps_per_epoch or stop.requested:
                    if not torch.isfinite(loss_sum).item():
                        raise TinyvitError(f"the MAE loss became NaN/Inf in epoch {epoch}; try a lower --blr (lr now {self.lr:g})")
                    if stop.requested:
                        raise Interrupted(epoch, b + 1, {"loss_sum": loss_sum.item(), "count": count,
                                                         "seconds": seconds + time.perf_counter() - t0})
            self.epoch, self.batches_done, self.partial = epoch, 0, None
            row = {"epoch": epoch, "loss": loss_sum.item() / count, "lr": self.lr * self.schedule(epoch * self.steps_per_epoch - 1),
                   "seconds": seconds + time.perf_counter() - t0, "images": count,
                   "steps": epoch * self.steps_per_epoch}
            row["images_per_s"] = count / max(row["seconds"], 1e-9)
            self.history.append(row)
            self.save_checkpoint()
            self.run.write("metrics.jsonl", lambda f: f.write("".join(json.dumps(r) + "\n" for r in self.history).encode()))
            name = f"reconstruction-epoch{epoch:03d}.png"
            self.run.write_files([name], lambda d: self.plot_reconstruction(d / name, epoch))
            self.log(f"epoch {epoch}/{cfg.epochs}  loss {row['loss']:.4f}  lr {row['lr']:.2e}  {row['seconds']:.1f} s "
                     f"({row['images_per_s']:,.0f} img/s)")

    def checkpoint_state(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "config": asdict(replace(self.cfg, resume=False, force=False)),
                "encoder_config": self.mae.encoder.cfg.to_dict(), "preprocess": self.preprocess.to_dict(),
                "epoch": self.epoch, "batches_done": self.batches_done, "partial": self.partial, "history": self.history,
                "model": self.mae.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": random_state()}

    def save_checkpoint(self) -> None:
        state = self.checkpoint_state()
        self.run.write("checkpoint.pt", lambda f: torch.save(state, f))

    def plot_reconstruction(self, path: Path, epoch: int) -> None:
        from tinyvit.report import pyplot, save_figure

        was = self.mae.training
        self.mae.eval()
        with torch.random.fork_rng(devices=[]):  # the figure draws no numbers from the training RNG
            masked, pasted, original = self.mae.reconstruct(self.figure_images.to(self.device),
                                                            torch.Generator().manual_seed(self.cfg.seed))
        self.mae.train(was)
        mean = torch.tensor(self.preprocess.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.preprocess.std).view(1, -1, 1, 1)
        plt = pyplot()
        n = masked.shape[0]
        fig, axes = plt.subplots(n, 3, figsize=(4.5, 1.5 * n + 0.4), squeeze=False)
        for col, (title, imgs) in enumerate((("masked input", masked), ("reconstruction", pasted), ("original", original))):
            shown = (imgs.float().cpu() * std + mean).clamp(0, 1)
            for row in range(n):
                ax = axes[row][col]
                ax.imshow(shown[row].permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
            axes[0][col].set_title(title, fontsize=9)
        fig.suptitle(f"MAE, epoch {epoch}: {self.cfg.mask_ratio:.0%} of the patches hidden", fontsize=9)
        save_figure(plt, fig, path)

    def finish(self) -> dict:
        from tinyvit.report import pyplot, save_figure

        encoder = self.mae.encoder
        encoder.preprocess = data.eval_preprocess(self.preprocess, self.low_res)
        self.run.write_files(["model.safetensors", "config.json"], partial(save_pretrained, encoder))
        summary = {"method": self.cfg.method, "epochs": self.epoch, "steps": self.epoch * self.steps_per_epoch,
                   "final_loss": self.history[-1]["loss"], "train_images": len(self.train),
                   "seconds": sum(r["seconds"] for r in self.history), "config": asdict(self.cfg)}
        self.run.write_json("summary.json", summary)

        def plot(d: Path):
            plt = pyplot()
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.plot([r["epoch"] for r in self.history], [r["loss"] for r in self.history], marker="o")
            ax.set(xlabel="epoch", ylabel="MSE on the hidden patches", title="MAE pretraining loss")
            ax.grid(alpha=0.3)
            save_figure(plt, fig, d / "loss.png")

        self.run.write_files(["loss.png"], plot)
        return summary


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    cfg, given = parse_args(argv)
    out = cfg.out_dir()
    run = None
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise TinyvitError("tinyvit.pretrain runs in one process; start it without torchrun")
        run = rundir.RunDir.open(out)
        rundir.check(out, resume=cfg.resume, force=cfg.force)
        state = None
        if cfg.resume:
            state = read_run_state(out / "checkpoint.pt", CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
            cfg = resumed_config(cfg, given, state["config"])
        trainer = Pretrainer(cfg, resolve_device(cfg.device), state)
        fingerprints = {"train": rundir.fingerprint(trainer.train)}  # the only split a pretraining run reads
        if cfg.resume:
            run.check_dataset(fingerprints, cfg.allow_data_change, f"--dataset {cfg.dataset} --data-dir {cfg.data_dir}")
    except BaseException as e:
        if run is not None:
            run.abandon()
        if isinstance(e, data.DatasetError):
            raise SystemExit(f"tinyvit.pretrain: error: {data.error_message(e)}") from None
        if isinstance(e, TinyvitError):  # the user's mistake; anything else is a bug and keeps its traceback
            raise SystemExit(f"tinyvit.pretrain: error: {e}") from None
        raise
    try:
        trainer.run = run
        run.start(fresh=not cfg.resume, dataset=fingerprints)
        run.write_json(PRETRAIN_FILE, {"method": cfg.method, "mask_ratio": cfg.mask_ratio, "norm_pix_loss": cfg.norm_pix_loss,
                                       "dataset": cfg.dataset, "train_images": len(trainer.train)})
        if state is not None:
            trainer.log(f"resuming {out} after epoch {trainer.epoch}" +
                        (f" and {trainer.batches_done} batches" if trainer.batches_done else ""))
        with StopRequest(trainer.log) as stop:
            try:
                trainer.fit(stop)
            except Interrupted as e:
                trainer.batches_done, trainer.partial = e.batches_done, e.partial
                trainer.save_checkpoint()
                trainer.log(f"stopped in epoch {e.epoch} after {e.batches_done} of {trainer.steps_per_epoch} batches; "
                            f"checkpoint saved. Continue with: python -m tinyvit.pretrain --out {out} --resume")
                return 128 + (stop.signum or signal.SIGINT)
            except KeyboardInterrupt:
                trainer.log("interrupted twice: quitting without saving")
                return 130
            except TinyvitError as e:  # a NaN loss
                raise SystemExit(f"tinyvit.pretrain: error: {e}") from None
            summary = trainer.finish()
        trainer.log(f"final loss {summary['final_loss']:.4f} after {summary['steps']} steps; wrote {out}/: "
                    f"model.safetensors + config.json (the encoder; python -m tinyvit.finetune --weights {out}), "
                    f"metrics.jsonl, summary.json, loss.png, reconstruction-epoch*.png")
        return 0
    except rundir.WriteError as e:  # a full disk while writing a file: the run's files are as they were
        raise SystemExit(f"tinyvit.pretrain: error: {e}") from None
    finally:
        if run is not None:
            run.close()


if __name__ == "__main__":
    sys.exit(main())
