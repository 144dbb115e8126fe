"""What a run trains for: the task seam of tinyvit/trainer.py's one loop.

`Trainer.fit` is the same loop for every objective (batch, forward, loss, backward, step, schedule;
at each epoch's end the epoch's row, checkpoint.pt, metrics.jsonl, the log line). A task is what
differs between objectives:

    Classification       labels. Its loss is the recipe's (cross-entropy, label smoothing, soft targets
                         after MixUp/CutMix: tinyvit/recipe.py), plus DeiT's distillation term
                         (tinyvit/distill.py) and FDViT's reconstruction term (--fd-ratio, tinyvit/fdvit.py).
                         Validation at each epoch's end; a frozen prefix's features cached (tinyvit/cache.py).
                         FixMatch (tinyvit/fixmatch.py, --unlabelled rest) is Classification plus unlabelled images.
    MaskedImageModeling  MAE (tinyvit/mae.py; `python -m tinyvit.pretrain`): the training images without
                         their labels, no validation split read; a reconstruction figure per epoch; the
                         encoder is the run's model, for `finetune --weights RUN`.

A task is built with the Trainer, reads what it set up (config, device, data, run directory), and
answers: `model` (what checkpoint.pt holds) and `network` (what a step calls), `param_groups(lr)`,
`loss(inputs, targets, labels, indices, meter)`, `after_step()`, `prepare(stop)`, `end_epoch(train_sums, stop)` (the
epoch's row), `epoch_line(row)`, `state()` (its part of checkpoint.pt), `start(run)` and `finish()`.
"""
from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from tinyvit import data, freeze, recipe, rundir
from tinyvit.checkpoint import CheckpointError, save_pretrained
from tinyvit.convert import check_config_fits, model_of_run_state
from tinyvit.errors import MissingFileError, TinyvitError
from tinyvit.evaluate import evaluate, per_class_accuracy
from tinyvit.hub import DownloadError, create_model
from tinyvit.mae import PRETRAIN_FILE, MaskedAutoencoder, finetune_model
from tinyvit.presets import PRESETS, build_model as build_preset, parse_overrides
from tinyvit.preprocess import Preprocess
from tinyvit.report import plot_confusion, plot_curves, speedup_line, timing
from tinyvit.schedule import epoch_batches

WHERE = {"device": "in GPU memory", "memory": "in memory", "disk": "on disk (memmap)"}
FIGURE_IMAGES = 8  # MAE's reconstruction figure: the same images and masks every epoch


# ---------------------------------------------------------------------------------------------
# Classification: the model, with its new head at the training resolution, and what trains.
# ---------------------------------------------------------------------------------------------


def fd_reconstruction(model: nn.Module, cfg) -> nn.Module:
    """FDViT (tinyvit/fdvit.py): its FD layers' decoders exist only while --fd-ratio trains them."""
    if not (math.isfinite(cfg.fd_ratio) and cfg.fd_ratio >= 0):
        raise TinyvitError(f"--fd-ratio {cfg.fd_ratio}: expected a loss weight of 0 or more")
    try:
        return model.set_reconstruction(cfg.fd_mask if cfg.fd_ratio else None)
    except ValueError as e:
        raise TinyvitError(f"--fd-ratio {cfg.fd_ratio:g} on {cfg.model}: {e}") from e


def load_model(cfg, num_classes: int, warn: Callable[[str], None]) -> nn.Module:
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


