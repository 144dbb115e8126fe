"""A from-scratch training recipe: the augmentation and regularisation that let a ViT learn from little data.

A ViT has few built-in assumptions about images (tutorial 9), so trained from scratch on a small set
it memorises the training images long before it generalises. The data-efficient recipes make the
training set look larger and the targets less certain. DeiT (Touvron et al. 2021, "Training
data-efficient image transformers", table 9; facebookresearch/deit `main.py`) trains ViT-B on
ImageNet-1k alone with, on top of AdamW and a cosine schedule:

    RandAugment (2 ops, magnitude 9)    timm --aa rand-m9-mstd0.5-inc1
    MixUp alpha 0.8, CutMix alpha 1.0   timm --mixup 0.8 --cutmix 1.0 (one of the two per batch)
    label smoothing 0.1                 timm --smoothing 0.1
    random erasing p 0.25               timm --reprob 0.25
    (and stochastic depth 0.1: a model setting here, `--override drop_path=0.1`)

Every piece here is torchvision's (`torchvision.transforms.v2`), not written by hand:
- per image, on the way in: `v2.RandAugment` (Cubuk et al. 2020) or `v2.TrivialAugmentWide`
  (Mueller & Hutter 2021: one random op at a random strength, no tuning), then after normalisation
  `v2.RandomErasing` (Zhong et al. 2020); for datasets held as one tensor, RandAugment and erasing
  run a batch at a time with per-image parameters (tinyvit/augment.py, torchvision's op table);
- per batch, in the training loop: `v2.MixUp` (Zhang et al. 2018) or `v2.CutMix` (Yun et al. 2019),
  which turn the integer labels into soft targets [b, classes]; the loss is cross-entropy against
  them (`F.cross_entropy` takes probabilities), with label smoothing (Szegedy et al. 2016) on top.

What makes sense depends on the data, and the dataset knows (tinyvit/data.py): the geometric part
stays the dataset's own (a CIFAR crop and flip; a digit neither shifted nor mirrored: a mirrored 3 is
not a digit). Of the two policies, RandAugment at magnitude 9 rotates by at most 9 degrees and
shears by 0.27; TrivialAugmentWide may rotate by up to 135 degrees and turn a 6 into a 9, so the
`scratch` bundle uses RandAugment, and TrivialAugmentWide is there for photos.

`--recipe scratch` sets all of the above at once (SCRATCH below), together with random weights,
every layer trainable and a learning rate for training from scratch; each explicit flag wins over
the bundle (`--recipe scratch --mixup 0` is the bundle without MixUp).

Measured on the digits (README "Studies", 2 CPU cores): with `--recipe scratch --mixup 0 --cutmix 0`
a 0.3M-parameter ViT reaches 99.33% validation accuracy after 100 epochs and ResNet-18 99.33% after
8; with MixUp and CutMix on as well the ViT had 79.8% after 40 epochs. The mixing pays over long
schedules (DeiT's 300 epochs) and slows short ones down.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from tinyvit.errors import TinyvitError

RECIPES = ("none", "scratch")

# The `scratch` bundle: DeiT's regularisers (above), plus what training from scratch needs. lr 1e-3
# at batch 128: DeiT's 5e-4 per 512 is tuned for 300 ImageNet epochs; small-data ViTs trained from
# scratch commonly use 1e-3 (omihub777/ViT-CIFAR, kentaroy47/vision-transformers-cifar10).
SCRATCH = dict(
    weights="none", unfreeze="all", lr=1e-3,
    randaugment=True, mixup=0.8, cutmix=1.0, label_smoothing=0.1, random_erasing=0.25,
)
BUNDLES = {"none": {}, "scratch": SCRATCH}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The recipe's flags, on tinyvit.finetune's parser (whose unset flags stay out of the namespace)."""
    g = p.add_argument_group("from-scratch recipe (tinyvit/recipe.py)")
    g.add_argument("--recipe", choices=RECIPES,
                   help="scratch: random weights, all layers, lr 1e-3, RandAugment, MixUp 0.8 / CutMix 1.0, "
                        "label smoothing 0.1, random erasing 0.25 (explicit flags win)")
    policy = g.add_mutually_exclusive_group()
    policy.add_argument("--randaugment", action="store_true", help="RandAugment, 2 ops at magnitude 9 (DeiT's)")
    policy.add_argument("--trivialaugment", action="store_true",
                        help="TrivialAugmentWide (strong rotations: not for digits)")
    g.add_argument("--mixup", type=_nonnegative, metavar="ALPHA", help="MixUp with Beta(ALPHA, ALPHA) weights (0: off)")
    g.add_argument("--cutmix", type=_nonnegative, metavar="ALPHA", help="CutMix with Beta(ALPHA, ALPHA) areas (0: off)")
    g.add_argument("--label-smoothing", type=_probability, metavar="EPS", help="label smoothing (0: off)")
    g.add_argument("--random-erasing", type=_probability, metavar="P", help="erase a random rectangle with probability P")


