"""Datasets for the fine-tuning study, and the transforms that feed them to a checkpoint.

Every dataset here yields (PIL image, label), so one set of transforms serves all of them:

    cifar10, cifar100   torchvision's CIFAR classes, downloaded into --data-dir when missing
    imagefolder         DIR/train/<class>/*.jpg and DIR/val/<class>/... (or DIR/test/...)
    synthetic           generated 32x32 images with learnable structure, for offline runs
    digits              scikit-learn's bundled 8x8 handwritten digits (1,797 real scans, offline)
    mnist, fashion-mnist torchvision's classes, 28x28 grayscale, downloaded into --data-dir when missing
    fractals[:K=V,...]   FractalDB drawn offline (tinyvit/fractals.py), cached in --data-dir/fractals/:
                         fractals:categories=100,instances=100,size=32,seed=0 (the defaults; fractal_db)
    hf:NAME_OR_PATH     a Hugging Face `datasets` dataset: a hub name or a save_to_disk folder

The transforms come from the checkpoint (`model.preprocess`: mean/std, resolution, interpolation),
because mixing them up is the most common cause of poor transfer (facebookresearch/deit#154: 81% on
CIFAR-10 without the resize to 224; staghado/vit.cpp#18: ImageNet statistics on a [-1, 1] model):
- 32-pixel sources (CIFAR, synthetic) are *upsampled* straight to the model's square, as the
  ViT and DeiT papers do for CIFAR; zero-padding or a 32-pixel input costs 10-40 points.
  Their augmentation is the CIFAR classic, a 4-pixel reflect-padded random crop and a flip,
  applied at 32 pixels before the upsampling.
- photos (imagefolder) get the checkpoint's own eval recipe (short-side resize + centre crop)
  and, for training, a random resized crop and a flip at the model's resolution.

Each dataset has one record of `Traits` (DATASETS): low-res or photos, the source's side, whether
flips and shifts are valid augmentations.

Augmentation is reproducible whatever the number of workers or processes: a sampler may hand the
dataset an (index, step) pair, and the random transform of that sample then runs under a seed
drawn from (seed, step, index) alone. That is the per-image path, for photo folders; low-res
datasets small enough (`as_tensor`) train from one uint8 tensor instead, augmented a batch at a
time on the training device (tinyvit/augment.py).
"""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tinyvit.errors import TinyvitError
from tinyvit.preprocess import Preprocess


@dataclass(frozen=True)
class Traits:
    """What training needs to know about a dataset's images, one record per dataset."""

    low_res: bool = True  # small images, upsampled straight to the model's square (no photo crop)
    size: int = 32  # a low-res source's image side: its random shift is an eighth of it (CIFAR: 4 px)
    flip: bool = True  # a mirrored image shows the same class
    shift: bool = True  # a shifted image shows the same class


DATASETS = {  # and hf:NAME (CIFAR-sized images: Traits(size=their side); photos: Traits(low_res=False))
    "cifar10": Traits(),
    "cifar100": Traits(),
    "imagefolder": Traits(low_res=False),
    "synthetic": Traits(),
    # The UCI digits are centred and size-normalised scans of 8 blocks a side: a one-block shift moves
    # a stroke by 12% of the image, a distortion the validation images never show. And a mirrored 3
    # is not a digit. Neither shifts nor flips for them; MNIST is shifted but not mirrored either.
    "digits": Traits(size=8, flip=False, shift=False),
    "mnist": Traits(size=28, flip=False),
    # FractalDB holds its 4 flips as instances already (the official ViT recipe sets hflip 0); its
    # ResNet recipe crops at random (a shift). fractals:size=N sets the side.
    "fractals": Traits(flip=False),
    "fashion-mnist": Traits(size=28),
}
HF_PREFIX = "hf:"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DatasetError(TinyvitError):
    """A dataset that cannot be used as asked: missing folders, empty classes, unreadable images."""


class CorruptImageError(DatasetError):
    """An image file that PIL cannot decode; the message names the file."""


