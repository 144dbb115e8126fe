"""How a set of weights expects its images: resolution, resize and crop, interpolation, mean/std.

Every preset and every loaded checkpoint carries one of these (torchvision's habit: weights know
their transforms). They differ in ways that cost accuracy when mixed up: Google's ViT weights
expect pixels in [-1, 1] (mean = std = 0.5: google-research/vision_transformer `vit_jax/input_pipeline.py`,
`(im - 127.5) / 127.5`), DeiT and torchvision the ImageNet statistics (facebookresearch/deit `datasets.py`,
torchvision `transforms/_presets.py` `ImageClassification`).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace
from typing import Optional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # Google ViT / AugReg: (x - 0.5) / 0.5 maps [0, 1] to [-1, 1]
# PIL's numbers for the interpolations: Hugging Face image processors store `resample` as one of these.
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class Preprocess:
    image_size: int = 224  # the square the model sees
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    interpolation: str = "bilinear"  # "bilinear" or "bicubic"
    resize_size: Optional[int] = 256  # short side before the centre crop; None: resize straight to the square

    def __post_init__(self):
        # Errors name the field as it is spelled in config.json ("preprocess": {...}); a zero std
        # would divide every pixel by zero, a non-positive size would crop to nothing.
        for name in ("mean", "std"):
            try:
                values = tuple(float(v) for v in getattr(self, name))
            except (TypeError, ValueError):
                raise ValueError(f"{name}={getattr(self, name)!r}; expected a list of numbers, one per channel") from None
            if not values or not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name}={list(values)}; expected finite numbers, one per channel")
            object.__setattr__(self, name, values)
        if not all(s > 0 for s in self.std):
            raise ValueError(f"std={list(self.std)}; every channel's std must be positive (pixels are divided by it)")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values and std {len(self.std)}; expected one of each per channel")
        for name in ("image_size", "resize_size"):
            v = getattr(self, name)
            if v is None and name == "resize_size":
                continue
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}={v!r}; expected a positive number of pixels")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"interpolation={self.interpolation!r}; expected 'bilinear', 'bicubic' or 'nearest'")

    def with_image_size(self, image_size: int) -> "Preprocess":
        """The same recipe at another resolution (the crop ratio is kept)."""
        resize = None
        if self.resize_size is not None:
            resize = round(self.resize_size * image_size / self.image_size)
        return replace(self, image_size=image_size, resize_size=resize)

    def timm_crop(self) -> tuple[float, str]:
        """timm's (crop_pct, crop_mode) for this recipe: timm resizes to floor(size / crop_pct) and
        centre-crops ('squash' at 1.0: straight to the square, nothing cut)."""
        if self.resize_size is None:
            return 1.0, "squash"
        pct = self.image_size / self.resize_size
        for candidate in (pct, math.nextafter(pct, 0.0), round(pct, 6)):  # floor() must land on resize_size
            if math.floor(self.image_size / candidate) == self.resize_size:
                return candidate, "center"
        raise ValueError(f"no crop_pct gives resize_size={self.resize_size} for image_size={self.image_size} in timm")

    def timm_cfg(self, in_channels: int = 3) -> dict:
        """The preprocessing part of timm's pretrained_cfg (what timm.data.resolve_data_config reads)."""
        crop_pct, crop_mode = self.timm_crop()
        return dict(input_size=(in_channels, self.image_size, self.image_size), interpolation=self.interpolation,
                    crop_pct=crop_pct, crop_mode=crop_mode, mean=tuple(self.mean), std=tuple(self.std))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        known = {k: d[k] for k in ("image_size", "mean", "std", "interpolation", "resize_size") if k in d}
        return cls(**known)

    def _interp(self):
        from torchvision.transforms import InterpolationMode

        return InterpolationMode(self.interpolation)

    def eval_transform(self):
        """PIL image -> normalised tensor [3, image_size, image_size], as the weights were evaluated."""
        from torchvision import transforms as T

        if self.resize_size is None:
            resize = [T.Resize((self.image_size, self.image_size), interpolation=self._interp(), antialias=True)]
        else:
            resize = [
                T.Resize(self.resize_size, interpolation=self._interp(), antialias=True),
                T.CenterCrop(self.image_size),
            ]
        return T.Compose(resize + [T.ToTensor(), T.Normalize(self.mean, self.std)])

    def train_transform(self, augment: bool = True):
        """Training transform: a random resized crop and a horizontal flip, or eval's when augment=False."""
        from torchvision import transforms as T

        if not augment:
            return self.eval_transform()
        return T.Compose(
            [
                T.RandomResizedCrop(self.image_size, scale=(0.5, 1.0), interpolation=self._interp(), antialias=True),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )
