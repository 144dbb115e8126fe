"""Augmentation a batch at a time, for small datasets held as one uint8 tensor on the training device.

airbench keeps CIFAR-10 as one tensor and augments whole batches with per-sample randomness
(`batch_crop`, `batch_flip_lr`); no per-image PIL calls, no worker processes. This module does the
same for every step of tinyvit's low-res augmentation, in the order the per-image path runs them
(tinyvit/data.py `low_res_geometry`, tinyvit/recipe.py `train_transform`):

    uint8 [b, 3, s, s] (the source's side s)
      shift     a reflect-padded random crop: each image moves by (dy, dx) in [-s/8, s/8]
      flip      each image mirrored with probability 1/2
      resize    to the model's square (torchvision's resize of a uint8 batch: rounded to uint8, as PIL)
      policy    RandAugment, 2 ops at magnitude 9: torchvision v2's own op table, applied per sample
    float [b, 3, S, S], normalised with the checkpoint's mean/std
      erasing   a random rectangle set to 0 (the mean colour) with probability p, torchvision's draw

FixMatch's strong view (tinyvit/fixmatch.py) swaps the policy for FixMatchRandAugment (a magnitude
drawn per image and op, each op applied with probability 1/2) and adds Cutout, a grey square of half
the side, before normalising.

Every random number of a step comes from one generator seeded by (seed, step), drawn for the
whole global batch, so a resumed run and a run on N processes (each taking every N-th image of
the global batch, as the DistributedSampler hands them out) see the same augmentation. MixUp and
CutMix stay torchvision's batch transforms (tinyvit/recipe.py), seeded the same way (`seeded`).

What differs from the per-image path in numbers (README "Augmentation"): the random draws (one
generator per step instead of one per image), torch's resize instead of PIL's (within one grey
level after rounding), and RandAugment's rotations and shears sampled bilinearly on tensors
(torchvision's tensor ops offer nearest and bilinear; PIL also offers bicubic). TrivialAugmentWide
draws a magnitude per image; it stays on the per-image path.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
import torch

from tinyvit.data import sample_seed

RANDAUGMENT_OPS, RANDAUGMENT_MAGNITUDE, RANDAUGMENT_BINS = 2, 9, 31  # DeiT's rand-m9, torchvision's 31 bins


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator every random number of training step `step` is drawn from."""
    return torch.Generator().manual_seed(sample_seed(seed, step))