def load_image(path) -> Image.Image:
    """Decode an image file to RGB now (not lazily), so a broken file fails here, by name."""
    try:
        with Image.open(path) as im:
            return to_rgb(im)
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError (truncated), SyntaxError, ...
        raise CorruptImageError(f"{path}: cannot read this image ({type(e).__name__}: {e})") from e


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of any PIL image, high-bit-depth greyscale scaled rather than clipped.

    PIL's convert("RGB") clips 16-bit greyscale (mode I;16, the way 16-bit PNG and TIFF files open)
    to 0..255, so everything above 255 of 65535 turns white. Here 16-bit values map 0..65535 to
    0..255 (v / 257, rounded: 65535 -> 255, 257 -> 1), as libpng and ImageMagick reduce 16 bits to 8.
    Mode I (32-bit integers; older Pillow opened 16-bit PNGs so) is read as the same 16-bit range,
    mode F (32-bit floats) as intensities in [0, 1], the floating-point convention; values outside
    the range are clipped.
    """
    if im.mode.startswith("I;16") or im.mode == "I":
        pixels = np.asarray(im, dtype=np.float64) / 257.0
    elif im.mode == "F":
        pixels = np.asarray(im, dtype=np.float64) * 255.0
    else:
        return im.convert("RGB")
    grey = np.clip(np.rint(np.nan_to_num(pixels)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


# ---------------------------------------------------------------------------------------------
# ImageFolder: one folder per class, the same class list for both splits.
# ---------------------------------------------------------------------------------------------


class ImageFolder(Dataset):
    """Images under root/<class>/ with labels from a given class list.

    Unlike torchvision's ImageFolder, the validation split takes its class indices from the
    training split: a class folder missing from val/ must not shift every later label.
    """

    def __init__(self, root: Path, classes: list[str]):
        self.root = Path(root)
        self.classes = classes
        index = {c: i for i, c in enumerate(classes)}
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        unknown = [p.name for p in folders if p.name not in index]
        if unknown:
            raise DatasetError(
                f"{self.root}: class folders {unknown} do not exist in the training split "
                f"(classes: {', '.join(classes)})"
            )
        self.samples: list[tuple[Path, int]] = []
        empty = []
        for folder in folders:
            files = sorted(
                p for p in folder.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
            )
            if not files:
                empty.append(str(folder))
            self.samples += [(p, index[folder.name]) for p in files]
        if empty:
            raise DatasetError(
                f"empty class folders (no {'/'.join(IMAGE_EXTENSIONS)} files): {', '.join(empty)}"
            )

    @staticmethod
    def find_classes(root: Path) -> list[str]:
        classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DatasetError(f"{root}: no class folders; expected {root}/<class name>/<images>")
        return classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return load_image(path), label


def image_folder(root: Path) -> tuple[ImageFolder, ImageFolder, list[str]]:
    """DIR/train plus DIR/val (or DIR/test), with the training split's class list."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--data-dir {root}: no such directory (expected {root}/train/<class>/<images>)")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetError(f"{root}: no train/ folder (expected {root}/train/<class>/<images> and val/ or test/)")
    val_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if val_dir is None:
        raise DatasetError(f"{root}: no val/ or test/ folder beside train/ to validate on")
    classes = ImageFolder.find_classes(train_dir)
    return ImageFolder(train_dir, classes), ImageFolder(val_dir, classes), classes


# ---------------------------------------------------------------------------------------------
# CIFAR through torchvision.
# ---------------------------------------------------------------------------------------------


def cifar(name: str, root: Path):
    """torchvision's CIFAR-10/100 in `root`, downloaded (md5-checked by torchvision) when missing."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = Path(root)
    _check_cifar_files(cls, root)
    try:
        train = cls(str(root), train=True, download=True)
        val = cls(str(root), train=False, download=True)
    except Exception as e:  # no network (URLError), a corrupt archive (RuntimeError), bad pickles ...
        raise DatasetError(
            f"{name} is not usable in {root} ({type(e).__name__}: {e}). Offline, put torchvision's "
            f"{cls.filename} (or its extracted {cls.base_folder}/ folder) into {root}"
        ) from e
    return train, val, list(train.classes)


def _check_cifar_files(cls, root: Path) -> None:
    """Refuse CIFAR files that are there but fail their MD5 checksum, naming them.

    torchvision would treat them as missing: try to download (offline, the error then asks for
    the very file that is there) and, online, overwrite the user's file. A good extracted folder
    is enough on its own; without one, the archive must be good (torchvision extracts it)."""
    from torchvision.datasets import cifar as tv_cifar

    check_integrity = tv_cifar.check_integrity  # the check torchvision's CIFAR classes run
    folder, archive = root / cls.base_folder, root / cls.filename
    members = [(folder / f, md5) for f, md5 in cls.train_list + cls.test_list + [(cls.meta["filename"], cls.meta["md5"])]]
    if all(check_integrity(str(f), md5) for f, md5 in members):
        return
    if archive.is_file():
        if not check_integrity(str(archive), cls.tgz_md5):
            raise DatasetError(
                f"{archive} is there but fails its MD5 checksum (expected {cls.tgz_md5}): a truncated or corrupt "
                f"download. Replace it with a good copy, or delete it to download it again"
            )
        return
    corrupt = [str(f) for f, md5 in members if f.is_file() and not check_integrity(str(f), md5)]
    if corrupt:
        raise DatasetError(
            f"{', '.join(corrupt)}: there but failing the MD5 checksum torchvision lists for {cls.base_folder}/. "
            f"Replace the folder with a good copy, or put a good {cls.filename} into {root}"
        )


# ---------------------------------------------------------------------------------------------
# Synthetic: stripes of five colours in two orientations, noisy, generated from the index.
# ---------------------------------------------------------------------------------------------

SYNTHETIC_CLASSES = [
    f"{colour} {orientation}"
    for colour in ("red", "yellow", "green", "blue", "magenta")
    for orientation in ("horizontal", "vertical")
]
_HUES = np.array([
    [0.9, 0.2, 0.2], [0.9, 0.8, 0.2], [0.2, 0.8, 0.3], [0.2, 0.3, 0.9], [0.8, 0.2, 0.8],
])


class Synthetic(Dataset):
    """A 10-class 32x32 dataset a network must actually learn, generated offline and on the fly.

    Class c is colour c // 2 and stripe orientation c % 2 (horizontal, vertical): a model needs
    both the colour and the spatial pattern. Each image draws its own stripe frequency, phase,
    contrast, a colour jitter and pixel noise from a generator seeded by (seed, split, index), so
    the dataset is the same on every machine and in every worker. Orientations survive the
    horizontal flip of the training augmentation (a flip maps horizontal stripes to themselves).
    """

    size = 32
    classes = SYNTHETIC_CLASSES

    def __init__(self, length: int, seed: int = 0, split: int = 0):
        self.length, self.seed, self.split = length, seed, split

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, self.split, i])
        label = i % len(self.classes)  # balanced classes, interleaved
        colour, vertical = divmod(label, 2)
        coord = np.arange(self.size, dtype=np.float32)
        period = rng.uniform(4.0, 9.0)
        wave = np.sin(2 * math.pi * coord / period + rng.uniform(0, 2 * math.pi))  # [size]
        wave = wave[None, :] if vertical else wave[:, None]  # varies along x: vertical stripes
        wave = np.broadcast_to(wave, (self.size, self.size))
        tint = np.clip(_HUES[colour] + rng.normal(0, 0.1, 3), 0, 1)  # [3]
        contrast = rng.uniform(0.25, 0.5)
        img = 0.5 + contrast * wave[..., None] * tint + 0.25 * (tint - 0.5)  # [H, W, 3]
        img = img + rng.normal(0, 0.12, img.shape)
        return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)), label


# ---------------------------------------------------------------------------------------------
# Digits: scikit-learn's bundled handwritten digits, real images with no download.
# ---------------------------------------------------------------------------------------------

DIGITS_VAL = 450  # images held out for validation (25% of 1,797), stratified, random_state=0


class ArrayImages(Dataset):
    """Grayscale images held as a uint8 array [N, H, W] (0..255) with integer labels; yields
    (3-channel PIL image, label) like every other source here."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str], source: dict):
        self.images, self.labels, self.classes, self.source = images, labels, classes, source

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return Image.fromarray(self.images[i]).convert("RGB"), int(self.labels[i])

    def fingerprint(self) -> dict:
        """What identifies these images: where they come from and a hash of the pixels and labels."""
        import hashlib

        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        return {**self.source, "images": len(self.labels), "sha256": h.hexdigest()}