def build_model(cfg, classes: list, resume_state: Optional[dict], device: torch.device,
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


def build_teacher(cfg, classes: list, preprocess: Preprocess, low_res: bool, split: freeze.Split, device: torch.device):
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


def cache_plan(cfg, split: freeze.Split) -> tuple[bool, bool]:
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


class Classification:
    """Labels: the recipe's loss, with distillation and FDViT's reconstruction as terms of it."""

    sums = ("correct", "aux_sum")  # the epoch's sums beyond the loss and the image count
    validates = True

    def __init__(self, t, resume_state: Optional[dict]):
        cfg = t.cfg
        self.t, self.classes = t, t.splits.classes
        self.model, self.partly_frozen = build_model(cfg, self.classes, resume_state, t.device, t.warn)
        self.network = self.partly_frozen
        self.preprocess = self.model.preprocess  # at the training resolution
        self.distiller = build_teacher(cfg, self.classes, self.preprocess, t.splits.low_res, self.partly_frozen, t.device)
        self.recipe = recipe.Recipe.from_config(cfg)
        self.mix = self.recipe.batch_transform(len(self.classes))  # MixUp/CutMix: soft targets, or None
        self.cache_train, self.cache_val = cache_plan(cfg, self.partly_frozen)
        self.last_confusion: Optional[torch.Tensor] = (resume_state or {}).get("last_confusion")
        self.cache_seconds = 0.0  # building caches, counted in the next epoch's time

    def param_groups(self, lr: float) -> list[dict]:
        return freeze.param_groups(self.model, self.t.cfg.weight_decay, self.t.cfg.layer_decay, lr)

    def after_step(self) -> None:
        """After each optimizer step (tinyvit/fixmatch.py: its weights' moving average)."""

    def loss(self, inputs, targets, labels, indices, meter) -> torch.Tensor:
        t = self.t
        features = inputs if t.features["train"] is not None else self.partly_frozen.prefix(inputs)
        logits = t.train_net(features)
        if self.distiller is None:
            loss = self.recipe.loss(logits, targets)
        else:
            loss, logits = self.distiller.loss(logits, targets, inputs, indices)  # DeiT's; logits: the heads' mean
        aux = self.model.auxiliary_loss() if t.cfg.fd_ratio else None  # FDViT: the FD layers' MSE, if
        if aux is not None:  # any trained FD layer ran in this forward (a frozen prefix's did not)
            meter.add(aux_sum=aux.double() * logits.shape[0])
            loss = loss + t.cfg.fd_ratio * aux
        n = labels.numel()
        meter.add(loss_sum=loss.double() * n, count=n, correct=(logits.argmax(1) == labels).sum())
        return loss

    # -- the epoch's end ----------------------------------------------------------------------

    def end_epoch(self, train: dict, stop) -> Optional[dict]:
        """Validate; the epoch's row, or None when stopped on the way."""
        t = self.t
        val_start = time.perf_counter()
        tally = self.validate(stop)
        if tally is None:
            return None
        val_seconds = time.perf_counter() - val_start
        row = {
            "epoch": len(t.history) + 1,
            "train_loss": train["loss_sum"] / train["count"], "train_acc": train["correct"] / train["count"],
            "val_loss": tally.loss, "val_acc": tally.acc,
            "seconds": train["train_seconds"] + val_seconds + self.cache_seconds,
            "lr": t.lr * t.scheduler.lr_lambdas[0](t.step - 1),
            "train_seconds": train["train_seconds"], "val_seconds": val_seconds,
            "cache_seconds": self.cache_seconds, "train_images_per_s": train["count"] / max(train["train_seconds"], 1e-9),
            "cached": t.features["train"] is not None, "train_images": train["count"], "val_images": tally.count,
        }
        if self.distiller is not None:
            row.update(self.distiller.epoch_metrics())
        if t.cfg.fd_ratio:  # FDViT's two terms: classification, and the unweighted reconstruction MSE
            recon = train["aux_sum"] / train["count"]
            row.update(train_cls_loss=row["train_loss"] - t.cfg.fd_ratio * recon, train_recon_loss=recon)
        self.last_confusion = tally.confusion
        self.cache_seconds = 0.0
        return row

    def epoch_line(self, row: dict) -> str:
        line = (f"epoch {row['epoch']}/{self.t.cfg.epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%  "
                f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%  lr {row['lr']:.2e}  "
                f"{row['seconds']:.1f} s ({row['train_images_per_s']:,.0f} img/s{', cached features' if row['cached'] else ''})")
        history = self.t.history
        return line + ("\n" + speedup_line(history) if row["epoch"] == 2 and history[0]["cached"] else "")

    @torch.no_grad()
    def validate(self, stop):
        t = self.t
        cached = t.features["val"] is not None
        lists = epoch_batches(len(t.val_data), t.batch, t.dist, t.cfg.seed, 0, shuffle=False)
        t.eval_net.eval()

        def forward(inputs):
            return t.eval_net(inputs if cached else self.partly_frozen.prefix(inputs))

        # Processes hold unequal shares of the validation set, so only a single process may stop midway.
        should_stop = (lambda: stop.requested) if t.dist.world == 1 else (lambda: False)
        with t.bar(len(t.val_data), f"epoch {len(t.history) + 1}/{t.cfg.epochs} val") as bar:
            return evaluate(forward, t.batches("val", lists), len(self.classes), t.device, t.dtype, bar, should_stop)

    # -- caches -------------------------------------------------------------------------------

    def prepare(self, stop) -> bool:
        """The frozen prefix's features and the teacher's logits, once per run; False if stopped."""
        from tinyvit import cache

        t = self.t
        should_stop = lambda: t.stop_or_nan(stop)  # noqa: E731
        for name, wanted, source in (("train", self.cache_train, t.train_data), ("val", self.cache_val, t.val_data)):
            if not wanted or t.features[name] is not None:
                continue
            with t.bar(len(source), f"caching {name} features") as bar:
                built = cache.build(
                    self.partly_frozen.prefix, source, storage=t.cfg.cache, device=t.device, dtype=t.dtype,
                    path=t.out / rundir.CACHE_DIR / f"{name}.npy", batch_size=t.batch, rank=t.dist.rank,
                    world=t.dist.world, progress=bar, should_stop=should_stop,
                )
            if built is None:
                return False
            t.features[name] = built
            self.cache_seconds += built.seconds
            t.log(f"cached {name} features: {len(built):,} x {list(built.features.shape[1:])} {str(built.dtype)[6:]} "
                  f"{WHERE[built.storage]} ({built.nbytes / 2**20:,.0f} MiB), {built.seconds:.1f} s, "
                  f"{len(built) / max(built.seconds, 1e-9):,.0f} img/s through the frozen prefix")
        if self.distiller is not None:  # the teacher's val accuracy, and its logits once when not augmenting
            self.cache_seconds += self.distiller.build(
                t.train_data, t.val_data, cached=not t.cfg.augment, dtype=t.dtype, batch_size=t.batch,
                rank=t.dist.rank, world=t.dist.world, path=t.out / rundir.CACHE_DIR, progress=t.bar, log=t.log)
        return True

    # -- the run's files ----------------------------------------------------------------------

    def describe(self) -> list[str]:
        from tinyvit.flops import LAYERS_ONLY, model_flops

        lines = [self.partly_frozen.describe()]
        if getattr(self.model.cfg, "token_learner_tokens", 0):  # the compute TokenLearner saves
            from tinyvit.flops import describe_token_learner

            lines.append(describe_token_learner(self.model.cfg))
        layers_only = LAYERS_ONLY.get(self.model.arch)
        if layers_only is not None:
            lines.append(f"forward FLOPs per image: {model_flops(self.model) / 1e9:.3f} G with the attention matmuls, "
                         f"{layers_only(self.model) / 1e9:.3f} G layers only (2 FLOPs per multiply-add)")
        return lines

    def fingerprints(self) -> dict:
        return rundir.fingerprints(self.t.splits.train, self.t.splits.val)

    def state(self) -> dict:
        return {"classes": self.classes, "last_confusion": self.last_confusion}

    def start(self, run) -> None:
        run.write_json("classes.json", self.classes)

    def finish(self) -> dict:
        """The final model, figures and summary (rank 0)."""
        t, cfg = self.t, self.t.cfg
        # The model carries the preprocessing it was trained with, so evaluate/predict reproduce it.
        self.model.preprocess = data.eval_preprocess(self.preprocess, t.splits.low_res)
        t.run.write_files(["model.safetensors", "config.json"], partial(save_pretrained, self.model))
        trainable, total = freeze.count_parameters(self.model)
        best = max(t.history, key=lambda r: r["val_acc"])
        confusion = self.last_confusion
        summary = {
            "model": cfg.model, "weights": cfg.weights, "dataset": cfg.dataset, "unfreeze": cfg.unfreeze,
            "image_size": self.preprocess.image_size, "epochs": len(t.history),
            "final": t.history[-1], "best": best,
            "trainable_params": trainable, "total_params": total,
            "trainable_groups": self.partly_frozen.trainable_groups(),
            "classes": self.classes, "per_class_acc": per_class_accuracy(confusion), "confusion": confusion.tolist(),
            "timing": timing(t.history), "config": t.run_config(),
        }
        t.run.write_json("summary.json", summary)
        t.run.write_files(["curves.png"], lambda d: plot_curves(t.history, d / "curves.png"))
        t.run.write_files(["confusion.png"], lambda d: plot_confusion(confusion, self.classes, d / "confusion.png"))
        return summary


# ---------------------------------------------------------------------------------------------
# Masked image modeling: MAE.
# ---------------------------------------------------------------------------------------------


def build_mae(cfg, resume_state: Optional[dict], warn: Callable[[str], None]) -> MaskedAutoencoder:
    """A new MAE around a new encoder of --model, or the one checkpoint.pt holds, its saved config
    checked against its saved weights before anything is built (as a classifier's)."""
    for name in ("decoder_dim", "decoder_depth", "decoder_heads"):
        if getattr(cfg, name) < 1:
            raise TinyvitError(f"--{name.replace('_', '-')} {getattr(cfg, name)} must be at least 1")
    if PRESETS[cfg.model]["arch"] != "vit":
        raise TinyvitError(f"--model {cfg.model}: MAE pretrains a ViT encoder; choose a ViT preset")
    if resume_state is None:
        overrides = parse_overrides(cfg.override, cfg.model)
        if overrides.pop("fc_norm", False):
            warn("fc_norm is a fine-tuning choice (finetune --override fc_norm=True); MAE pretrains with the final norm")
        encoder = create_model(cfg.model, num_classes=0, image_size=cfg.image_size, **overrides)
    else:
        path = cfg.out_dir() / "checkpoint.pt"
        weights = {k[len("encoder."):]: v for k, v in resume_state["model"].items() if k.startswith("encoder.")}
        check_config_fits("vit", resume_state["model_config"], weights, path)
        encoder = build_preset("vit", resume_state["model_config"], Preprocess.from_dict(resume_state["preprocess"]))
    mae = MaskedAutoencoder(encoder, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, cfg.mask_ratio, cfg.norm_pix_loss)
    if resume_state is not None:
        try:
            mae.load_state_dict(resume_state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{path}: the weights do not fit the run's MAE ({str(e).splitlines()[0]})") from None
    return mae


class MaskedImageModeling:
    """MAE pretraining: the loss on the hidden patches; the training split only, labels unused."""

    sums = ()
    validates = False
    mix = None

    def __init__(self, t, resume_state: Optional[dict]):
        self.t = t
        self.model = self.network = build_mae(t.cfg, resume_state, t.warn).to(t.device)
        self.encoder = self.model.encoder
        self.preprocess = self.encoder.preprocess
        self.recipe = recipe.Recipe.from_config(t.cfg)
        self.classes: list = []
        self.figure = None  # the images of the reconstruction figure, prepared once

    def param_groups(self, lr: float) -> list[dict]:
        """main_pretrain.py's timm `add_weight_decay`: no decay for 1-d parameters, decay for all the
        rest, the class and mask tokens included (MaskedAutoencoderViT names no exceptions)."""
        return freeze.param_groups(self.model, self.t.cfg.weight_decay, skip=set())

    def loss(self, inputs, targets, labels, indices, meter) -> torch.Tensor:
        loss = self.t.train_net(inputs)[0]
        meter.add(loss_sum=loss.double() * inputs.shape[0], count=inputs.shape[0])
        return loss

    def prepare(self, stop) -> bool:
        return True

    def after_step(self) -> None:
        pass

    def end_epoch(self, train: dict, stop) -> dict:
        t = self.t
        epoch = len(t.history) + 1
        row = {"epoch": epoch, "loss": train["loss_sum"] / train["count"], "lr": t.lr * t.scheduler.lr_lambdas[0](t.step - 1),
               "seconds": train["train_seconds"], "images": train["count"], "steps": t.step,
               "images_per_s": train["count"] / max(train["train_seconds"], 1e-9)}
        if t.dist.main:
            name = f"reconstruction-epoch{epoch:03d}.png"
            t.run.write_files([name], lambda d: self.plot_reconstruction(d / name, epoch))
        return row

    def epoch_line(self, row: dict) -> str:
        return (f"epoch {row['epoch']}/{self.t.cfg.epochs}  loss {row['loss']:.4f}  lr {row['lr']:.2e}  "
                f"{row['seconds']:.1f} s ({row['images_per_s']:,.0f} img/s)")

    def describe(self) -> list[str]:
        cfg, enc = self.t.cfg, self.encoder.cfg
        L = enc.grid_size**2
        params = sum(p.numel() for p in self.encoder.parameters())
        return [f"MAE on the training split only: {len(self.t.splits.train):,} images of {cfg.dataset}, labels ignored, "
                f"validation images never read; {cfg.model} encoder ({params:,} parameters) at {enc.image_size} px, "
                f"{L} patches of {enc.patch_size}x{enc.patch_size}, {int(L * (1 - cfg.mask_ratio))} visible "
                f"({cfg.mask_ratio:g} masked); decoder {cfg.decoder_depth} x {cfg.decoder_dim}-d, {cfg.decoder_heads} heads; "
                f"AdamW (0.9, 0.95), lr {self.t.lr:.3g} = " + (f"blr {cfg.blr:g} x {cfg.batch_size} / 256" if cfg.lr is None
                                                                 else "--lr") + f", norm_pix_loss {cfg.norm_pix_loss}"]

    def fingerprints(self) -> dict:
        return {"train": rundir.fingerprint(self.t.splits.train)}  # the only split a pretraining run reads

    def state(self) -> dict:
        return {"classes": []}

    def start(self, run) -> None:
        cfg = self.t.cfg
        run.write_json(PRETRAIN_FILE, {"method": cfg.method, "mask_ratio": cfg.mask_ratio, "norm_pix_loss": cfg.norm_pix_loss,
                                       "dataset": cfg.dataset, "train_images": len(self.t.splits.train)})

    def figure_images(self) -> torch.Tensor:
        """The first FIGURE_IMAGES training images as the encoder sees them, unaugmented."""
        if self.figure is None:
            n = min(FIGURE_IMAGES, len(self.t.train_data))
            self.figure = next(iter(self.t.train_data.batches([list(range(n))])))[0]
        return self.figure

    def plot_reconstruction(self, path: Path, epoch: int) -> None:
        from tinyvit.report import pyplot, save_figure

        was = self.model.training
        self.model.eval()
        with torch.random.fork_rng(devices=[]):  # the figure draws no numbers from the training RNG
            masked, pasted, original = self.model.reconstruct(self.figure_images(), torch.Generator().manual_seed(self.t.cfg.seed))
        self.model.train(was)
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
        fig.suptitle(f"MAE, epoch {epoch}: {self.t.cfg.mask_ratio:.0%} of the patches hidden", fontsize=9)
        save_figure(plt, fig, path)

    def finish(self) -> dict:
        from tinyvit.report import pyplot, save_figure

        t = self.t
        self.encoder.preprocess = data.eval_preprocess(self.preprocess, t.splits.low_res)
        t.run.write_files(["model.safetensors", "config.json"], partial(save_pretrained, self.encoder))
        summary = {"method": t.cfg.method, "epochs": len(t.history), "steps": t.step, "final_loss": t.history[-1]["loss"],
                   "train_images": len(t.splits.train), "seconds": sum(r["seconds"] for r in t.history),
                   "config": t.run_config()}
        t.run.write_json("summary.json", summary)

        def plot(d: Path):
            plt = pyplot()
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.plot([r["epoch"] for r in t.history], [r["loss"] for r in t.history], marker="o")
            ax.set(xlabel="epoch", ylabel="MSE on the hidden patches", title="MAE pretraining loss")
            ax.grid(alpha=0.3)
            save_figure(plt, fig, d / "loss.png")

        t.run.write_files(["loss.png"], plot)
        return summary


TASKS = {None: Classification, "mae": MaskedImageModeling}