@contextlib.contextmanager
def seeded(seed: int):
    """torch's global CPU RNG seeded for the block and restored after it (torchvision's MixUp and
    CutMix draw from it), so dropout and everything else continue as if it had not run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------------
# The steps, each on a whole batch.
# ---------------------------------------------------------------------------------------------


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices reflected into [0, n) without repeating the edge (padding_mode='reflect'), for |shift| < n."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def shift(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """x [b, c, h, w] with image k moved by offsets[k] = (dy, dx): out[y, x] = in[y + dy, x + dx],
    reflected at the border. Equal to RandomCrop(h, padding=p, padding_mode='reflect') cropping at
    (p + dy, p + dx)."""
    b, c, h, w = x.shape
    rows = _reflect(torch.arange(h, device=x.device) + offsets[:, :1], h)  # [b, h]
    cols = _reflect(torch.arange(w, device=x.device) + offsets[:, 1:], w)  # [b, w]
    k = torch.arange(b, device=x.device)
    return x[k[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]


def flip(x: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """x [b, c, h, w] with the images where mirrored [b] is true flipped left-right."""
    return torch.where(mirrored[:, None, None, None], x.flip(-1), x)


def erase(x: torch.Tensor, boxes: torch.Tensor, value: float = 0) -> torch.Tensor:
    """x [b, c, h, w] with boxes[k] = (top, left, height, width) set to `value`; height 0 erases nothing."""
    h, w = x.shape[-2:]
    y = torch.arange(h, device=x.device)[None, :, None]  # [1, h, 1]
    z = torch.arange(w, device=x.device)[None, None, :]  # [1, 1, w]
    top, left, height, width = (v[:, None, None] for v in boxes.unbind(1))  # each [b, 1, 1]
    inside = (y >= top) & (y < top + height) & (z >= left) & (z < left + width)  # [b, h, w]
    return x.masked_fill(inside[:, None], value)


def erasing_boxes(n: int, h: int, w: int, p: float, g: torch.Generator,
                  scale=(0.02, 0.33), ratio=(0.3, 3.3), attempts: int = 10) -> torch.Tensor:
    """torchvision's RandomErasing.get_params for n images at once: with probability p, up to 10
    tries of an area (a `scale` share of the image) and a log-uniform aspect `ratio`; the first box
    that fits is used, none if no try fits. (top, left, height, width) [n, 4], int64."""
    area = h * w * torch.empty(n, attempts).uniform_(*scale, generator=g)
    aspect = torch.exp(torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g))
    bh, bw = (area * aspect).sqrt().round().long(), (area / aspect).sqrt().round().long()
    fits = (bh < h) & (bw < w)
    first = fits.long().argmax(1, keepdim=True)  # the first try that fits (0 if none does)
    bh, bw = bh.gather(1, first)[:, 0], bw.gather(1, first)[:, 0]
    top = (torch.rand(n, generator=g) * (h - bh + 1)).long()
    left = (torch.rand(n, generator=g) * (w - bw + 1)).long()
    erased = (torch.rand(n, generator=g) < p) & fits.any(1)
    return torch.stack([top, left, bh * erased, bw * erased], 1)


class RandAugment:
    """RandAugment (Cubuk et al. 2020) per sample on a uint8 batch: each image draws its own ops and
    signs, and the images that drew the same (op, sign) go through torchvision's op together (at
    most 2 x 14 x 2 calls a batch, whatever its size)."""

    def __init__(self, interpolation: str):
        from torchvision.transforms import v2

        # torchvision's RandAugment holds the op table (names, magnitudes, signs) and applies an op.
        mode = "nearest" if interpolation == "nearest" else "bilinear"  # what its tensor ops offer
        self.policy = v2.RandAugment(RANDAUGMENT_OPS, RANDAUGMENT_MAGNITUDE, RANDAUGMENT_BINS, interpolation=mode)
        self.ops = list(self.policy._AUGMENTATION_SPACE.items())

    def draw(self, n: int, g: torch.Generator) -> dict:
        return {"ops": torch.randint(len(self.ops), (n, RANDAUGMENT_OPS), generator=g),
                "negative": torch.rand(n, RANDAUGMENT_OPS, generator=g) <= 0.5}

    def __call__(self, x: torch.Tensor, ops: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = x.clone()
        for slot in range(ops.shape[1]):
            for k, (name, (magnitudes, signed)) in enumerate(self.ops):
                values = magnitudes(RANDAUGMENT_BINS, h, w)
                magnitude = 0.0 if values is None else float(values[RANDAUGMENT_MAGNITUDE])
                for sign in ((1, -1) if signed else (1,)):
                    chosen = ops[:, slot] == k
                    if signed:
                        chosen &= negative[:, slot] == (sign < 0)
                    index = chosen.nonzero()[:, 0].to(x.device)
                    if len(index):
                        x[index] = self.policy._apply_image_or_video_transform(
                            x[index], name, sign * magnitude, interpolation=self.policy.interpolation,
                            fill=self.policy._fill)
        return x


class FixMatchRandAugment(RandAugment):
    """FixMatch's strong policy (Sohn et al. 2020, sec. 2.3 and appendix; the PyTorch port
    kekmodel/FixMatch-pytorch `RandAugmentMC(n=2, m=10)`): 2 ops of the same 14, each applied with
    probability 1/2 at a magnitude drawn per image and op, uniformly from 1/10 to 9/10 of the op's
    range. The ops, their ranges and signs are torchvision's table (as RandAugment above), not the
    port's PIL ranges (e.g. its translation reaches 0.3 of the side, torchvision's 0.45)."""

    LEVELS = tuple(range(3, 30, 3))  # torchvision's bins 3, 6, ... 27 of 0..30: 0.1 ... 0.9 of each range

    def draw(self, n: int, g: torch.Generator) -> dict:
        return {**super().draw(n, g), "level": torch.randint(len(self.LEVELS), (n, RANDAUGMENT_OPS), generator=g),
                "skipped": torch.rand(n, RANDAUGMENT_OPS, generator=g) >= 0.5}

    def __call__(self, x: torch.Tensor, ops: torch.Tensor, negative: torch.Tensor, level: torch.Tensor = None,
                 skipped: torch.Tensor = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        x, L = x.clone(), len(self.LEVELS)
        for slot in range(ops.shape[1]):  # the images that drew the same (op, sign, level) go together
            key = ((ops[:, slot] * 2 + negative[:, slot]) * L + level[:, slot]).masked_fill(skipped[:, slot], -1)
            for value in key.unique().tolist():
                if value < 0:
                    continue
                (k, neg), m = divmod(value // L, 2), value % L
                name, (magnitudes, signed) = self.ops[k]
                values = magnitudes(RANDAUGMENT_BINS, h, w)
                magnitude = 0.0 if values is None else float(values[self.LEVELS[m]])
                index = (key == value).nonzero()[:, 0].to(x.device)
                x[index] = self.policy._apply_image_or_video_transform(
                    x[index], name, (-1 if signed and neg else 1) * magnitude, interpolation=self.policy.interpolation,
                    fill=self.policy._fill)
        return x


def cutout_boxes(n: int, size: int, side: int, g: torch.Generator) -> torch.Tensor:
    """FixMatch's Cutout (the port's `CutoutAbs`, the official code's ctaugment `cutout` at level 1): a
    square of `side` pixels centred uniformly in the image, clipped at its border; (top, left, h, w) [n, 4]."""
    centre = torch.rand(n, 2, generator=g) * size
    start = (centre - side / 2).clamp(min=0).long()
    end = (start + side).clamp(max=size)
    return torch.cat([start, end - start], 1)


# ---------------------------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------------------------


@dataclass
class BatchAugment:
    """uint8 images [b, 3, s, s] -> normalised float [b, 3, S, S]: `prepare` for evaluation, `__call__`
    for training with the parameters `draw` made."""

    image_size: int  # S, the model's square
    interpolation: str  # the checkpoint's
    mean: tuple
    std: tuple
    padding: int = 0  # the largest shift (data.shift_padding); 0: none
    flip: bool = False
    randaugment: bool = False
    random_erasing: float = 0.0
    strong: bool = False  # FixMatch's strong view: FixMatchRandAugment, then Cutout of half the side in grey

    def __post_init__(self):
        policy = FixMatchRandAugment if self.strong else RandAugment if self.randaugment else None
        self.policy = policy and policy(self.interpolation)

    def draw(self, n: int, g: torch.Generator) -> dict:
        """Every random number n images need, [n, ...] each (a DDP process takes every world-th row)."""
        params = {}
        if self.padding:
            params["offsets"] = torch.randint(-self.padding, self.padding + 1, (n, 2), generator=g)
        if self.flip:
            params["mirrored"] = torch.rand(n, generator=g) < 0.5
        if self.policy is not None:
            params.update(self.policy.draw(n, g))
        if self.random_erasing > 0:
            params["boxes"] = erasing_boxes(n, self.image_size, self.image_size, self.random_erasing, g)
        if self.strong:
            params["cutout"] = cutout_boxes(n, self.image_size, self.image_size // 2, g)
        return params

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        if x.shape[-1] == self.image_size and x.shape[-2] == self.image_size:
            return x
        return F.resize(x, [self.image_size, self.image_size], interpolation=InterpolationMode(self.interpolation),
                        antialias=True)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255 - mean) / std

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation: upsample and normalise."""
        return self.normalise(self.resize(x))

    def __call__(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        on = lambda v: v.to(x.device, non_blocking=True)  # noqa: E731
        if "offsets" in params:
            x = shift(x, on(params["offsets"]))
        if "mirrored" in params:
            x = flip(x, on(params["mirrored"]))
        x = self.resize(x)
        if self.policy is not None:
            x = self.policy(x, **{k: params[k] for k in ("ops", "negative", "level", "skipped") if k in params})
        if "cutout" in params:  # grey (127), as the port's PIL rectangle; the official code's 0.5 in [0, 1]
            x = erase(x, on(params["cutout"]), 127)
        x = self.normalise(x)
        if "boxes" in params:
            x = erase(x, on(params["boxes"]))
        return x


def pick(params: dict, rank: int, world: int) -> dict:
    """This process's rows of a global batch's parameters: every world-th, from `rank`."""
    return {k: v[rank::world] for k, v in params.items()}