def digits() -> tuple[ArrayImages, ArrayImages, list[str]]:
    """sklearn.datasets.load_digits (UCI optical recognition of handwritten digits: 1,797 8x8 scans,
    values 0..16, classes 0-9), shipped inside scikit-learn, so it works offline.

    The split is fixed and stratified: train_test_split(X, y, test_size=450, random_state=0,
    stratify=y) gives 1,347 training and 450 validation images, the same on every machine.
    Pixels are scaled 0..16 -> 0..255 (round(v * 255 / 16)).
    """
    try:
        import sklearn
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise DatasetError("--dataset digits needs scikit-learn: pip install 'tinyvit[data]'") from None
    bunch = load_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)  # [1797, 8, 8]
    labels = bunch.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(
        images, labels, test_size=DIGITS_VAL, random_state=0, stratify=labels
    )
    classes = [str(c) for c in range(10)]
    source = {"dataset": "digits", "sklearn": sklearn.__version__,
              "split": f"train_test_split(test_size={DIGITS_VAL}, random_state=0, stratify=y)"}
    return (ArrayImages(x_train, y_train, classes, {**source, "part": "train"}),
            ArrayImages(x_val, y_val, classes, {**source, "part": "val"}), classes)


# ---------------------------------------------------------------------------------------------
# Fractals: FractalDB generated offline (tinyvit/fractals.py), cached once under --data-dir.
# ---------------------------------------------------------------------------------------------

FRACTALS = "fractals"
FRACTAL_DEFAULTS = {"categories": 100, "instances": 100, "size": 32, "seed": 0}
FRACTAL_FORMAT = "tinyvit.fractals/1"  # bump when tinyvit/fractals.py draws other images: old caches are then refused
FRACTAL_VAL = 5  # one rendering in 5 of each category (all 4 of its flips) is held out for validation


def fractal_spec(name: str) -> dict:
    """`fractals` or `fractals:categories=50,instances=40,size=16,seed=1` -> the settings (defaults:
    FRACTAL_DEFAULTS); a bad key or value raises DatasetError naming it."""
    head, sep, rest = name.partition(":")
    where = f"--dataset {name}"
    if head != FRACTALS or (sep and not rest):
        raise DatasetError(f"{where}: expected {FRACTALS} or {FRACTALS}:KEY=VALUE,... with keys {', '.join(FRACTAL_DEFAULTS)}")
    spec = dict(FRACTAL_DEFAULTS)
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if key not in spec or not eq or not re.fullmatch(r"\d+", value):
            raise DatasetError(f"{where}: {item!r}: expected KEY=INTEGER with KEY one of {', '.join(FRACTAL_DEFAULTS)}")
        spec[key] = int(value)
    if spec["categories"] < 2 or spec["instances"] < 8 or spec["instances"] % 4 or spec["size"] < 8:
        raise DatasetError(f"{where}: expected categories >= 2, instances a multiple of 4 (the 4 flips of each "
                           f"rendering) and >= 8 (some held out), size >= 8; got {spec}")
    if spec["categories"] * spec["instances"] * spec["size"] ** 2 * 3 > IN_MEMORY_LIMIT:
        raise DatasetError(f"{where}: {spec['categories'] * spec['instances']:,} images of {spec['size']} px do not fit "
                           f"the {IN_MEMORY_LIMIT >> 30} GiB held in memory; use fewer or smaller")
    return spec


