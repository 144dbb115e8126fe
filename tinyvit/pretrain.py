"""`python -m tinyvit.pretrain --method mae`: self-supervised pretraining without labels.

A masked autoencoder (tinyvit/mae.py; He et al. 2022) learns from the images of a dataset's
training split alone: the labels are never used, the validation split is never read. Its encoder
is a tinyvit VisionTransformer, saved as the run's model, which fine-tunes with a new head:

    python -m tinyvit.pretrain --method mae --model vit_tiny_patch16_224 --dataset digits \\
        --image-size 16 --override patch_size=4,dim=64,depth=6,num_heads=4,mlp_dim=256 \\
        --epochs 200 --out runs/mae-digits
    python -m tinyvit.finetune --model vit_tiny_patch16_224 --weights runs/mae-digits --dataset digits \\
        --image-size 16 --override patch_size=4,dim=64,depth=6,num_heads=4,mlp_dim=256 \\
        --recipe scratch --layer-decay 0.75 --limit-train 67 --out runs/mae-digits-ft

(the same --model and --override: finetune checks that the encoder has that architecture, and by
default fine-tunes as MAE does: mean pooling into a new fc_norm, a new head; see mae.finetune_model).

The recipe is MAE's (main_pretrain.py and its pretraining guide,
https://github.com/facebookresearch/mae/blob/main/PRETRAIN.md): AdamW with betas (0.9, 0.95), weight decay
0.05 on everything but 1-d parameters, lr = --blr x batch / 256, linear warm-up (--warmup-epochs,
default a twentieth of the run: the guide's 40 of 800 epochs) then a half-cycle cosine to 0,
updated every step, mask ratio 0.75. Two deviations: the warm-up's first step already uses lr/warmup
(MAE's starts at 0; tinyvit.schedule.lr_factor, shared with finetune), and the augmentation is the
dataset's own (tinyvit/augment.py: CIFAR's shift and flip, none for the digits) instead of
MAE's RandomResizedCrop(scale 0.2-1) and flip, which is tuned for ImageNet photos.

This command is tinyvit.finetune with MAE's task (tinyvit/tasks.py) and MAE's defaults: the same
training loop (tinyvit/trainer.py), flags, checks, --resume rules and run directory (tinyvit/rundir.py:
a manifest with every file's SHA-256, a lock, --force removing only the run's own files, --resume
after Ctrl-C, SIGTERM or kill -9 from the step checkpoint.pt holds, with the data checked to be the
same), DDP under torchrun. Small low-res datasets (the digits, CIFAR, MNIST) train from one tensor on
the device, as fine-tuning does (tinyvit/batches.py). The run directory holds model.safetensors +
config.json (the encoder: tinyvit.load_pretrained(out) loads it),
pretrain.json (what marks the directory as a pretrained encoder for finetune --weights),
checkpoint.pt, metrics.jsonl, summary.json, loss.png, and a figure per epoch,
reconstruction-epochNNN.png: masked input, reconstruction (the visible patches pasted back, as the
paper's figures show it) and original, for the same images and masks every epoch.
"""
from __future__ import annotations

import sys

from tinyvit import finetune
from tinyvit.trainer import Config

# MAE's defaults, where they differ from fine-tuning's (Config): a small ViT from random weights, all of it trained.
DEFAULTS = dict(method="mae", model="vit_tiny_patch16_224", weights="none", unfreeze="all", epochs=100, batch_size=64)
FLAGS = {"--method", "--model", "--dataset", "--data-dir", "--image-size", "--override", "--epochs", "--batch-size",
         "--blr", "--lr", "--weight-decay", "--warmup-epochs", "--mask-ratio", "--decoder-dim", "--decoder-depth",
         "--decoder-heads", "--norm-pix-loss", "--no-augment", "--flip", "--shift", "--seed", "--data-seed",
         "--limit-train", "--device", "--amp", "--num-workers", "--compile", "--out", "--resume", "--force",
         "--allow-data-change", "--no-progress"}
RUNTIME_FIELDS = finetune.RUNTIME_FIELDS


def parse_args(argv=None) -> tuple[Config, set]:
    """(config, the names of the flags given), from finetune's table with MAE's defaults."""
    given = vars(finetune.build_parser("tinyvit.pretrain", __doc__, DEFAULTS, FLAGS).parse_args(argv))
    return Config(**{**DEFAULTS, **given}), set(given)


def report(trainer, summary: dict) -> None:
    out = trainer.out
    trainer.log(f"final loss {summary['final_loss']:.4f} after {summary['steps']} steps; wrote {out}/: "
                f"model.safetensors + config.json (the encoder; python -m tinyvit.finetune --weights {out}), "
                f"metrics.jsonl, summary.json, loss.png, reconstruction-epoch*.png")


def main(argv=None) -> int:
    cfg, given = parse_args(argv)
    return finetune.train(cfg, given, "tinyvit.pretrain", report)


if __name__ == "__main__":
    sys.exit(main())
