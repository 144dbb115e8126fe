# %% [markdown]
# # 8. Fine-tuning a single block
#
# Malpure et al. 2021 ("Investigating Transfer Learning Capabilities of Vision Transformers and
# CNNs by Fine-Tuning a Single Trainable Block", arXiv 2110.05270) take an ImageNet model, freeze
# everything but its last transformer block (or a ResNet's last stage), put a new classifier on
# top and fine-tune on CIFAR-10. `python -m tinyvit.finetune` is that study. This tutorial goes
# through the parts that are easy to get quietly wrong, then runs the CLI.
#
# **What you'll learn**
# - freezing with `tinyvit.freeze`: what trains in each mode, why `requires_grad_(False)` is not
#   enough for BatchNorm, and which parameters get weight decay;
# - preprocessing belongs to the checkpoint (`model.preprocess` for a Google ViT, a DeiT and a
#   ResNet), and 32-pixel images are upsampled to it;
# - feature caching: run the frozen part once, not once per epoch;
# - running `tinyvit.finetune.main([...])` and reading its `metrics.jsonl` and curves.
#
# The real study, on a GPU with network access (weights and CIFAR-10 download once):
# ```bash
# python -m tinyvit.finetune --model vit_base_patch16_224 --dataset cifar10 --unfreeze last --no-augment
# python -m tinyvit.finetune --model resnet50 --dataset cifar10 --unfreeze last --no-augment
# ```
# Expect the mid-to-high 90s for ViT-B/16 (google-research/vision_transformer#84,
# NielsRogge/Transformers-Tutorials#297); below ~90% suspect preprocessing or
# freezing before the recipe.

# %%
import json
import os
import tempfile
from pathlib import Path

import torch
from matplotlib.figure import Figure