def fractal_cache(spec: dict, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The images [n, size, size] uint8 and labels [n] of a FractalDB setting, from its cache file in
    data_dir/fractals/, generated and written there first (atomically) when it is not there.

    The file (.npz) comes with a record (.json) of its settings, FRACTAL_FORMAT and SHA-256; a file
    whose bytes, settings or format do not match its record, or that has no record, is refused in
    one line naming it (never overwritten: delete it to generate it again)."""
    import hashlib
    import json

    from tinyvit import fractals
    from tinyvit.atomic import write_atomic

    folder = Path(data_dir) / FRACTALS
    stem = f"{FRACTALS}-c{spec['categories']}-i{spec['instances']}-s{spec['size']}-seed{spec['seed']}"
    path, record_path = folder / f"{stem}.npz", folder / f"{stem}.json"
    wanted = {"format": FRACTAL_FORMAT, **spec}
    if not path.exists() and not record_path.exists():
        images, labels, _ = fractals.generate(spec["categories"], spec["instances"], spec["size"], spec["seed"])
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, images=images, labels=labels)
        write_atomic(path, lambda f: f.write(buf.getvalue()))
        record = {**wanted, "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
        write_atomic(record_path, lambda f: f.write((json.dumps(record, indent=1) + "\n").encode()))
        return images, labels
    again = f"delete {path} and {record_path.name} to generate it again"
    try:
        record = json.loads(record_path.read_text())
        blob = path.read_bytes()
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: a fractal cache without a readable record ({type(e).__name__}: {e}); {again}") from None
    if not isinstance(record, dict) or {k: record.get(k) for k in wanted} != wanted:
        raise DatasetError(f"{record_path}: records settings {record!r}, not the {wanted!r} asked for; {again}")
    if hashlib.sha256(blob).hexdigest() != record.get("sha256"):
        raise DatasetError(f"{path}: its SHA-256 is not the one its record holds (a truncated or changed file); {again}")
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return z["images"], z["labels"]


def fractal_db(name: str, data_dir: Optional[Path]) -> tuple[ArrayImages, ArrayImages, list[str], int]:
    """--dataset fractals[:KEY=VALUE,...]: FractalDB (tinyvit/fractals.py) with `categories` classes of
    `instances` images of `size` px drawn with `seed`. Each category's renderings (a weight row and its
    patch draw) are split, never their flips: a random fifth of them (seeded), with all 4 flips, is the
    validation split, so no mirror image of a training image is validated on. Returns (train, val,
    classes, size)."""
    spec = fractal_spec(name)
    if data_dir is None:
        raise DatasetError(f"--dataset {name} needs --data-dir (where its generated images are cached)")
    images, labels = fractal_cache(spec, data_dir)
    renders = spec["instances"] // 4
    val = np.zeros(len(labels), dtype=bool)
    for c in range(spec["categories"]):
        held = np.random.default_rng([spec["seed"], 4, c]).permutation(renders)[:max(1, renders // FRACTAL_VAL)]
        val[c * spec["instances"] + (held[:, None] * 4 + np.arange(4)).ravel()] = True
    classes = [f"fractal{c:0{len(str(spec['categories'] - 1))}d}" for c in range(spec["categories"])]
    source = {"dataset": FRACTALS, "format": FRACTAL_FORMAT, **spec}
    return (ArrayImages(images[~val], labels[~val], classes, {**source, "part": "train"}),
            ArrayImages(images[val], labels[val], classes, {**source, "part": "val"}), classes, spec["size"])


# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST through torchvision.
# ---------------------------------------------------------------------------------------------


class ToRGB(Dataset):
    """A grayscale source as 3-channel images (the models' stem takes 3 channels, as pretrained ones do)."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        return to_rgb(image), int(label)


def mnist(name: str, root: Path):
    """torchvision's MNIST / FashionMNIST in `root` (root/MNIST/raw/, root/FashionMNIST/raw/: the
    four IDX files, .gz or not), downloaded (md5-checked by torchvision) when missing."""
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    root = Path(root)
    try:
        train = cls(str(root), train=True, download=True)
        val = cls(str(root), train=False, download=True)
    except Exception as e:  # no network (URLError), a corrupt or truncated file ...
        files = ", ".join(Path(url).name for url, _ in cls.resources)
        raise DatasetError(
            f"{name} is not usable in {root} ({type(e).__name__}: {e}). Offline, put {files} "
            f"into {root / cls.__name__ / 'raw'}"
        ) from e
    for part, ds in (("training", train), ("test", val)):  # a label outside the classes, now, not mid-run
        targets = torch.as_tensor(ds.targets)
        bad = ((targets < 0) | (targets >= len(train.classes))).nonzero().flatten()
        if len(bad):
            raise DatasetError(f"{name} in {root / cls.__name__ / 'raw'}: the {part} labels file has label "
                               f"{int(targets[bad[0]])} (image {int(bad[0])}; {len(bad)} such), outside the "
                               f"{len(train.classes)} classes 0..{len(train.classes) - 1}")
    return ToRGB(train), ToRGB(val), list(train.classes)


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets: a hub name or a local folder (save_to_disk, or any layout load_dataset reads).
# ---------------------------------------------------------------------------------------------

HF_IMAGE_COLUMNS = ("img", "image")
HF_LABEL_COLUMNS = ("label", "labels", "fine_label")
HF_VAL_SPLITS = ("validation", "valid", "val", "test")
# Small hf: images (a side of 64 pixels or less) are augmented as CIFAR is, a shift by an eighth of
# the side and a horizontal flip, unless the run says otherwise (finetune --no-flip / --no-shift):
# a dataset of digits or text wants neither flips nor, often, shifts.
HF_SMALL = dict(flip=True, shift=True)


def array_to_image(a: np.ndarray, float_scale: float = 255.0) -> Image.Image:
    """An image stored as numbers (datasets' Array2D/Array3D, nested lists) -> an 8-bit RGB PIL image.

    Shapes [H, W], [H, W, C] or channels first [C, H, W] (C = 1, 3 or 4). Integers above 255 are
    16-bit intensities (scaled by 1/257, as to_rgb does for 16-bit files); floats are multiplied by
    `float_scale` (255 for intensities in [0, 1], 1 for values already in 0..255); then clipped.
    """
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.ascontiguousarray(np.moveaxis(a, 0, -1))  # [c, h, w] -> [h, w, c]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))) or a.size == 0:
        raise DatasetError(f"an array of shape {list(a.shape)} is not an image; expected [H, W], [H, W, C] or [C, H, W]")
    if a.dtype == np.uint8:
        pixels = a
    else:
        values = a.astype(np.float64)
        if np.issubdtype(a.dtype, np.floating):
            values = np.nan_to_num(values) * float_scale
        elif a.dtype == np.bool_:
            values = values * 255.0
        elif values.size and values.max() > 255:
            values = values / 257.0
        pixels = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB")


class HFImages(Dataset):
    """One split of a `datasets.Dataset`: (RGB PIL image, label) from its image and label columns.

    Every image goes through to_rgb (16-bit greyscale scaled, not clipped to white) or, stored as an
    array, array_to_image. `codes` maps the stored labels to the class indices (string labels, or a
    validation ClassLabel whose names come in another order); None: they are the indices.
    """

    def __init__(self, split, image_column: str, label_column: str, description: str,
                 codes: Optional[dict] = None, float_scale: float = 255.0):
        self.split, self.image_column, self.label_column = split, image_column, label_column
        self.description, self.codes, self.float_scale = description, codes, float_scale

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        row = self.split[int(i)]
        image, label = row[self.image_column], row[self.label_column]
        if isinstance(image, Image.Image):
            image = to_rgb(image)
        else:  # an array feature (Array2D/3D, nested lists)
            image = array_to_image(np.asarray(image), self.float_scale)
        return image, int(label if self.codes is None else self.codes[label])

    def fingerprint(self) -> dict:
        return {"dataset": self.description, "rows": len(self.split), "fingerprint": self.split._fingerprint}


def _pick(columns: list[str], wanted: tuple, what: str, where: str) -> str:
    found = next((c for c in wanted if c in columns), None)
    if found is None:
        raise DatasetError(f"{where}: no {what} column (looked for {', '.join(wanted)}; it has {', '.join(columns)})")
    return found


def _load_hf(hf, source: str, where: str):
    """A local folder: load_from_disk (save_to_disk's layout), else load_dataset(path) (parquet files in
    the hub's layout data/train-00000-of-00001.parquet, an imagefolder, csv, ...); else a hub name."""
    try:
        if not Path(source).exists():
            return hf.load_dataset(source)
        try:
            return hf.load_from_disk(source)
        except Exception as first:  # not a save_to_disk folder: perhaps one load_dataset reads
            empty = _empty_saved_splits(Path(source))
            if empty:  # datasets writes an empty split with no data file, and then cannot read it back
                raise DatasetError(f"{where}: the {empty[0]!r} split has no rows") from first
            try:
                return hf.load_dataset(source)
            except Exception as e:
                raise DatasetError(f"{where}: cannot load it: neither datasets.load_from_disk ({type(first).__name__}: "
                                   f"{str(first).strip()}) nor datasets.load_dataset ({type(e).__name__}: "
                                   f"{str(e).strip()}) reads this folder") from e
    except DatasetError:
        raise
    except Exception as e:  # offline, no such dataset ...
        raise DatasetError(f"{where}: cannot load it ({type(e).__name__}: {e})") from e


def _empty_saved_splits(folder: Path) -> list[str]:
    """The splits of a save_to_disk folder whose state.json lists no data files (0 rows)."""
    import json

    try:
        names = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        names = [n for n in names if isinstance(n, str) and re.fullmatch(r"[\w.-]+", n) and n not in (".", "..")]
        return [n for n in names if json.loads((folder / n / "state.json").read_text()).get("_data_files") == []]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def _image_check(hf, split, name: str, column: str, where: str) -> float:
    """Refuse an image column that holds no images; for a float array column, the scale to 0..255
    (255 when its first rows lie in [0, 1], else 1)."""
    feature = split.features[column]
    if isinstance(feature, hf.Value):
        hint = (f"; if they are file paths, cast the column first: ds.cast_column({column!r}, datasets.Image())"
                if feature.dtype in ("string", "large_string") else "")
        raise DatasetError(f"{where}: the {name!r} split's image column {column!r} holds {feature.dtype} values "
                           f"(Value({feature.dtype!r})), not images{hint}")
    if isinstance(feature, hf.Image):
        return 255.0
    first = [np.asarray(split[i][column]) for i in range(min(len(split), 8))]
    if first and all(np.issubdtype(a.dtype, np.floating) for a in first):
        return 255.0 if max(float(np.nan_to_num(a).max()) for a in first) <= 1.0 else 1.0
    return 255.0


def _labels(split, column: str) -> list:
    return list(split[column])


def _check_range(codes_of, split, name: str, column: str, n: int, where: str) -> None:
    """Every label of a split a class index 0..n-1, checked now rather than as a mid-run IndexError."""
    labels = np.asarray([codes_of(v) for v in _labels(split, column)], dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= n))
    if bad.size:
        row, value = int(bad[0]), int(labels[bad[0]])
        note = " (datasets marks unlabelled rows with -1: use a labelled split)" if value < 0 else ""
        raise DatasetError(f"{where}: the {name!r} split has label {value} in column {column!r} (row {row}; "
                           f"{bad.size} such rows), outside the {n} classes 0..{n - 1} of 'train'{note}")


