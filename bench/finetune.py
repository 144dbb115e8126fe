"""Last-block fine-tuning, one epoch: a cache of the frozen prefix's outputs against the plain loop.

    python -m bench.finetune                          # ViT-B/16, 50,000 synthetic images at 224 px, bf16
    python -m bench.finetune --images 10000 --cache-devices cuda

With only blocks[-1], the final norm and the head trained (issue 5), the frozen prefix (patch and
position embedding, blocks[:-1]) maps each image to the same tokens every epoch. The plain loop runs
it every step; a cached loop runs it once, in the first epoch, storing its output, and from the second
epoch on trains from the stored tokens. The kernels issue's target: from the second epoch, ≥ 5× faster.

Providers (one row each, op "finetune-epoch"; ms is one epoch, images/s = images / epoch time):
  uncached       every step: shuffled images -> prefix under no_grad -> trained top, AdamW step
  cache-build    the cached loop's first epoch: the uncached step plus storing the tokens
  cached-<dev>   a later epoch: shuffled cached tokens gathered from <dev> ("cuda": the cache lives
                 in GPU memory; "cpu": in host memory, each gathered batch copied over) -> trained top
The cache holds images × N × D tokens in the autocast dtype: 50,000 × 197 × 768 × 2 B = 15 GB for ViT-B.
Each loop is warmed up for a few steps (first_call_ms), then two epochs are timed (spread). The images
are synthetic and already on the GPU, so no data loading is timed: that favours the uncached loop,
which also has to load images every epoch in real use.

This times the two loops directly with the model API, without the data plumbing of the CLI's cache
(tinyvit/cache.py), which reports its own measured speed-up in every fine-tuning log.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from bench.common import (
    Runner, Settings, Timing, comma_list, common_settings, failure_reason, format_table, make_parser, rel_error,
    row, run_alone, wrong_result,
)
from bench.vit import Split, add_model_arguments, autocast, check_positive, split_tinyvit, vit_presets

MODEL, IMAGES, BATCH, IMAGE_SIZE = "vit_base_patch16_224", 50_000, 256, 224
DISTINCT_IMAGES = 1024  # synthetic image j is pool[j % 1024]: distinct enough, 0.6 GB at 224 px
WARMUP_STEPS = 5
NUM_CLASSES = 10  # CIFAR-10, the study's dataset
# Smoke: ViT-Ti cut to 2 blocks at 32 px, 10 images in batches of 4 (a partial last batch).
SMOKE = dict(model="vit_tiny_patch16_224", images=10, batch=4, image_size=32, depth=2)


def label(model: str, images: int, batch: int, image_size: int, depth: Optional[int]) -> str:
    return f"{model}{'' if depth is None else f' depth{depth}'} {images} images B{batch} {image_size}px"


@dataclass
class Study:
    """Everything one epoch needs: the split model, its optimizer and the synthetic data set."""

    split: Split
    optimizer: torch.optim.Optimizer
    pool: torch.Tensor  # [DISTINCT_IMAGES, 3, s, s] on the device
    labels: torch.Tensor  # [images] on the device
    batch: int
    device: str
    dtype: str

    @property
    def images(self) -> int:
        return self.labels.shape[0]

    def batches(self, steps: Optional[int] = None):
        """Index batches of a shuffled epoch (the first `steps` of them), as a data loader yields them."""
        order = torch.randperm(self.images, device=self.device)
        for i, start in enumerate(range(0, self.images, self.batch)):
            if steps is not None and i == steps:
                return
            yield order[start:start + self.batch]

    def prefix(self, idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.device, self.dtype):
            return self.split.prefix(self.pool[idx % self.pool.shape[0]])

    def train(self, tokens: torch.Tensor, idx: torch.Tensor) -> None:
        with autocast(self.device, self.dtype):
            loss = F.cross_entropy(self.split.top(tokens), self.labels[idx])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def build_study(model_name: str, images: int, batch: int, image_size: int, depth: Optional[int], device: str,
                dtype: str) -> Study:
    import tinyvit

    extra = {} if depth is None else {"depth": depth}
    model = tinyvit.create_model(model_name, num_classes=NUM_CLASSES, image_size=image_size, **extra).to(device)
    split = split_tinyvit(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in split.trainable:
        p.requires_grad_(True)
    model.train()
    gen = torch.Generator(device).manual_seed(0)
    pool = torch.randn(min(DISTINCT_IMAGES, images), 3, image_size, image_size, device=device, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (images,), device=device, generator=gen)
    optimizer = torch.optim.AdamW(split.trainable, lr=1e-4)
    return Study(split, optimizer, pool, labels, batch, device, dtype)


# ---------------------------------------------------------------------------------------------
# The three loops.
# ---------------------------------------------------------------------------------------------


def uncached_epoch(study: Study, steps: Optional[int] = None) -> None:
    for idx in study.batches(steps):
        study.train(study.prefix(idx), idx)


def cache_build_epoch(study: Study, cache: torch.Tensor) -> None:
    """The cached loop's first epoch: train as the uncached loop does, and keep the prefix's tokens."""
    for idx in study.batches():
        tokens = study.prefix(idx)
        cache[idx.to(cache.device)] = tokens.to(cache.device)
        study.train(tokens, idx)


def cached_epoch(study: Study, cache: torch.Tensor, steps: Optional[int] = None) -> None:
    for idx in study.batches(steps):
        # a gather on the cache's device, then (for a host cache) a copy of the batch to the GPU
        tokens = cache[idx.to(cache.device)].to(study.device)
        study.train(tokens, idx)


def empty_cache(study: Study, device: str) -> torch.Tensor:
    """[images, N, D] in the dtype the prefix produces under autocast."""
    sample = study.prefix(torch.arange(1, device=study.device))
    return torch.empty((study.images, *sample.shape[1:]), dtype=sample.dtype, device=device)


# ---------------------------------------------------------------------------------------------
# Timing whole epochs: wall clock around each, synchronised; twice, for the spread.
# ---------------------------------------------------------------------------------------------


def wall_ms(runner: Runner, fn) -> float:
    runner.timer.sync()
    t0 = time.perf_counter()
    fn()
    runner.timer.sync()
    return (time.perf_counter() - t0) * 1e3


def time_epochs(runner: Runner, key: dict, images: int, warmup, epoch, check=None) -> dict:
    """warmup(): a few steps, timed as first_call_ms; check(): a relative error against the reference, as in
    Runner.measure; then epoch() twice. A failure (out of memory for a cache, say) becomes a row saying why."""
    try:
        first = wall_ms(runner, warmup)
        err = check() if check is not None else None
        if wrong_result(err, key["dtype"]):
            return runner.add(key, rel_err=err, skipped=wrong_result(err, key["dtype"]))
        runs = (wall_ms(runner, epoch), wall_ms(runner, epoch))
    except Exception as exc:  # noqa: BLE001
        return runner.add(key, skipped=failure_reason(exc, []))
    return runner.add(key, timing=Timing(first, sum(runs) / 2, runs, reps=1), images=images, rel_err=err)


def bench_epochs(runner: Runner, study: Study, shape: str, cache_devices: tuple) -> None:
    key = lambda provider: row("finetune-epoch", shape, study.dtype, "train", provider)  # noqa: E731
    time_epochs(runner, key("uncached"), study.images,
                warmup=lambda: uncached_epoch(study, WARMUP_STEPS), epoch=lambda: uncached_epoch(study))
    if not cache_devices:
        return
    try:
        cache = empty_cache(study, cache_devices[0])
        build_ms = wall_ms(runner, lambda: cache_build_epoch(study, cache))
    except Exception as exc:  # noqa: BLE001
        runner.add(key("cache-build"), skipped=failure_reason(exc, []))
        return
    # timed once: a second build epoch would be a plain uncached epoch plus copies
    runner.add(key("cache-build"), timing=Timing(build_ms, build_ms, (build_ms,), reps=1), images=study.images)

    # The cache must hold exactly what the prefix computes for those images.
    probe = torch.arange(min(study.batch, study.images), device=study.device)
    for device in cache_devices:
        if cache.device.type != device:
            cache = cache.to(device)
        time_epochs(runner, key(f"cached-{device}"), study.images,
                    warmup=lambda: cached_epoch(study, cache, WARMUP_STEPS), epoch=lambda: cached_epoch(study, cache),
                    check=lambda: rel_error([cache[probe.to(cache.device)]], [study.prefix(probe)]))
    del cache


# ---------------------------------------------------------------------------------------------
# The script.
# ---------------------------------------------------------------------------------------------


@dataclass
class Config(Settings):
    model: Optional[str] = None  # default MODEL (SMOKE's in smoke mode), and so on
    images: Optional[int] = None
    batch: Optional[int] = None
    image_size: Optional[int] = None
    depth: Optional[int] = None
    cache_devices: Optional[tuple] = None  # default ("cuda", "cpu") with CUDA, ("cpu",) without


def run(cfg: Config, runner: Runner) -> list:
    base = SMOKE if cfg.smoke else dict(model=MODEL, images=IMAGES, batch=BATCH, image_size=IMAGE_SIZE, depth=None)
    p = {k: getattr(cfg, k) or base[k] for k in base}
    devices = cfg.cache_devices or (("cuda", "cpu") if runner.device == "cuda" else ("cpu",))
    dtype = cfg.dtypes[0]  # one dtype, the first asked for: bf16 autocast by default, fp32 in smoke mode
    study = build_study(p["model"], p["images"], p["batch"], p["image_size"], p["depth"], runner.device, dtype)
    start = len(runner.rows)
    bench_epochs(runner, study, label(**p), devices)
    rows = runner.rows[start:]
    steps = math.ceil(p["images"] / p["batch"])
    print(format_table(rows, f"fine-tuning epochs ({steps} steps) on {runner.env['device']}, {dtype}"))
    return rows


def parse_args(argv=None) -> Config:
    parser = make_parser("python -m bench.finetune", __doc__)
    parser.add_argument("--model", default=None, choices=vit_presets(), metavar="PRESET",
                        help=f"a ViT preset (default {MODEL})")
    parser.add_argument("--images", type=int, default=None, help=f"images per epoch (default {IMAGES})")
    add_model_arguments(parser, BATCH)
    parser.add_argument("--cache-devices", default=None, help="comma list from cuda,cpu (default: both with CUDA)")
    args = parser.parse_args(argv)
    check_positive(parser, images=args.images, batch=args.batch, image_size=args.image_size, depth=args.depth)
    devices = comma_list(parser, "--cache-devices", args.cache_devices,
                         allowed=("cuda", "cpu") if torch.cuda.is_available() else ("cpu",))
    return Config(**common_settings(args, parser), model=args.model, images=args.images, batch=args.batch,
                  image_size=args.image_size, depth=args.depth, cache_devices=devices)


def main(argv=None) -> None:
    run_alone(parse_args(argv), run)


if __name__ == "__main__":
    main()
