"""CPU ratios, measured the robust way on a shared machine: tinyvit against timm and torchvision.

    python -m bench cpu                                    # every case (long: run it in pieces, below)
    python -m bench cpu --cases infer-vit-ti-224,infer-vit-ti-32 --pairs 21
    python -m bench cpu --smoke                            # tiny models, 3 rounds: what the tests run
    python -m bench cpu --table                            # the README table from bench/results/cpu/cpu.json

On a laptop or a shared 2-core machine, one timing says little: another process wakes up, a core's
clock drops, and a run is 20% slower for reasons that have nothing to do with the code. So each case
runs all its sides in one process, in rounds: a round calls every side once, in an order that rotates
from round to round (A B C, B C A, C A B, ...), so a slow spell hits every side about equally. The
first rounds are warm-up and not kept. Each kept round gives one ratio per side,

    speedup = t(baseline) / t(side)           (> 1: the side is faster than the baseline)

taken within the round, and the case reports the median of these per-round ratios with their
quartiles and range (>= 15 rounds by default). torch.set_num_threads is fixed (--threads, default
every core, at most 2 on the 2-core machine this was written on), and the load average before and
after is recorded beside the machine and the versions.

Cases (batch and image size in the case; every side holds the same weights, checked before timing):

  infer-<model>            model(images) under inference_mode, eval: tinyvit (its default `forward`,
                           with the reduced last block), tinyvit-full (forward_features + forward_head,
                           every token in the last block; ViT-Ti/S only) against timm / torchvision
  train-<model>            one full training step (forward, cross-entropy, backward, AdamW step)
  finetune-last-<model>    last-block fine-tuning from epoch 2 on (blocks[-1], norm, head train):
                           timm-frozen, a plain loop written with timm (frozen backbone by
                           requires_grad, the whole model every step, same batch, same trainable
                           parameters) against tinyvit-cache (tokens gathered from the frozen-prefix
                           cache, then the full last block) and tinyvit-cache-reduced (the same, with
                           the last block for the class token only, as `--unfreeze last` runs it)
  loop-<data>-<model>      one step of tinyvit's training loop with its data (tinyvit/trainer.py, the
                           data held as one tensor) against a minimal hand-written loop (the split
                           prepared once, random batches by index, same model, batch and AdamW, no
                           augmentation); also with --compile, with the demo's augmentation batched,
                           and through the per-image PIL path with and without it
  checkpoint-<model>       a full training step with set_grad_checkpointing against without: the
                           time ratio here; peak memory from a subprocess per configuration
                           (resource.getrusage ru_maxrss, the resident-set high-water mark: the
                           whole process, so the increase over the same process after set-up is
                           reported too; tracemalloc does not see torch's allocations)

Steps of the fine-tuning case stand for epochs: from epoch 2 an epoch is its steps, images per second
= batch / step time. Images are synthetic and already in memory, which favours the plain loop (in
real use it also decodes and resizes every image every epoch).

Results go to bench/results/cpu/cpu.json (rows replaced by case, so a run in pieces fills one file); the
table in bench/README.md is `--table`'s output.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

# A folder of its own: bench.targets and tutorials 5 and 6 read every bench/results/*.json as GPU rows.
RESULTS = Path(__file__).resolve().parent / "results" / "cpu" / "cpu.json"
NUM_CLASSES = 10  # CIFAR-10: the study's head; 1000 would add nothing but head FLOPs


@dataclass
class Case:
    kind: str  # infer, train, finetune-last, checkpoint
    model: str  # preset name (tinyvit, timm and torchvision share them)
    image_size: int
    batch: int
    goal: float  # the speedup each non-baseline side should reach (checkpoint: none, 0)
    pairs: Optional[int] = None  # rounds kept; None: --pairs
    note: str = ""
    smoke_overrides: dict = field(default_factory=dict)
    flags: tuple = ()  # loop cases: the model's and dataset's tinyvit.finetune flags


VIT_TI, VIT_S, VIT_B = "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"
DEMO_VIT = "patch_size=4,dim=64,depth=6,num_heads=4,mlp_dim=256,pool=mean"  # the Makefile's digits ViT
CASES = {
    "infer-vit-ti-224": Case("infer", VIT_TI, 224, 16, 1.0),
    "infer-vit-s-224": Case("infer", VIT_S, 224, 8, 1.0),
    "infer-vit-b-224": Case("infer", VIT_B, 224, 8, 1.0, note="batch 8 on 2 cores"),
    "infer-vit-ti-32": Case("infer", VIT_TI, 32, 64, 1.0),
    "train-vit-ti-224": Case("train", VIT_TI, 224, 16, 1.0),
    "train-vit-s-224": Case("train", VIT_S, 224, 8, 1.0),
    "train-vit-b-224": Case("train", VIT_B, 224, 4, 1.0, note="batch 4 on 2 cores"),
    "train-vit-ti-32": Case("train", VIT_TI, 32, 64, 1.0),
    "infer-resnet18-224": Case("infer", "resnet18", 224, 16, 1.0),
    "infer-resnet50-224": Case("infer", "resnet50", 224, 8, 1.0),
    "train-resnet18-224": Case("train", "resnet18", 224, 16, 1.0),
    "train-resnet50-224": Case("train", "resnet50", 224, 8, 1.0),
    "finetune-last-vit-s-224": Case("finetune-last", VIT_S, 224, 16, 20.0),
    "finetune-last-vit-b-224": Case("finetune-last", VIT_B, 224, 8, 20.0, pairs=15, note="batch 8 on 2 cores"),
    "checkpoint-vit-s-224": Case("checkpoint", VIT_S, 224, 8, 0.0),
    # The training loop with its data (tinyvit.trainer) against a minimal hand-written one: `make demo`'s
    # models on the digits, and the ViT on CIFAR-10-shaped synthetic images.
    "loop-digits-vit-16": Case("loop", VIT_TI, 16, 128, 0.9, flags=("--image-size", "16", "--override", DEMO_VIT, "--dataset", "digits")),
    "loop-digits-resnet18-32": Case("loop", "resnet18", 32, 128, 0.9, flags=("--image-size", "32", "--dataset", "digits")),
    "loop-synthetic-vit-32": Case("loop", VIT_TI, 32, 128, 0.9, flags=("--image-size", "32", "--override", DEMO_VIT, "--dataset", "synthetic")),
}
# Smoke: two blocks of ViT-Ti at 32 px, a 2-stage-deep ResNet-18 stand-in, 3 rounds, 1 warm-up.
SMOKE_CASES = ("infer-vit-ti-32", "train-vit-ti-32", "infer-resnet18-224", "finetune-last-vit-s-224", "checkpoint-vit-s-224",
               "loop-digits-vit-16")
SMOKE = dict(image_size=32, batch=2, depth=2, pairs=3, warmup=1)


# ---------------------------------------------------------------------------------------------
# The measurement: rotated rounds, per-round ratios, median and spread.
# ---------------------------------------------------------------------------------------------


def quartiles(values: list) -> tuple:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return q[0], q[2]


def rounds(sides: dict, baseline: str, pairs: int, warmup: int) -> dict:
    """Run every side once per round, order rotating; {side: {ms, speedup stats}} over the kept rounds."""
    names = list(sides)
    times = {n: [] for n in names}
    for r in range(warmup + pairs):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            sides[n]()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[n].append(dt)
    out = {}
    for n in names:
        ratios = [b / t for b, t in zip(times[baseline], times[n])]
        q1, q3 = quartiles(ratios)
        out[n] = dict(
            ms=1000 * statistics.median(times[n]),
            speedup=statistics.median(ratios), speedup_q1=q1, speedup_q3=q3,
            speedup_min=min(ratios), speedup_max=max(ratios),
        )
    return out


# ---------------------------------------------------------------------------------------------
# The models, with the same weights on every side.
# ---------------------------------------------------------------------------------------------


def build(case: Case, smoke: bool) -> dict:
    """{"tinyvit": ..., "timm" or "torchvision": ...}; the reference's state dict loaded strictly."""
    import tinyvit

    if case.model.startswith("resnet"):
        import torchvision

        extra = dict(layers=(1, 1, 1, 1)) if smoke else {}
        ours = tinyvit.create_model(case.model, num_classes=NUM_CLASSES, **extra)
        if smoke:
            from torchvision.models.resnet import BasicBlock, ResNet

            reference = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=NUM_CLASSES)
        else:
            reference = getattr(torchvision.models, case.model)(num_classes=NUM_CLASSES)
        ours.load_state_dict(reference.state_dict())
        return {"tinyvit": ours, "torchvision": reference}
    import timm

    extra = dict(depth=SMOKE["depth"]) if smoke else {}
    reference = timm.create_model(case.model, pretrained=False, img_size=case.image_size, num_classes=NUM_CLASSES, **extra)
    ours = tinyvit.create_model(case.model, num_classes=NUM_CLASSES, image_size=case.image_size, **extra)
    ours.load_state_dict(reference.state_dict())
    return {"tinyvit": ours, "timm": reference}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def check_same(label: str, diff: float, tolerance: float = 1e-3) -> float:
    if not diff <= tolerance:
        raise AssertionError(f"{label}: outputs differ by {diff:.2e} (> {tolerance}); not timing a different computation")
    return diff