def _hf_classes(hf, train, val, val_name: str, label_column: str, where: str):
    """(classes, train codes, val codes, notes) from the label column's feature (hugging_face's
    docstring has the rules); a codes dict maps a stored label to its class index, None: as stored."""
    notes = []
    feature, val_feature = train.features[label_column], val.features[label_column]
    train_codes = val_codes = None
    if isinstance(feature, hf.ClassLabel):
        classes = list(feature.names)
        if isinstance(val_feature, hf.ClassLabel) and list(val_feature.names) != classes:
            extra = [c for c in val_feature.names if c not in classes]
            if extra:
                raise DatasetError(f"{where}: the {val_name!r} split's classes {extra} do not exist in 'train' "
                                   f"(classes: {', '.join(classes)})")
            index = {c: i for i, c in enumerate(classes)}
            val_codes = {j: index[c] for j, c in enumerate(val_feature.names)}
            val_codes[-1] = -1  # unlabelled stays out of range, refused below
            notes.append(f"{where}: the {val_name!r} split lists the classes in another order; its labels "
                         f"are remapped by name to train's")
    elif isinstance(feature, hf.Value) and feature.dtype in ("string", "large_string"):
        classes = sorted(set(_labels(train, label_column)))
        train_codes = {c: i for i, c in enumerate(classes)}
        if isinstance(val_feature, hf.ClassLabel):
            val_labels = list(val_feature.names)
            val_codes = {j: train_codes.get(c, -2) for j, c in enumerate(val_labels)}
            val_codes[-1] = -1
        else:
            val_labels = sorted(set(_labels(val, label_column)))
            val_codes = dict(train_codes)
        unknown = [c for c in val_labels if c not in train_codes]
        if unknown:
            raise DatasetError(f"{where}: the {val_name!r} split has labels {unknown[:10]} in column "
                               f"{label_column!r} that 'train' lacks (classes: {', '.join(map(str, classes[:20]))})")
        shown = ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")
        notes.append(f"{where}: string labels in column {label_column!r}, class-encoded in sorted order: {shown}")
    elif isinstance(feature, hf.Value) and feature.dtype.startswith(("int", "uint")):
        top = max(_labels(train, label_column))
        classes = [str(c) for c in range(max(int(top), 0) + 1)]
    else:
        raise DatasetError(f"{where}: the label column {label_column!r} holds {feature!r}; expected a ClassLabel, "
                           f"integers or strings")
    return classes, train_codes, val_codes, notes


