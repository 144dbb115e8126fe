"""FixMatch (Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
Confidence", NeurIPS 2020; official code google-research/fixmatch `fixmatch.py`, PyTorch port
kekmodel/FixMatch-pytorch `train.py`): a classification task that also learns from unlabelled images.

Each step takes the labelled batch of B images and mu x B unlabelled ones. Every unlabelled image is
seen twice: a weakly augmented view, whose prediction (no gradient) becomes a pseudo-label where its
largest probability reaches tau, and a strongly augmented view (RandAugment, then Cutout), trained
with cross-entropy against that pseudo-label:

    loss = recipe loss(labelled) + lambda_u * mean over all mu x B images of mask x CE(strong, pseudo-label)

The mean includes the masked images (the official code's `reduce_mean(loss_xeu * pseudo_mask)`),
so the unlabelled term grows as more pseudo-labels pass tau. One forward runs the labelled batch
and both views together, as the official code's `para_cat` (BatchNorm's statistics come from the
whole concatenation). Evaluation uses an exponential moving average of the weights (decay 0.999,
warmed up: see below).

`--unlabelled rest` names the unlabelled images: the training images `--limit-train` leaves out
(all but the labelled subset of the training split; the validation split is never among them).
Their labels are never read: `ImagesOnly` drops them as the images are loaded.

Where this differs from the official code, and why:
- The labelled batch gets the run's own recipe (tinyvit/recipe.py: --recipe scratch's RandAugment
  ...), not the weak augmentation alone, so a FixMatch run differs from the plain run it is compared
  with by the unlabelled term only. The unlabelled term is plain cross-entropy. Label smoothing eps
  is refused where it would silence that term: it trains a prediction towards 1 - eps + eps / K at
  most (0.91 for eps 0.1 and 10 classes), below the paper's tau of 0.95, and a digits pilot with
  --recipe scratch passed no pseudo-label in 605 steps; `--label-smoothing 0`, as the paper.
- The weak view is the dataset's own geometry (its flip and shift traits, --flip/--shift: the
  paper's flip and a shift of an eighth of the side where the dataset allows them; digits allow
  neither, so their weak view is the image itself). The strong view draws its own geometry, then
  tinyvit/augment.py's FixMatchRandAugment (the port's RandAugmentMC: a magnitude drawn per image
  and op, each op applied with probability 1/2; torchvision's op table) and Cutout of half the side
  in grey. The official code's default policy is CTAugment; RandAugment is its paper's other variant.
- The optimizer and schedule stay the run's (AdamW, warm-up, cosine to 0), not SGD with Nesterov
  momentum and the cos(7 pi k / 16K) decay: the same recipe as the supervised arms it is compared to.
- The port's `interleave` exists to share BatchNorm statistics across GPUs' slices; here one forward
  per process takes the whole concatenation, and under DDP each process normalises its own share.
- The EMA's decay is warmed up, as TensorFlow's ExponentialMovingAverage does when given the step
  (`num_updates`): update k (from 0) uses min(decay, (1 + k) / (10 + k)). The official code passes no
  step: over its 2^20 steps the initial weights' share, 0.999^k, vanishes; over a digits run's 605 steps
  it would still be 0.999^605 = 55% (92% after ResNet-18's 88), so the averaged model validated and
  saved would be mostly the random initialisation. With the warm-up, update 600 uses 0.985 (an average
  over the last 70 or so steps) and updates from 8,990 on use 0.999.
- The EMA averages the parameters that train and copies the buffers (BatchNorm's running statistics)
  as the port's ModelEMA does; parameters that do not train are copied, so a frozen prefix's cached
  features stay valid.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tinyvit import data
from tinyvit.augment import BatchAugment, pick
from tinyvit.checkpoint import CheckpointError
from tinyvit.errors import TinyvitError
from tinyvit.tasks import TASKS, Classification

UNLABELLED = ("none", "rest")  # --unlabelled: none (supervised), rest (what --limit-train leaves out)
EMA_DECAY = 0.999  # the official code's default
STREAM = (0, 1)  # keys that set the unlabelled draws apart from the labelled batch's (tinyvit/augment.py)


def task_of(cfg):
    """The task class of a run: FixMatch when --unlabelled names images, else the method's."""
    if cfg.unlabelled not in UNLABELLED:
        raise TinyvitError(f"--unlabelled {cfg.unlabelled!r}: expected one of {', '.join(UNLABELLED)}")
    if cfg.unlabelled == "none":
        default = type(cfg)()
        if any(getattr(cfg, k) != getattr(default, k) for k in ("mu", "tau", "lambda_u", "ema")):
            raise TinyvitError("--mu, --tau, --lambda-u and --ema set FixMatch, which needs --unlabelled rest")
        return TASKS[cfg.method]
    if cfg.method is not None:
        raise TinyvitError(f"--unlabelled {cfg.unlabelled}: FixMatch trains a classifier, not --method {cfg.method}")
    if cfg.mu < 1:
        raise TinyvitError(f"--mu {cfg.mu}: expected at least 1 unlabelled batch per labelled one")
    if not 0 <= cfg.tau <= 1:
        raise TinyvitError(f"--tau {cfg.tau}: expected a confidence threshold between 0 and 1")
    if not cfg.lambda_u >= 0 or cfg.lambda_u == float("inf"):
        raise TinyvitError(f"--lambda-u {cfg.lambda_u}: expected a loss weight of 0 or more")
    if cfg.ema is not None and not 0 <= cfg.ema < 1:
        raise TinyvitError(f"--ema {cfg.ema}: expected a decay in [0, 1) (0: no averaging)")
    if cfg.teacher is not None:
        raise TinyvitError("--unlabelled rest with --teacher: FixMatch does not combine with distillation here")
    return FixMatch