def train_step(model, forward: Callable, images, labels, params) -> Callable:
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step():
        loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def case_infer(case: Case, models: dict, images, labels) -> tuple[dict, str, dict]:
    base = next(n for n in models if n != "tinyvit")
    ours, ref = models["tinyvit"].eval(), models[base].eval()
    with torch.inference_mode():
        diff = check_same(case.model, max_diff(ours(images), ref(images)))
    sides = {base: lambda: ref(images), "tinyvit": lambda: ours(images)}
    if base == "timm" and case.model != VIT_B:
        sides["tinyvit-full"] = lambda: ours.forward_head(ours.forward_features(images))

    def run(fn):
        def call():
            with torch.inference_mode():
                fn()
        return call

    return {n: run(f) for n, f in sides.items()}, base, dict(max_abs_diff=diff)


def case_train(case: Case, models: dict, images, labels) -> tuple[dict, str, dict]:
    base = next(n for n in models if n != "tinyvit")
    ours, ref = models["tinyvit"].train(), models[base].train()
    diff = check_same(case.model, max_diff(ours(images), ref(images)))
    sides = {
        base: train_step(ref, ref, images, labels, ref.parameters()),
        "tinyvit": train_step(ours, ours, images, labels, ours.parameters()),
    }
    return sides, base, dict(max_abs_diff=diff)