def hugging_face(source: str, cache_dir: Optional[Path] = None):
    """`hf:NAME_OR_PATH`: a local folder (load_from_disk, else load_dataset(path): parquet files in
    the hub's layout, an imagefolder ...) or a hub name (load_dataset, into the Hugging Face cache).
    Splits 'train' and the first of 'validation', 'valid', 'val', 'test'; image column 'img' or
    'image' (images, or arrays: Array2D/Array3D), label column 'label', 'labels' or 'fine_label'.

    Classes: the train label's ClassLabel names; for string labels (Value('string')) the sorted
    distinct names of 'train', each label encoded by its place (logged); for plain integers
    "0".."max". A validation ClassLabel with the same names in another order is remapped by name;
    names train lacks, string labels train lacks and labels outside 0..n-1 (-1 included) are refused
    here, with the split and the row. Returns (train, val, classes, notes for the log)."""
    try:
        import datasets as hf
    except ImportError:
        raise DatasetError(f"--dataset {HF_PREFIX}{source} needs Hugging Face datasets: pip install 'tinyvit[data]'") from None
    where = f"--dataset {HF_PREFIX}{source}"
    loaded = _load_hf(hf, source, where)
    if not isinstance(loaded, hf.DatasetDict):
        raise DatasetError(f"{where}: a single split without names; expected a DatasetDict with 'train' and "
                           f"'validation' or 'test' (save one with DatasetDict(train=..., test=...).save_to_disk)")
    names = list(loaded)
    if "train" not in loaded:
        raise DatasetError(f"{where}: no 'train' split (it has {', '.join(names)})")
    val_name = next((n for n in HF_VAL_SPLITS if n in loaded), None)
    if val_name is None:
        raise DatasetError(f"{where}: no validation split (looked for {', '.join(HF_VAL_SPLITS)}; it has {', '.join(names)})")
    train, val = loaded["train"], loaded[val_name]
    for name, split in (("train", train), (val_name, val)):
        if len(split) == 0:
            raise DatasetError(f"{where}: the {name!r} split has no rows")
    columns = list(train.column_names)
    image_column = _pick(columns, HF_IMAGE_COLUMNS, "image", where)
    label_column = _pick(columns, HF_LABEL_COLUMNS, "label", where)
    missing = [c for c in (image_column, label_column) if c not in val.column_names]
    if missing:
        raise DatasetError(f"{where}: the {val_name!r} split has no {', '.join(missing)} column")
    scales = [_image_check(hf, split, name, image_column, where) for name, split in (("train", train), (val_name, val))]

    classes, train_codes, val_codes, notes = _hf_classes(hf, train, val, val_name, label_column, where)
    for name, split, codes in (("train", train, train_codes), (val_name, val, val_codes)):
        _check_range((lambda v: v) if codes is None else (lambda v, c=codes: c.get(v, -2) if v is not None else -1),
                     split, name, label_column, len(classes), where)
    description = f"{HF_PREFIX}{source}"
    return (HFImages(train, image_column, label_column, description + ":train", train_codes, scales[0]),
            HFImages(val, image_column, label_column, f"{description}:{val_name}", val_codes, scales[1]),
            classes, notes)