import tinyvit
import tinyvit.finetune
from tinyvit import data, freeze
from tinyvit.rundir import read_metrics
from tinyvit.resnet import ResNet, ResNetConfig
from tinyvit.vit import ViTConfig, VisionTransformer

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook runs in tutorials/
OUT = Path(os.environ.get("TINYVIT_TUTORIAL_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% [markdown]
# ## What trains
#
# `freeze.apply(model, mode)` freezes in place and returns a `Split` of the model. The modes:
# `head` (the classifier and the final LayerNorm), `last` (plus the last block or stage), a
# number `N` of final blocks, or `all`. It prints what it did: bug reports such as
# JDAI-CV/fast-reid#178 were settled only when someone listed the trainable parameters by hand.

# %%
vit = VisionTransformer(ViTConfig(image_size=32, patch_size=8, dim=64, depth=3, num_heads=2, mlp_dim=128, num_classes=10))
split = freeze.apply(vit, "last")
print(split.describe())
trainable = {name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("blocks") else "")
             for name, p in vit.named_parameters() if p.requires_grad}
print("parameters with requires_grad:", sorted(trainable))
assert trainable == {"blocks.2", "norm", "head"}

# %% [markdown]
# The trap of CSCYQJ/MICCAI23-ProtoContra-SFDA#18: `module.requires_grad = False` sets a plain Python attribute on the
# module and freezes nothing. It has to be `requires_grad_(False)`, which reaches the parameters.

# %%
fresh = VisionTransformer(ViTConfig(image_size=32, patch_size=8, dim=64, depth=3, num_heads=2, mlp_dim=128))
fresh.blocks[0].requires_grad = False  # looks right, does nothing
print("after   .requires_grad = False :", freeze.count_parameters(fresh)[0], "trainable (all of them)")
fresh.blocks[0].requires_grad_(False)
print("after .requires_grad_(False)   :", freeze.count_parameters(fresh)[0], "trainable")

# %% [markdown]
# ## BatchNorm keeps learning unless it is in eval mode
#
# A ResNet's BatchNorm layers update their running mean and variance on every forward pass in
# training mode, gradients or not. A backbone "frozen" with `requires_grad_(False)` alone drifts
# as soon as `model.train()` is called (kdexd/virtex#16). `freeze.apply` also pins the frozen
# modules in eval mode, so `model.train()` cannot wake them. We compare the first BatchNorm's
# running mean after one training-mode forward pass:

# %%
def stem_bn_drift(resnet: ResNet) -> float:
    before = resnet.bn1.running_mean.clone()
    resnet.train()  # what every training loop calls
    with torch.no_grad():
        resnet(torch.randn(8, 3, 64, 64) * 3 + 1)
    return (resnet.bn1.running_mean - before).abs().max().item()


naive = ResNet(ResNetConfig(num_classes=10))
naive.requires_grad_(False)
naive.fc.requires_grad_(True)
pinned = ResNet(ResNetConfig(num_classes=10))
freeze.apply(pinned, "head")
naive_drift, pinned_drift = stem_bn_drift(naive), stem_bn_drift(pinned)
print(f"requires_grad_(False) only:  stem BatchNorm running mean moved by {naive_drift:.3f}")
print(f"freeze.apply(model, 'head'): stem BatchNorm running mean moved by {pinned_drift:.3f}")
assert naive_drift > 0 and pinned_drift == 0

# %% [markdown]
# For a ViT, LayerNorm has no running statistics, but dropout and stochastic depth in frozen
# blocks must stay off too: the same pinning covers them.
#
# The optimizer sees only the trainable parameters, in two groups: weight decay on weight
# matrices, none on biases, norm scales and shifts, and the tokens.

# %%
for group in freeze.param_groups(vit, weight_decay=0.05):
    print(f"{group['name']:9s} weight_decay {group['weight_decay']:<5}  {len(group['params'])} tensors, "
          f"{sum(p.numel() for p in group['params']):,} parameters")

# %% [markdown]
# ## Preprocessing comes with the checkpoint
#
# Each preset carries how its official weights expect images (`model.preprocess`). Google's ViT
# weights were trained on pixels in [-1, 1]; DeiT and torchvision's ResNets on ImageNet's mean
# and std, with different resize rules. (Built on the `meta` device: no memory, no weights, just
# the attributes.)

# %%
for name in ("vit_base_patch16_224", "deit_base_patch16_224", "resnet50"):
    with torch.device("meta"):
        print(f"{name:22s} {tinyvit.create_model(name).preprocess}")

# %% [markdown]
# CIFAR's images are 32×32; ViT-B/16 was trained at 224. Fed at 32 pixels it sees 4 patches and
# its position embedding no longer fits; the fix everyone converges on is to *upsample* to the
# checkpoint's size (facebookresearch/deit#154: ~81% instead of ~98% on CIFAR-10 without it;
# google-research/simclr#7, zero-padding instead of upsampling: 75% instead of ~90%). `tinyvit.data.transforms` builds the pipeline from
# the checkpoint's `Preprocess`:

# %%
with torch.device("meta"):
    vit_b_pre = tinyvit.create_model("vit_base_patch16_224").preprocess
train_tf, eval_tf = data.transforms(vit_b_pre, low_res=True, augment=False)
print(eval_tf)
image, label = data.Synthetic(1)[0]
print(f"a {image.size[0]}x{image.size[1]} image -> {tuple(eval_tf(image).shape)}, "
      f"values in [{eval_tf(image).min():.2f}, {eval_tf(image).max():.2f}]")

# %% [markdown]
# ## Feature caching
#
# With `--unfreeze last` on ViT-B/16, the patch embedding and 11 of 12 blocks are frozen. Without
# augmentation (`--no-augment`) they see the same images every epoch and return the same
# activations, so the CLI runs the frozen prefix once, keeps its output (`[N, 197, 768]` tokens
# per image), and trains the last block on that table. In FLOPs, the cached step costs the last
# block's forward and backward (~3 block-forwards) instead of 12 forwards + 3: up to ~5×
# faster per epoch before counting the data pipeline (`tinyvit/cache.py` has the derivation).
#
# It is only correct if the prefix really is a fixed function of the image: the `Split` returned
# by `freeze.apply` cuts the model so that `split(split.prefix(x)) == model(x)`:

# %%
vit.eval()
x = torch.randn(4, 3, 32, 32)
with torch.no_grad():
    tokens = split.prefix(x)  # what the cache stores: [b, n, d] entering blocks[2]
    print("cached features:", tuple(tokens.shape),
          f" max |split(prefix(x)) - model(x)| = {(split(tokens) - vit(x)).abs().max():.1e}")
    assert torch.allclose(split(tokens), vit(x), atol=1e-5)

# %% [markdown]
# ## Run it
#
# The CLI is `argparse` into a dataclass and `main(argv)`, so it runs from Python exactly as from
# the shell. Offline, on a CPU, in seconds: the generated `synthetic` dataset (10 classes:
# 5 colours × horizontal or vertical stripes, 32×32), a ViT shrunk by `--override` to 3 blocks of
# width 64 on 8-pixel patches, and random weights (`--weights none`) instead of ImageNet ones. So
# the frozen blocks are *random* features here: this run shows the mechanics, not what
# pretraining buys (tutorial 9 turns to that).

# %%
work = tempfile.TemporaryDirectory(dir=OUT, prefix="08_run_")  # inside OUT, removed at the end
run = Path(work.name) / "vit-last"
argv = [
    "--model", "vit_tiny_patch16_224", "--override", "patch_size=8,depth=3,dim=64,num_heads=2,mlp_dim=128",
    "--weights", "none", "--dataset", "synthetic", "--image-size", "32",
    "--unfreeze", "last", "--no-augment", "--epochs", "5", "--lr", "1e-3", "--batch-size", "64",
    "--limit-train", "1000", "--limit-val", "300", "--num-workers", "0", "--no-progress", "--out", str(run),
]
print("python -m tinyvit.finetune " + " ".join(argv), "\n")
assert tinyvit.finetune.main(argv) == 0

# %% [markdown]
# ## Reading the run
#
# `--out` holds `metrics.jsonl` (one JSON object per epoch, appended as each finishes),
# `summary.json`, the model (`model.safetensors` + `config.json`, which `tinyvit.load_pretrained`
# reads back with its preprocessing), `checkpoint.pt` for `--resume`, and the run's own
# `curves.png` and `confusion.png`. `tinyvit.rundir.read_metrics` reads the metrics with checks;
# `python -m tinyvit.compare RUN [RUN ...]` tabulates several runs.

# %%
print(sorted(p.name for p in run.iterdir()))
history = read_metrics(run)
print(json.dumps(history[0], indent=1)[:400], "...")
summary = json.loads((run / "summary.json").read_text())
print(f"{summary['trainable_params']:,} of {summary['total_params']:,} parameters trained: {summary['trainable_groups']}")
assert len(history) == 5 and all(r["cached"] for r in history)
assert history[-1]["val_acc"] > 0.3  # well above the 10% of chance, even on random frozen features
reloaded = tinyvit.load_pretrained(run)
print("reloaded:", type(reloaded).__name__, reloaded.preprocess)

# %% [markdown]
# The curves: loss and accuracy per epoch, and the time per epoch. Epoch 1 includes building the
# cache; later epochs train on cached features only.

# %%
epochs = [r["epoch"] for r in history]
fig = Figure(figsize=(12, 3.5), layout="constrained")
ax_loss, ax_acc, ax_time = fig.subplots(1, 3)
for split_name in ("train", "val"):
    ax_loss.plot(epochs, [r[f"{split_name}_loss"] for r in history], "o-", label=split_name)
    ax_acc.plot(epochs, [100 * r[f"{split_name}_acc"] for r in history], "o-", label=split_name)
ax_time.bar(epochs, [r["cache_seconds"] for r in history], label="building the cache")
ax_time.bar(epochs, [r["seconds"] - r["cache_seconds"] for r in history],
            bottom=[r["cache_seconds"] for r in history], label="training + validation")
ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
ax_time.set(xlabel="epoch", ylabel="seconds", title="time per epoch")
for ax in (ax_loss, ax_acc, ax_time):
    ax.legend()
fig.suptitle("tinyvit.finetune --unfreeze last, tiny ViT, synthetic data (random backbone)")
fig.savefig(OUT / "08_curves.png", dpi=100)
print("saved", OUT / "08_curves.png")
work.cleanup()

# %% [markdown]
# **Next:** [09_vit_vs_resnet.py](09_vit_vs_resnet.py) asks the study's question: a ViT or a
# ResNet, when data is small?