def case_finetune(case: Case, models: dict, images, labels) -> tuple[dict, str, dict]:
    """Epoch >= 2 of `--unfreeze last --no-augment`: timm's plain frozen loop against the cache."""
    from tinyvit import freeze
    from tinyvit.cache import FeatureCache

    ours, ref = models["tinyvit"], models["timm"]
    # timm, as a user writes it: freeze by requires_grad, train blocks[-1], norm and head, run the
    # whole model every step (autograd builds a graph from the first trainable block on).
    ref.requires_grad_(False)
    trainable = [*ref.blocks[-1].parameters(), *ref.norm.parameters(), *ref.head.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    ref.train()
    split = freeze.apply(ours, "last")
    ours.train()
    # The cache: the frozen prefix's tokens for a pool of images (4 batches), gathered by index as
    # tinyvit/cache.py's in-memory storage does.
    pool = images.repeat(4, 1, 1, 1)
    cache = FeatureCache(split.prefix(pool), labels.repeat(4), torch.float32, "memory")
    gen = torch.Generator().manual_seed(0)
    n = len(cache)

    def batch():
        return cache.gather(torch.randperm(n, generator=gen)[: len(images)].tolist(), torch.device("cpu"))

    def full_last_block(tokens):  # the cache alone: every token through the last block
        return ours.forward_head(ours.norm(ours.blocks[-1](tokens)))

    with torch.no_grad():
        feats = split.prefix(images)
        diff = max(max_diff(split(feats), ref(images)), max_diff(full_last_block(feats), ref(images)))
    check_same(case.model, diff)
    params = [p for p in ours.parameters() if p.requires_grad]
    opt_full = torch.optim.AdamW(params, lr=1e-5)
    opt_reduced = torch.optim.AdamW(params, lr=1e-5)

    def cached(forward, optimizer):
        def step():
            tokens, ys = batch()
            loss = F.cross_entropy(forward(tokens), ys)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    sides = {
        "timm-frozen": train_step(ref, ref, images, labels, trainable),
        "tinyvit-cache": cached(full_last_block, opt_full),
        "tinyvit-cache-reduced": cached(split, opt_reduced),
    }
    from tinyvit.flops import suffix_flops, vit_flops

    extra = dict(
        max_abs_diff=diff,
        trained_flops_reduced=suffix_flops(ours, len(ours.blocks) - 1),
        trained_flops_full=suffix_flops(ours, len(ours.blocks) - 1, reduced_last_block=False),
        model_flops=vit_flops(ours.cfg, reduced_last_block=False),
    )
    return sides, "timm-frozen", extra


def case_checkpoint(case: Case, models: dict, images, labels) -> tuple[dict, str, dict]:
    ours = models["tinyvit"].train()
    plain = train_step(ours, ours, images, labels, ours.parameters())

    def checkpointed():
        ours.set_grad_checkpointing(True)
        try:
            plain()
        finally:
            ours.set_grad_checkpointing(False)

    return {"tinyvit": plain, "tinyvit-checkpoint": checkpointed}, "tinyvit", {}


def loop_trainer(cfg, in_memory: bool = True):
    """tinyvit's Trainer for `cfg` on the CPU; in_memory=False sends it down the per-image path."""
    from tinyvit import data
    from tinyvit.processes import Dist
    from tinyvit.trainer import Trainer

    limit = data.IN_MEMORY_LIMIT
    data.IN_MEMORY_LIMIT = limit if in_memory else 0  # 0: the per-image path
    try:
        return Trainer(cfg, Dist(), torch.device("cpu"))
    finally:
        data.IN_MEMORY_LIMIT = limit


def loop_step(t, n: int = 1) -> Callable:
    """A side: n training steps of Trainer t, through its own batches, epoch after epoch."""
    state = {"epoch": 0, "batches": iter(())}

    def step():
        for _ in range(n):
            batch_ = next(state["batches"], None)
            if batch_ is None:  # the next epoch's batches, as Trainer.fit takes them
                state["epoch"] += 1
                state["batches"] = t.train_batches(state["epoch"], 0)
                batch_ = next(state["batches"])
            t.train_step(*batch_)
    return step


def case_loop(case: Case, batch: int, smoke: bool) -> tuple[dict, str, dict]:
    """Training images per second, data included, of one step of tinyvit's loop (Trainer.train_batches
    and train_step, as `python -m tinyvit.finetune` runs them) against a minimal loop written by hand:
    the split prepared once as one float tensor, random batches by index, the same model, batch and
    AdamW, no augmentation. Also: the loop with --compile, with the demo's augmentation (RandAugment,
    random erasing, label smoothing) batched on the tensor, and the per-image PIL path with and
    without it (what every dataset used before issue 23)."""
    import copy

    from tinyvit import finetune, freeze
    from tinyvit.batches import TensorBatches

    argv = ["--model", case.model, *case.flags, "--weights", "none", "--unfreeze", "all", "--lr", "1e-3",
            "--batch-size", str(batch), "--num-workers", "0", "--no-progress", "--epochs", "100", "--warmup-epochs", "0"]
    if smoke:
        argv += ["--limit-train", "48", "--limit-val", "8", "--override", "depth=1" if "vit" in case.model else "layers=[1,1,1,1]"]
    augmented = ["--recipe", "scratch", "--mixup", "0", "--cutmix", "0", "--lr", "1e-3"]

    def trainer(*extra, in_memory=True):
        return loop_trainer(finetune.parse_args(argv + list(extra))[0], in_memory)

    plain = trainer("--no-augment")
    assert isinstance(plain.train_data, TensorBatches)
    images = plain.train_data.pipeline.prepare(plain.train_data.images)  # [n, 3, S, S], normalised once
    labels = plain.train_data.labels
    model = copy.deepcopy(plain.model).train()
    optimizer = torch.optim.AdamW(freeze.param_groups(model, 0.05), lr=1e-3)
    gen = torch.Generator().manual_seed(0)

    def by_hand():
        i = torch.randint(len(labels), (batch,), generator=gen)
        loss = F.cross_entropy(model(images[i]), labels[i])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    sides = {"hand": by_hand, "tinyvit": loop_step(plain),
             "tinyvit-augment": loop_step(trainer(*augmented)),
             "per-image": loop_step(trainer("--no-augment", in_memory=False)),
             "per-image-augment": loop_step(trainer(*augmented, in_memory=False))}
    if not smoke:  # a CPU compile takes tens of seconds (the warm-up rounds)
        sides["tinyvit-compile"] = loop_step(trainer("--no-augment", "--compile"))
    return sides, "hand", dict(train_images=len(labels), flags=list(case.flags))


KINDS = {"infer": case_infer, "train": case_train, "finetune-last": case_finetune, "checkpoint": case_checkpoint,
         "loop": case_loop}
DIAGNOSTIC_LOOP_SIDES = ("tinyvit-augment", "per-image", "per-image-augment", "tinyvit-compile")  # no goal: read the ratios


# ---------------------------------------------------------------------------------------------
# Peak memory of a training step, one configuration per subprocess.
# ---------------------------------------------------------------------------------------------


def memory_probe(model: str, image_size: int, batch: int, checkpoint: bool, smoke: bool, steps: int = 2) -> dict:
    """In this (fresh) process: build, record ru_maxrss, train `steps` steps, record it again (KiB)."""
    import resource

    case = Case("checkpoint", model, image_size, batch, 0.0)
    ours = build(case, smoke)["tinyvit"].train()
    ours.set_grad_checkpointing(checkpoint)
    images = torch.randn(batch, 3, image_size, image_size)
    labels = torch.randint(0, NUM_CLASSES, (batch,))
    step = train_step(ours, ours, images, labels, ours.parameters())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(steps):
        step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(maxrss_setup_mib=before / 1024, maxrss_peak_mib=after / 1024, step_increase_mib=(after - before) / 1024)


def measure_memory(case: Case, smoke: bool, threads: int) -> dict:
    out = {}
    for ckpt in (False, True):
        size = SMOKE["image_size"] if smoke else case.image_size
        batch = SMOKE["batch"] if smoke else case.batch
        args = [sys.executable, "-m", "bench.cpu", "--probe", f"{case.model},{size},{batch},{int(ckpt)},{int(smoke)}",
                "--threads", str(threads)]
        root = Path(__file__).resolve().parent.parent
        result = subprocess.run(args, capture_output=True, text=True, cwd=root, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"memory probe failed: {result.stderr[-2000:]}")
        probe = json.loads(result.stdout.strip().splitlines()[-1])
        out["checkpoint" if ckpt else "plain"] = probe
    out["peak_ratio"] = out["checkpoint"]["maxrss_peak_mib"] / out["plain"]["maxrss_peak_mib"]
    out["increase_ratio"] = out["checkpoint"]["step_increase_mib"] / max(out["plain"]["step_increase_mib"], 1e-9)
    return out


# ---------------------------------------------------------------------------------------------
# Running, recording, the table.
# ---------------------------------------------------------------------------------------------


def environment(threads: int) -> dict:
    from bench.common import _version

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return dict(
        machine=f"{cpu}, {os.cpu_count()} cores", threads=threads, torch=torch.__version__,
        timm=_version("timm"), torchvision=_version("torchvision"), python=platform.python_version(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )


def run_case(name: str, smoke: bool, pairs: int, warmup: int, threads: int) -> dict:
    case = CASES[name]
    size = SMOKE["image_size"] if smoke else case.image_size
    batch = SMOKE["batch"] if smoke else case.batch
    pairs = SMOKE["pairs"] if smoke else (case.pairs or pairs)
    warmup = SMOKE["warmup"] if smoke else warmup
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    if case.kind == "loop":  # builds its own models and data, through tinyvit.finetune's flags
        batch = 8 if smoke else case.batch
        sides, baseline, extra = case_loop(case, batch, smoke)
    else:
        models = build(Case(case.kind, case.model, size, batch, case.goal), smoke)
        images = torch.randn(batch, 3, size, size)
        labels = torch.randint(0, NUM_CLASSES, (batch,))
        sides, baseline, extra = KINDS[case.kind](case, models, images, labels)
    stats = rounds(sides, baseline, pairs, warmup)
    row = dict(
        case=name, kind=case.kind, model=case.model, image_size=size, batch=batch, pairs=pairs, warmup=warmup,
        baseline=baseline, goal=case.goal, note=case.note, smoke=smoke, sides=stats, **extra,
        seconds=time.perf_counter() - t0, loadavg_before=load_before, loadavg_after=os.getloadavg()[0],
        env=environment(threads),
    )
    for side in stats.values():
        side["images_per_s"] = batch / side["ms"] * 1000
    if case.kind == "checkpoint":
        row["memory"] = measure_memory(case, smoke, threads)
    return row


def merge(path: Path, rows: list) -> None:
    from bench.common import _write_json_atomically

    existing = json.loads(path.read_text()) if path.exists() else []
    names = {r["case"] for r in rows}
    _write_json_atomically(path, [r for r in existing if r["case"] not in names] + rows)


DIAGNOSTIC_SIDES = ("tinyvit-full", "tinyvit-cache", *DIAGNOSTIC_LOOP_SIDES)


def _spread(s: dict) -> str:
    return f"{s['speedup_q1']:.2f}-{s['speedup_q3']:.2f} (range {s['speedup_min']:.2f}-{s['speedup_max']:.2f})"


def table(rows: list) -> str:
    """Markdown: one line per (case, side) against the case's baseline."""
    lines = [
        "| case | batch | side vs baseline | goal | median speedup | IQR (range) | baseline ms | side ms | rounds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = r["sides"][r["baseline"]]
        for name, s in r["sides"].items():
            if name == r["baseline"]:
                continue
            # The goal is for what a user runs; tinyvit-full and tinyvit-cache are there to take the
            # result apart (fused ops alone; the cache without the reduced block).
            has_goal = r["goal"] and name not in DIAGNOSTIC_SIDES
            goal = f">= {r['goal']:g}x" if has_goal else "-"
            met = "" if not has_goal else (" (met)" if s["speedup"] >= r["goal"] else " (short)")
            lines.append(
                f"| {r['case']} | {r['batch']} | {name} vs {r['baseline']} | {goal} | {s['speedup']:.2f}x{met} | "
                f"{_spread(s)} | {base['ms']:.0f} | {s['ms']:.0f} | {r['pairs']} |"
            )
        if "memory" in r:
            m = r["memory"]
            lines.append(
                f"| {r['case']} memory | {r['batch']} | peak RSS with / without checkpointing | - | "
                f"{m['peak_ratio']:.2f}x | peak {m['checkpoint']['maxrss_peak_mib']:.0f} / {m['plain']['maxrss_peak_mib']:.0f} MiB; "
                f"step increase {m['checkpoint']['step_increase_mib']:.0f} / {m['plain']['step_increase_mib']:.0f} MiB | - | - | 1 |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=None, help=f"comma list from {', '.join(CASES)} (default: all)")
    parser.add_argument("--pairs", type=int, default=15, help="rounds kept per case (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="rounds run first and not kept (default 2)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch.set_num_threads for the whole run (default: min(2, cores))")
    parser.add_argument("--smoke", action="store_true", help="tiny models, 3 rounds; results to a temp dir")
    parser.add_argument("--out", type=Path, default=None, help=f"results file (default {RESULTS})")
    parser.add_argument("--table", action="store_true", help="print the markdown table of the results file and exit")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: one memory measurement
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.probe:
        model, size, batch, ckpt, smoke = args.probe.split(",")
        print(json.dumps(memory_probe(model, int(size), int(batch), ckpt == "1", smoke == "1")))
        return
    out = args.out or (Path(tempfile.mkdtemp(prefix="tinyvit-bench-cpu-")) / "cpu.json" if args.smoke else RESULTS)
    if args.smoke and out.resolve() == RESULTS:
        parser.error(f"--out {out}: smoke results are not measurements and do not go to {RESULTS}")
    if args.table:
        if not out.exists():
            parser.error(f"--table: no results file at {out} (run some cases first)")
        print(table(json.loads(out.read_text())))
        return
    if args.pairs < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--pairs and --threads must be >= 1, --warmup >= 0")
    if args.cases is None:
        names = SMOKE_CASES if args.smoke else tuple(CASES)
    else:
        names = tuple(x.strip() for x in args.cases.split(",") if x.strip())
        unknown = [n for n in names if n not in CASES]
        if unknown or not names:
            parser.error(f"--cases {args.cases!r}: unknown {', '.join(unknown) or '(empty)'}; expected from {', '.join(CASES)}")
    for name in names:
        row = run_case(name, args.smoke, args.pairs, args.warmup, args.threads)
        merge(out, [row])
        print(table([row]))
        print(f"{name}: {row['seconds']:.0f} s, load average {row['loadavg_before']:.1f} -> {row['loadavg_after']:.1f}")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