# ---------------------------------------------------------------------------------------------
# One entry point, and subsets.
# ---------------------------------------------------------------------------------------------


@dataclass
class Splits:
    train: Dataset  # yields (PIL image, label)
    val: Dataset
    classes: list[str]
    traits: Traits
    notes: tuple = ()  # lines for the run's log: how the labels were read (hf: string labels ...)

    # The traits by name, as the transforms take them.
    low_res = property(lambda self: self.traits.low_res)
    source_size = property(lambda self: self.traits.size)
    flip = property(lambda self: self.traits.flip)
    shift = property(lambda self: self.traits.shift)


class Subset(Dataset):
    def __init__(self, base: Dataset, indices: list[int]):
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]


class Repeat(Dataset):
    """`times` passes over `base` as one dataset: item i is base[i % len(base)]."""

    def __init__(self, base: Dataset, times: int):
        self.base, self.times = base, times

    def __len__(self) -> int:
        return len(self.base) * self.times

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.base[i % len(self.base)]


def limit(dataset: Dataset, n: Optional[int], seed: int) -> Dataset:
    """A fixed random subset of n items (all classes represented, unlike the first n of a sorted folder)."""
    if n is None or n >= len(dataset):
        return dataset
    if n <= 0:
        raise DatasetError(f"a limit of {n} images leaves nothing to train or validate on")
    g = torch.Generator().manual_seed(seed)
    return Subset(dataset, sorted(torch.randperm(len(dataset), generator=g)[:n].tolist()))


def check_name(name: str) -> str:
    """A dataset name as the commands take it: one of DATASETS, fractals:KEY=VALUE,... or hf:NAME_OR_PATH;
    anything else raises DatasetError."""
    if name.partition(":")[0] == FRACTALS:
        fractal_spec(name)
    elif name not in DATASETS and not (name.startswith(HF_PREFIX) and len(name) > len(HF_PREFIX)):
        raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}, "
                           f"{FRACTALS}:KEY=VALUE,... or {HF_PREFIX}NAME_OR_PATH")
    return name


def dataset_arg(text: str) -> str:
    """check_name as an argparse type (--dataset of tinyvit.finetune and tinyvit.evaluate)."""
    import argparse

    try:
        return check_name(text)
    except DatasetError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def load_splits(
    name: str,
    data_dir: Optional[Path] = None,
    *,
    seed: int = 0,
    limit_train: Optional[int] = None,
    limit_val: Optional[int] = None,
    synthetic_sizes: tuple[int, int] = (5000, 1000),
) -> Splits:
    """The train and validation splits of dataset `name` (one of DATASETS)."""
    if name == "synthetic":
        # The validation images come from their own stream (split=1), never from the training one.
        train, val, classes = Synthetic(synthetic_sizes[0], seed, 0), Synthetic(synthetic_sizes[1], seed, 1), SYNTHETIC_CLASSES
    elif name in ("cifar10", "cifar100"):
        if data_dir is None:
            raise DatasetError(f"--dataset {name} needs --data-dir (where the dataset is, or is downloaded to)")
        train, val, classes = cifar(name, data_dir)
    elif name == "digits":
        train, val, classes = digits()
    elif name.partition(":")[0] == FRACTALS:
        train, val, classes, side = fractal_db(name, data_dir)
        return Splits(limit(train, limit_train, seed), limit(val, limit_val, seed + 1), classes,
                      replace(DATASETS[FRACTALS], size=side))
    elif name in ("mnist", "fashion-mnist"):
        if data_dir is None:
            raise DatasetError(f"--dataset {name} needs --data-dir (where the dataset is, or is downloaded to)")
        train, val, classes = mnist(name, data_dir)
    elif name.startswith(HF_PREFIX):
        train, val, classes, notes = hugging_face(name[len(HF_PREFIX):])
        side = min(train[0][0].size)
        # CIFAR-sized images: upsampled, shifted and flipped like CIFAR unless told (HF_SMALL); else photos
        traits = Traits(size=side, **HF_SMALL) if side <= 64 else Traits(low_res=False)
        return Splits(limit(train, limit_train, seed), limit(val, limit_val, seed + 1), classes, traits, tuple(notes))
    elif name == "imagefolder":
        if data_dir is None:
            raise DatasetError("--dataset imagefolder needs --data-dir DIR with DIR/train/<class>/ and DIR/val/<class>/")
        train, val, classes = image_folder(data_dir)
    else:
        check_name(name)
    # The subset draws depend on the split, so limit_train == limit_val does not pick the same positions.
    return Splits(limit(train, limit_train, seed), limit(val, limit_val, seed + 1), list(classes), DATASETS[name])


