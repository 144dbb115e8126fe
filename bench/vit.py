"""End to end: ViT-Ti/S/B inference and last-block fine-tuning throughput, tinyvit with its kernels on
and off, against timm's same models (which use scaled_dot_product_attention), on the same device.

    python -m bench.vit                       # ViT-Ti/S/B at 224 px, bf16 autocast
    python -m bench.vit --models vit_base_patch16_224 --batch 128

Providers:
  tinyvit-kernels  tinyvit.create_model(name), model.set_kernels("auto"): the Triton kernels wherever they
                   take the inputs, as a user gets them
  tinyvit-torch    the same model, model.set_kernels("torch"): plain PyTorch attention and LayerNorm
  timm             timm.create_model(name, pretrained=False), timm's default fused (SDPA) attention
All three hold the same (random) weights: tinyvit loads timm's state dict, whose names it shares, and its
logits are checked against timm's before anything is timed.

Passes:
  infer          model(images) under torch.inference_mode(), eval mode
  finetune-step  one optimisation step of the single-trainable-block study (issue 5): the frozen prefix
                 (patch embedding, position embedding, blocks[:-1]) runs under no_grad; blocks[-1], the
                 final norm and the head are trained (forward, cross-entropy, backward, AdamW step)
Both run under bf16 autocast (fp32 weights), as a user would run them; images/s = batch / time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from bench.common import (
    DTYPES, Runner, Settings, comma_list, common_settings, format_table, make_parser, plot_bars, rel_error, row,
    run_alone,
)

MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224")
# The 2026-11-22 baselines used 512 for ViT-Ti and 256 for ViT-B; smaller models need larger batches to
# fill the GPU.
BATCH = {"vit_tiny_patch16_224": 512, "vit_small_patch16_224": 512, "vit_base_patch16_224": 256}
IMAGE_SIZE = 224
# Smoke: ViT-Ti cut to 2 blocks (still a frozen prefix and a trained last block) at 32 px (N = 5).
SMOKE_MODELS, SMOKE_BATCH, SMOKE_IMAGE_SIZE, SMOKE_DEPTH = ("vit_tiny_patch16_224",), 2, 32, 2
PASSES = ("infer", "finetune-step")
NUM_CLASSES = 1000


# ---------------------------------------------------------------------------------------------
# The two models, split for the last-block study.
# ---------------------------------------------------------------------------------------------


@dataclass
class Split:
    """A ViT cut before its last block: prefix(images) -> tokens (frozen), top(tokens) -> logits."""

    prefix: Callable
    top: Callable
    trainable: list  # the parameters of blocks[-1], norm and head


def split_tinyvit(model) -> Split:
    return Split(
        prefix=lambda x: model.blocks[:-1](model.embed(x)),
        top=lambda t: model.forward_head(model.norm(model.blocks[-1](t))),
        trainable=[*model.blocks[-1].parameters(), *model.norm.parameters(), *model.head.parameters()],
    )


def split_timm(model) -> Split:
    # timm's forward_features, cut before its last block (timm 1.0: patch_embed, _pos_embed,
    # patch_drop, norm_pre, blocks, norm; then forward_head).
    def prefix(x):
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        return model.blocks[:-1](x)

    return Split(
        prefix=prefix,
        top=lambda t: model.forward_head(model.norm(model.blocks[-1](t))),
        trainable=[*model.blocks[-1].parameters(), *model.norm.parameters(), *model.head.parameters()],
    )


def build_models(name: str, image_size: int, depth: Optional[int], device: str) -> dict:
    """{"tinyvit": ..., "timm": ...}, the same weights in both (tinyvit loads timm's state dict strictly).

    depth: None for the preset's number of blocks.
    """
    import timm

    import tinyvit

    extra = {} if depth is None else {"depth": depth}
    reference = timm.create_model(name, pretrained=False, img_size=image_size, num_classes=NUM_CLASSES, **extra)
    ours = tinyvit.create_model(name, num_classes=NUM_CLASSES, image_size=image_size, **extra)
    ours.load_state_dict(reference.state_dict())
    return {"tinyvit": ours.to(device), "timm": reference.to(device)}


# ---------------------------------------------------------------------------------------------
# The two passes, as functions of no arguments over rotating batches.
# ---------------------------------------------------------------------------------------------


def autocast(device: str, dtype: str):
    # fp32 means no autocast at all; bf16/fp16 autocast keeps fp32 weights, as training and serving do
    return torch.autocast(device, dtype=DTYPES[dtype], enabled=dtype != "fp32")


def infer_fn(model, batches: list, device: str, dtype: str) -> Callable:
    model.eval()
    step = 0

    def fn():
        nonlocal step
        images = batches[step % len(batches)]
        step += 1
        with torch.inference_mode(), autocast(device, dtype):
            return [model(images)]

    return fn


def finetune_fn(split: Split, model, batches: list, labels: list, device: str, dtype: str) -> Callable:
    """One step of last-block training; the frozen prefix runs under no_grad, so it saves no activations."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in split.trainable:
        p.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(split.trainable, lr=1e-4)
    step = 0

    def fn():
        nonlocal step
        i = step % len(batches)
        step += 1
        with autocast(device, dtype):
            with torch.no_grad():
                tokens = split.prefix(batches[i])
            loss = F.cross_entropy(split.top(tokens), labels[i])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return [loss.detach()]

    return fn


def bench_model(runner: Runner, name: str, batch: int, image_size: int, depth: Optional[int], dtype: str) -> None:
    models = build_models(name, image_size, depth, runner.device)
    gen = torch.Generator(runner.device).manual_seed(0)
    batches = [torch.randn(batch, 3, image_size, image_size, device=runner.device, generator=gen) for _ in range(2)]
    labels = [torch.randint(0, NUM_CLASSES, (batch,), device=runner.device, generator=gen) for _ in range(2)]
    shape = f"{name}{'' if depth is None else f' depth{depth}'} B{batch} {image_size}px"

    # The checks: every provider's logits on the first batch against timm's (same weights, same
    # autocast), and its first training step's loss against the loss of those logits.
    with torch.inference_mode(), autocast(runner.device, dtype):
        reference = [models["timm"].eval()(batches[0]).float()]
        loss0 = [F.cross_entropy(reference[0], labels[0])]

    variants = [("tinyvit-kernels", "tinyvit", "auto"), ("tinyvit-torch", "tinyvit", "torch"), ("timm", "timm", None)]
    for pass_ in PASSES:
        for provider, which, kernels in variants:
            model = models[which]
            if kernels is not None:
                model.set_kernels(kernels)
            key = row("vit", shape, dtype, pass_, provider, model=name, batch=batch)
            if pass_ == "infer":
                runner.measure(key, infer_fn(model, batches, runner.device, dtype), images=batch,
                               check=lambda out: rel_error(out, reference))
            else:
                # Training changes the weights: restore them after, so every provider starts alike.
                split = split_tinyvit(model) if which == "tinyvit" else split_timm(model)
                state = {k: v.clone() for k, v in model.state_dict().items()}
                runner.measure(key, finetune_fn(split, model, batches, labels, runner.device, dtype), images=batch,
                               check=lambda out: rel_error(out, loss0))
                model.load_state_dict(state)
    del models


# ---------------------------------------------------------------------------------------------
# The script.
# ---------------------------------------------------------------------------------------------


@dataclass
class Config(Settings):
    models: Optional[tuple] = None  # default MODELS (SMOKE_MODELS in smoke mode)
    batch: Optional[int] = None  # default BATCH per model (SMOKE_BATCH in smoke mode)
    image_size: Optional[int] = None  # default 224 (SMOKE_IMAGE_SIZE in smoke mode)
    depth: Optional[int] = None  # default the preset's (SMOKE_DEPTH in smoke mode)


def run(cfg: Config, runner: Runner) -> list:
    models = cfg.models or (SMOKE_MODELS if cfg.smoke else MODELS)
    image_size = cfg.image_size or (SMOKE_IMAGE_SIZE if cfg.smoke else IMAGE_SIZE)
    depth = cfg.depth or (SMOKE_DEPTH if cfg.smoke else None)
    # One dtype end to end, the first asked for: bf16 autocast by default, fp32 in smoke mode.
    dtype = cfg.dtypes[0]
    start = len(runner.rows)
    for name in models:
        batch = cfg.batch or (SMOKE_BATCH if cfg.smoke else BATCH.get(name, 256))
        bench_model(runner, name, batch, image_size, depth, dtype)
    rows = runner.rows[start:]
    print(format_table(rows, f"ViT end to end on {runner.env['device']}, {dtype}"))
    plot_bars(rows, group="model", y="images_per_s", panels=PASSES, path=runner.plot_path("vit"),
              title=runner.plot_title(f"ViT images/s, {dtype}, {image_size}px"), ylabel="images/s")
    return rows


def vit_presets() -> tuple:
    import tinyvit

    return tuple(name for name, preset in tinyvit.PRESETS.items() if preset["arch"] == "vit")


def add_model_arguments(parser, batch_default) -> None:
    """--batch, --image-size, --depth: shared with bench/finetune.py."""
    parser.add_argument("--batch", type=int, default=None, help=f"batch size (default {batch_default})")
    parser.add_argument("--image-size", type=int, default=None, help=f"pixels (default {IMAGE_SIZE})")
    parser.add_argument("--depth", type=int, default=None, help="blocks, overriding the preset's (≥ 2)")


def check_positive(parser, **values) -> None:
    """Each value None or ≥ 1 (depth ≥ 2: a frozen prefix and a last block); else exit naming the flag."""
    for name, value in values.items():
        least = 2 if name == "depth" else 1
        if value is not None and value < least:
            parser.error(f"--{name.replace('_', '-')} {value}: expected an integer ≥ {least}")


def parse_args(argv=None) -> Config:
    parser = make_parser("python -m bench.vit", __doc__)
    parser.add_argument("--models", default=None, help=f"comma list of ViT presets (default {','.join(MODELS)})")
    add_model_arguments(parser, BATCH)
    args = parser.parse_args(argv)
    models = comma_list(parser, "--models", args.models, allowed=vit_presets())
    check_positive(parser, batch=args.batch, image_size=args.image_size, depth=args.depth)
    return Config(**common_settings(args, parser), models=models, batch=args.batch, image_size=args.image_size,
                  depth=args.depth)


def main(argv=None) -> None:
    run_alone(parse_args(argv), run)


if __name__ == "__main__":
    main()