def unlabelled_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor, tau: float):
    """(FixMatch's unlabelled term, its mask [n]): the weak view's argmax as the pseudo-label (no gradient),
    kept where its probability reaches tau; the strong view's cross-entropy against it, averaged over
    all n images, the masked ones counting as 0 (the official code's reduce_mean(loss_xeu * pseudo_mask))."""
    confidence, pseudo = logits_weak.detach().float().softmax(1).max(1)
    mask = (confidence >= tau).float()
    return (F.cross_entropy(logits_strong.float(), pseudo, reduction="none") * mask).mean(), mask


class ImagesOnly(Dataset):
    """A dataset's images with their labels dropped as they are read (each item's label is 0)."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base[i][0], 0


def left_out(train: Dataset) -> data.Subset:
    """The training images --limit-train did not pick (data.limit), in the split's order."""
    if not isinstance(train, data.Subset):
        raise TinyvitError("--unlabelled rest: --limit-train keeps every training image, so none is left unlabelled; "
                           "pass --limit-train N below the split's size")
    kept = set(train.indices)
    return data.Subset(train.base, [i for i in range(len(train.base)) if i not in kept])


class Stream:
    """An endless stream of the n unlabelled images: one seeded permutation after another (the official
    code's repeat().shuffle()), cut into pieces of `size` (mu x the global batch), so step k's images are
    a pure function of (seed, k): a resumed run and every DDP process see the same ones."""

    def __init__(self, n: int, size: int, seed: int):
        self.n, self.size, self.seed = n, size, seed
        self.cached = (-1, None)  # (pass, its permutation)

    def permutation(self, k: int) -> torch.Tensor:
        if self.cached[0] != k:
            g = torch.Generator().manual_seed(data.sample_seed(self.seed, k, *STREAM))
            self.cached = (k, torch.randperm(self.n, generator=g))
        return self.cached[1]

    def indices(self, step: int) -> list[int]:
        out, position = [], step * self.size
        while len(out) < self.size:
            k, offset = divmod(position + len(out), self.n)
            out += self.permutation(k)[offset:offset + self.size - len(out)].tolist()
        return out