# ---------------------------------------------------------------------------------------------
# Transforms.
# ---------------------------------------------------------------------------------------------


def eval_preprocess(preprocess: Preprocess, low_res: bool) -> Preprocess:
    """The recipe a dataset's images get at evaluation: 32-pixel sources skip the crop (resize_size=None),
    which was tuned for photos (a 256 -> 224 crop would cut 12% of a CIFAR image's border)."""
    return replace(preprocess, resize_size=None) if low_res else preprocess


def shift_padding(source_size: int) -> int:
    """How far the CIFAR augmentation shifts a low-res image: an eighth of its side (CIFAR: 4 pixels)."""
    return max(1, source_size // 8)


def low_res_geometry(preprocess: Preprocess, source_size: int, *, flip: bool = True, shift: bool = True) -> list:
    """The CIFAR augmentation (He et al. 2016, sec. 4.2) at the source's size, a reflect-padded random
    crop and a flip, then the upsampling of evaluation: torchvision v2 transforms on PIL images. The
    batched version of the same steps, for images held as one tensor, is tinyvit/augment.py."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2

    s = preprocess.image_size
    pad = shift_padding(source_size)
    return [*([v2.RandomCrop(source_size, padding=pad, padding_mode="reflect")] if shift else []),
            *([v2.RandomHorizontalFlip()] if flip else []),
            v2.Resize((s, s), interpolation=InterpolationMode(preprocess.interpolation), antialias=True)]


def to_normalised_tensor(preprocess: Preprocess) -> list:
    from torchvision.transforms import v2

    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocess.mean, preprocess.std)]


def transforms(preprocess: Preprocess, low_res: bool, augment: bool, *, source_size: int = 32,
               flip: bool = True, shift: bool = True) -> tuple[Callable, Callable]:
    """(train transform, eval transform): PIL image -> normalised tensor [3, S, S]. A low-res source
    of side `source_size` is shifted by up to an eighth of it (CIFAR: 4 pixels) if `shift`, flipped if `flip`."""
    from torchvision.transforms import v2

    pre = eval_preprocess(preprocess, low_res)
    eval_tf = pre.eval_transform()
    if not augment:
        return eval_tf, eval_tf
    if not low_res:
        return pre.train_transform(augment=True), eval_tf
    return v2.Compose([*low_res_geometry(pre, source_size, flip=flip, shift=shift), *to_normalised_tensor(pre)]), eval_tf


class Transformed(Dataset):
    """(image, label) -> (tensor, label). A key is an index, or an (index, step) pair: then the random
    transform runs under a seed drawn from (seed, step, index), so sample i of training step t gets the
    same crop and flip in any worker, any process and after a resume."""

    def __init__(self, base: Dataset, transform: Callable, seed: int = 0):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, step = key if isinstance(key, tuple) else (key, None)
        image, label = self.base[index]
        if step is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):  # torchvision's random transforms draw from torch's CPU RNG
            torch.manual_seed(sample_seed(self.seed, step, index))
            return self.transform(image), label


# ---------------------------------------------------------------------------------------------
# Small datasets as one tensor.
# ---------------------------------------------------------------------------------------------

IN_MEMORY_LIMIT = 4 << 30  # bytes: low-res datasets up to this size train from one tensor (CIFAR-10: 154 MB)


def as_tensor(dataset: Dataset) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The images of a low-res dataset as one uint8 tensor [n, 3, h, w] and its labels [n] (int64),
    read once; None when the images differ in size or would take more than IN_MEMORY_LIMIT bytes."""
    n = len(dataset)
    first, _ = dataset[0]
    w, h = first.size
    if n * 3 * h * w > IN_MEMORY_LIMIT:
        return None
    images = np.empty((n, h, w, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        image, labels[i] = dataset[i]
        if image.size != (w, h):
            return None
        images[i] = np.asarray(image)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def sample_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers, e.g. (seed, step, index) for one sample of one step."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def error_message(e: BaseException) -> str:
    """The message of a dataset error, without the traceback DataLoader adds when it re-raises an
    error from a worker process ("Caught CorruptImageError in DataLoader worker process 0 ...")."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]  # "tinyvit.data.CorruptImageError: <the message>"
        text = re.sub(r"^[\w.]+: ", "", last)
    return text