def _nonnegative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _probability(text: str) -> float:
    value = _nonnegative(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def apply_bundle(cfg, given: set):
    """cfg with the fields of its --recipe bundle that were not given explicitly on the command line."""
    bundle = BUNDLES[cfg.recipe]
    if cfg.recipe == "scratch" and "trivialaugment" in given:
        bundle = {**bundle, "randaugment": False}  # the policy chosen on the command line replaces the bundle's
    return replace(cfg, **{k: v for k, v in bundle.items() if k not in given})


@dataclass
class Settings:
    """The recipe's settings, declared here once: a run's Config (tinyvit/trainer.py) has them as its
    own fields (flags of the same names, add_arguments above), and Recipe acts on them. All off by
    default; --recipe scratch turns them on (SCRATCH)."""

    randaugment: bool = False
    trivialaugment: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    random_erasing: float = 0.0


@dataclass
class Recipe(Settings):
    """A run's recipe: its Settings read from the Config, and what they do to images, batches and the loss."""

    @classmethod
    def from_config(cls, cfg) -> "Recipe":
        recipe = cls(**{f.name: getattr(cfg, f.name) for f in fields(Settings)})
        if recipe.randaugment and recipe.trivialaugment:
            raise TinyvitError("--randaugment and --trivialaugment: choose one policy")
        if not cfg.augment and (recipe.augments_images or recipe.mixes):
            raise TinyvitError("--no-augment contradicts --randaugment/--trivialaugment/--random-erasing/--mixup/--cutmix")
        return recipe

    @property
    def augments_images(self) -> bool:
        return self.randaugment or self.trivialaugment or self.random_erasing > 0

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def describe(self) -> str:
        parts = [name for name, on in (("RandAugment", self.randaugment), ("TrivialAugmentWide", self.trivialaugment)) if on]
        parts += [f"{name} {v:g}" for name, v in (("MixUp", self.mixup), ("CutMix", self.cutmix),
                  ("label smoothing", self.label_smoothing), ("random erasing", self.random_erasing)) if v > 0]
        return ", ".join(parts) or "none"

    # -- per image ----------------------------------------------------------------------------

    def train_transform(self, preprocess, low_res: bool, source_size: int = 32, flip: bool = True,
                        shift: bool = True) -> Callable:
        """PIL image -> normalised tensor [3, S, S]: the dataset's own geometry (tinyvit/data.py), the
        policy at the model's resolution (an 8-pixel digit is too coarse to rotate), then erasing."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import v2

        from tinyvit.data import low_res_geometry, to_normalised_tensor

        s, interp = preprocess.image_size, InterpolationMode(preprocess.interpolation)
        if low_res:  # shift by an eighth of the source (CIFAR: 4 px) and mirror if the data allows, upsample
            geometry = low_res_geometry(preprocess, source_size, flip=flip, shift=shift)
        else:  # photos: the random resized crop of tinyvit.preprocess
            geometry = [v2.RandomResizedCrop(s, scale=(0.5, 1.0), interpolation=interp, antialias=True),
                        *([v2.RandomHorizontalFlip()] if flip else [])]
        erasing = [v2.RandomErasing(p=self.random_erasing, value=0)] if self.random_erasing > 0 else []
        return v2.Compose([
            *geometry, *self.policy(interp),  # on the PIL image: PIL resamples bicubic too, tensors only bilinear
            *to_normalised_tensor(preprocess),
            *erasing,  # after normalising, so value=0 is the dataset's mean colour
        ])

    def policy(self, interpolation) -> list:
        """RandAugment or TrivialAugmentWide as torchvision v2 builds them, or nothing."""
        from torchvision.transforms import v2

        if self.randaugment:
            return [v2.RandAugment(num_ops=2, magnitude=9, interpolation=interpolation)]
        if self.trivialaugment:
            return [v2.TrivialAugmentWide(interpolation=interpolation)]
        return []

    # -- per batch ----------------------------------------------------------------------------

    def batch_transform(self, num_classes: int) -> Optional[Callable]:
        """(images [b, 3, S, S], labels [b]) -> (mixed images, soft targets [b, classes]); None when off.
        With both MixUp and CutMix, each batch gets one of them (timm's switch probability 0.5)."""
        if not self.mixes:
            return None
        from torchvision.transforms import v2

        mixers = [m for alpha, m in ((self.mixup, v2.MixUp), (self.cutmix, v2.CutMix)) if alpha > 0
                  for m in [m(alpha=alpha, num_classes=num_classes)]]
        return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against integer labels [b] or soft targets [b, classes], smoothed if asked."""
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