class EMA:
    """Exponential moving average of a model's weights: after update k (from 0), ema = d x ema + (1 - d)
    x weight for the parameters that train, with d = min(decay, (1 + k) / (10 + k)); buffers and frozen
    parameters copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.averaged = {name for name, p in model.named_parameters() if p.requires_grad}
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, k: int) -> None:
        d = min(self.decay, (1 + k) / (10 + k))  # a pure function of the step: a resume continues it exactly
        for name, value in model.state_dict().items():
            if name in self.averaged:
                self.state[name].lerp_(value.detach(), 1 - d)
            else:
                self.state[name].copy_(value)

    def load(self, state: dict, where: str) -> None:
        if state is None or state.keys() != self.state.keys():
            raise CheckpointError(f"{where}: no EMA weights for this FixMatch run's model")
        for k, v in state.items():
            self.state[k].copy_(v)

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module):
        """The model holds the averaged weights inside the block, its own again after it."""
        live = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(live)


class FixMatch(Classification):
    """Classification plus FixMatch's unlabelled term; validation and the saved model use the EMA weights."""

    sums = (*Classification.sums, "unlabelled_sum", "mask_sum", "unlabelled_count")

    def __init__(self, t, resume_state: Optional[dict]):
        super().__init__(t, resume_state)
        cfg, splits = t.cfg, t.splits
        if not splits.low_res or self.recipe.trivialaugment:
            raise TinyvitError(f"--unlabelled {cfg.unlabelled}: FixMatch's two views are tinyvit/augment.py's batched "
                               f"augmentation, for low-res datasets held as one tensor (not photos, not --trivialaugment)")
        eps, k = self.recipe.label_smoothing, len(self.classes)
        if cfg.tau > 1 - eps + eps / k:  # label smoothing's optimum: 1 - eps + eps / k for the labelled class
            raise TinyvitError(f"--tau {cfg.tau:g}: label smoothing {eps:g} (--label-smoothing; --recipe scratch sets 0.1) trains a "
                               f"prediction towards {1 - eps + eps / k:.3g} at most with {k} classes, so few or no "
                               f"pseudo-labels would pass: pass --label-smoothing 0 (as the paper) or a lower --tau")
        rest = left_out(splits.train)
        held = data.as_tensor(ImagesOnly(rest)) if len(rest) else None
        if held is None:
            raise TinyvitError(f"--unlabelled rest: the {len(rest):,} images --limit-train leaves out "
                               f"{'do not fit in memory as one tensor' if len(rest) else 'are none'}")
        self.images = held[0].to(t.device)
        self.stream = Stream(len(rest), cfg.mu * cfg.batch_size, cfg.seed)
        pre = data.eval_preprocess(self.preprocess, splits.low_res)
        geometry = dict(padding=data.shift_padding(splits.traits.size) if splits.traits.shift else 0, flip=splits.traits.flip)
        self.weak = BatchAugment(pre.image_size, pre.interpolation, pre.mean, pre.std, **geometry)
        self.strong = BatchAugment(pre.image_size, pre.interpolation, pre.mean, pre.std, strong=True, **geometry)
        self.decay = EMA_DECAY if cfg.ema is None else cfg.ema
        self.ema = EMA(self.model, self.decay) if self.decay else None
        if self.ema is not None and resume_state is not None:
            self.ema.load(resume_state.get("ema"), cfg.out_dir() / "checkpoint.pt")

    def views(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step `step`'s unlabelled images, weak and strong: drawn for the global mu x B, this process's
        every world-th (as TensorBatches does for the labelled batch)."""
        dist, size = self.t.dist, self.stream.size
        mine = self.stream.indices(step)[dist.rank::dist.world]
        images = self.images[torch.as_tensor(mine, device=self.images.device)]
        g = torch.Generator().manual_seed(data.sample_seed(self.t.cfg.seed, step, *STREAM))
        weak = self.weak(images, pick(self.weak.draw(size, g), dist.rank, dist.world))
        return weak, self.strong(images, pick(self.strong.draw(size, g), dist.rank, dist.world))

    def loss(self, inputs, targets, labels, indices, meter) -> torch.Tensor:
        t, cfg = self.t, self.t.cfg
        weak, strong = self.views(t.step)
        labelled = inputs if t.features["train"] is not None else self.partly_frozen.prefix(inputs)
        logits = t.train_net(torch.cat([labelled, self.partly_frozen.prefix(torch.cat([weak, strong]))]))
        b = labelled.shape[0]
        logits_x, (logits_weak, logits_strong) = logits[:b], logits[b:].chunk(2)
        loss_u, mask = unlabelled_loss(logits_weak, logits_strong, cfg.tau)
        loss = self.recipe.loss(logits_x, targets) + cfg.lambda_u * loss_u
        aux = self.model.auxiliary_loss() if cfg.fd_ratio else None  # FDViT's reconstruction, over every image
        if aux is not None:
            meter.add(aux_sum=aux.double() * b)
            loss = loss + cfg.fd_ratio * aux
        meter.add(loss_sum=loss.double() * b, count=b, correct=(logits_x.argmax(1) == labels).sum(),
                  unlabelled_sum=loss_u.double() * b, mask_sum=mask.sum().double(), unlabelled_count=mask.numel())
        return loss

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update(self.model, self.t.step)  # the step just taken (the trainer counts it after)

    def validate(self, stop):
        if self.ema is None:
            return super().validate(stop)
        with self.ema.swapped_into(self.model):
            return super().validate(stop)

    def end_epoch(self, train: dict, stop) -> Optional[dict]:
        row = super().end_epoch(train, stop)
        if row is not None:  # the unlabelled term per step, and the share of pseudo-labels past tau
            row.update(train_unlabelled_loss=train["unlabelled_sum"] / train["count"],
                       mask_rate=train["mask_sum"] / max(train["unlabelled_count"], 1))
        return row

    def epoch_line(self, row: dict) -> str:
        return super().epoch_line(row) + f"  unlabelled loss {row['train_unlabelled_loss']:.4f}, {100 * row['mask_rate']:.1f}% past tau"

    def describe(self) -> list[str]:
        cfg = self.t.cfg
        views = f"weak: {'flip' if self.weak.flip else 'no flip'}, {'shift' if self.weak.padding else 'no shift'}"
        return super().describe() + [
            f"FixMatch: {len(self.images):,} unlabelled images (the training images --limit-train leaves out; labels "
            f"never read), {cfg.mu} x {cfg.batch_size} = {self.stream.size} per step; tau {cfg.tau:g}, lambda_u "
            f"{cfg.lambda_u:g}, EMA {self.decay:g}" + (" warmed up (validation and the saved model)" if self.ema else " (off)")
            + f"; {views}; strong: the same, RandAugment (random magnitude), Cutout"]

    def state(self) -> dict:
        return {**super().state(), "ema": self.ema.state if self.ema is not None else None}

    def finish(self) -> dict:
        if self.ema is not None:  # the model the paper evaluates: the averaged weights
            self.model.load_state_dict(self.ema.state)
        return super().finish()
