"""`python -m tinyvit.predict IMAGE... --model-dir DIR`: the top-5 classes of each image.

    python -m tinyvit.predict cat.png ship.jpg --model-dir runs/vit_base_patch16_224-cifar10-last

An IMAGE may be a directory: its image files are predicted, in name order. A file that cannot be
read is named in a warning and skipped; the others are still predicted (all unreadable: an error).
--model-dir is anything `tinyvit.load_pretrained` reads. Class names come from DIR/classes.json,
which tinyvit.finetune writes; without it the classes are shown by index (ImageNet's 1000 names
are not bundled and cannot be fetched offline). Each image gets the checkpoint's own eval
preprocessing (resize, crop, mean/std), so the probabilities are the ones evaluation would see.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from tinyvit.errors import MissingFileError, TinyvitError


@dataclass
class PredictConfig:
    images: list
    model_dir: str
    top_k: int = 5
    device: str = "auto"
    json: bool = False


def parse_args(argv=None) -> PredictConfig:
    p = argparse.ArgumentParser(prog="python -m tinyvit.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or directories of them")
    p.add_argument("--model-dir", required=True, help="a saved model (any format tinyvit.load_pretrained reads)")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to list per image (default: 5)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda ... (default: auto)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image instead of a table")
    return PredictConfig(**vars(p.parse_args(argv)))


def image_files(paths: list) -> list[Path]:
    """The files named, with each directory replaced by its image files (sorted, not recursive)."""
    from tinyvit.data import IMAGE_EXTENSIONS

    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
            if not found:
                raise MissingFileError(f"{path}: a directory without image files ({'/'.join(IMAGE_EXTENSIONS)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise MissingFileError(f"{path}: no such image file or directory")
    return files


@torch.no_grad()
def predict(model, images: list, classes: Optional[list], top_k: int, device: torch.device,
            on_error: Optional[Callable[[Exception], None]] = None) -> list[dict]:
    """[{"image": path, "top": [{"index", "class", "prob"}, ...]}, ...] for image files `images`.

    An unreadable image raises CorruptImageError, naming it; with `on_error`, that gets the error
    instead and the image is skipped."""
    from tinyvit.data import CorruptImageError, load_image

    transform = model.preprocess.eval_transform()
    k = min(top_k, model.cfg.num_classes)
    results = []
    for path in images:
        try:
            image = load_image(path)
        except CorruptImageError as e:
            if on_error is None:
                raise
            on_error(e)
            continue
        x = transform(image)[None].to(device)  # [1, 3, S, S]
        probs = model(x).float().softmax(dim=-1)[0]
        top = probs.topk(k)
        results.append({
            "image": str(path),
            "top": [{"index": int(i), "class": classes[i] if classes else None, "prob": float(p)}
                    for p, i in zip(top.values.tolist(), top.indices.tolist())],
        })
    return results


def main(argv=None) -> int:
    from tinyvit.convert import load_pretrained
    from tinyvit.data import DatasetError
    from tinyvit.device import resolve_device
    from tinyvit.rundir import read_classes

    cfg = parse_args(argv)
    try:
        if cfg.top_k < 1:
            raise TinyvitError(f"--top-k {cfg.top_k}: must be at least 1")
        images = image_files(cfg.images)
        model_dir = Path(cfg.model_dir)
        if not model_dir.exists():
            raise MissingFileError(f"--model-dir {model_dir}: no such file or directory")
        device = resolve_device(cfg.device)
        model = load_pretrained(model_dir).to(device).eval()
        if model.preprocess is None:
            raise TinyvitError(f"{model_dir}: the checkpoint carries no preprocessing (mean/std, resolution)")
        if model.cfg.num_classes == 0:
            raise TinyvitError(f"{model_dir}: the model has no classification head")
        classes = read_classes(model_dir) if model_dir.is_dir() else None
        if classes is not None and len(classes) != model.cfg.num_classes:
            raise TinyvitError(f"{model_dir}/classes.json lists {len(classes)} classes but the model has {model.cfg.num_classes} outputs")
        skipped = []
        results = predict(model, images, classes, cfg.top_k, device, on_error=skipped.append)
        if not results:
            raise skipped[0] if len(skipped) == 1 else DatasetError(
                f"none of the {len(skipped)} images could be read; the first: {skipped[0]}")
        for e in skipped:
            print(f"warning: {e}; skipped", file=sys.stderr, flush=True)
    except TinyvitError as e:  # the user's mistake; anything else is a bug and keeps its traceback
        raise SystemExit(f"tinyvit.predict: error: {e}") from None

    if classes is None:
        print(f"note: no classes.json in {cfg.model_dir}; showing class indices"
              + (" (ImageNet's class names are not bundled with tinyvit)" if model.cfg.num_classes == 1000 else ""),
              file=sys.stderr)
    for r in results:
        if cfg.json:
            print(json.dumps(r))
            continue
        print(r["image"])
        for t in r["top"]:
            name = f"{t['class']} ({t['index']})" if t["class"] is not None else f"class {t['index']}"
            print(f"  {100 * t['prob']:6.2f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
