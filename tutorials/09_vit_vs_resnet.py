# %% [markdown]
# # 9. ViT against ResNet on small data
#
# A convolution knows things about images before it sees one: nearby pixels belong together,
# and a pattern means the same wherever it appears. A ViT knows almost none of it and has to
# learn it from data. This tutorial asks what that costs when data is small, and what
# pretraining changes.
#
# **What you'll learn**
# - what "inductive bias" means concretely for a CNN and for a ViT;
# - what the literature reports, from scratch and pretrained, with sources;
# - a tiny from-scratch comparison run through `tinyvit.finetune`, and why it is only that.

# %%
import os
import tempfile
from pathlib import Path

import torch
from matplotlib.figure import Figure

import tinyvit.finetune
from tinyvit.compare import format_table, summarise
from tinyvit.rundir import read_metrics

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook runs in tutorials/
OUT = Path(os.environ.get("TINYVIT_TUTORIAL_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% [markdown]
# ## Inductive bias
#
# A 3×3 convolution computes each output from a 3×3 neighbourhood (*locality*), with the same
# weights everywhere (*translation equivariance*: shift the input, the output shifts), and a
# ResNet stacks them into a hierarchy of growing receptive fields. Those assumptions are true of
# natural images, so the network does not have to learn them.
#
# The ViT paper (Dosovitskiy et al. 2021, §3.1 "Inductive bias") puts it this way: in ViT "only
# MLP layers are local and translationally equivariant, while the self-attention layers are
# global"; the 2-D structure is used only when the image is cut into patches and when position
# embeddings are resized. Everything else about space, which patches are neighbours and which
# patterns matter where, is learned (tutorial 2 showed the position embedding starts as noise).
#
# Learning it takes data. The paper's Fig. 3 and 4: pre-trained on ImageNet-1k alone, ViTs
# trail ResNets (BiT) of similar cost; with ImageNet-21k they are comparable; with JFT-300M
# (300M images) they win. Data-efficient recipes narrowed the gap on ImageNet-1k alone (DeiT:
# strong augmentation, regularisation, distillation).

# %% [markdown]
# ## What is reported
#
# | setting | reported | source |
# |---|---|---|
# | ViT-L/16, pre-trained on JFT-300M, ImageNet top-1 | 87.76% (ViT-H/14: 88.55%; BiT-L ResNet: 87.54%) | Dosovitskiy et al. 2021, Table 2 |
# | DeiT-B, ImageNet-1k only, from scratch | 81.8% | Touvron et al. 2021 (DeiT) |
# | torchvision `vit_b_16`, ImageNet-1k only (DeiT-style recipe) | 81.072% | torchvision weights metadata (`ViT_B_16_Weights.IMAGENET1K_V1.meta`) |
# | torchvision ResNet-50 V2 / V1, ResNet-18 | 80.858% / 76.130%, 69.758% | torchvision weights metadata (`ResNet50_Weights`, `ResNet18_Weights` `.meta`) |
# | ViT from scratch on CIFAR-10 at 32×32 | 40–55%; ~82% with a tuned recipe | hananshafi/vits-for-small-scale-datasets#6, keras-team/keras-io#347, lucidrains/vit-pytorch#12 |
# | DeiT-S from scratch, as reported in the thread | 63.2% | facebookresearch/deit#202 |
# | ViT-B/16 in21k, full fine-tune, CIFAR-10 at 384 | 98.92 / 99.03% | google-research/vision_transformer#84, #21 |
# | HF ViT-B/16 in21k, full fine-tune, CIFAR-10 at 224 | 96–97% (lr 1e-5 to 2e-5) | NielsRogge/Transformers-Tutorials#297 |
# | DeiT-B trained on CIFAR-10 only, CIFAR-only teacher, at 224 | 98.5% | facebookresearch/deit#154, #202 |
# | last-block-only fine-tuning, ViT/DeiT vs CNNs, CIFAR-10 | transformers ahead of the CNNs (numbers in the paper's PDF, not quoted here) | Malpure et al. 2021, arXiv 2110.05270 |
#
# The pattern: from scratch on small data a ViT is poor, and maintainers answer "use a ConvNet"
# (google-research/vision_transformer#155). Pretrained on enough data, the same ViT transfers
# to CIFAR-10 in the high 90s, and even fine-tuning its last block alone is competitive. The
# small-data handicap is a statement about training from scratch, not about the architecture
# once it has seen enough images.

# %% [markdown]
# ## A tiny from-scratch comparison
#
# Both models from random weights (`--weights none --unfreeze all`), trained the same way by the
# same CLI on 300 generated 32×32 images (30 per class of the `synthetic` dataset: 5 colours ×
# horizontal or vertical stripes), 5 epochs, AdamW at 1e-3, validated on 300 others:
#
# - ResNet-18, as torchvision builds it (11.2M parameters);
# - a ViT shrunk to 4 blocks of width 96 on 8-pixel patches (0.3M parameters).
#
# Be clear about what this is: one seed, one tiny synthetic task, minutes of CPU, and models of
# very different size (the ResNet has ~35× the parameters). It illustrates the small-data
# behaviour above; it measures nothing about either architecture in general.

# %%
work = tempfile.TemporaryDirectory(dir=OUT, prefix="09_runs_")  # inside OUT, removed at the end
common = [
    "--weights", "none", "--unfreeze", "all", "--dataset", "synthetic", "--image-size", "32",
    "--epochs", "5", "--lr", "1e-3", "--batch-size", "50", "--limit-train", "300", "--limit-val", "300",
    "--num-workers", "0", "--no-progress",
]
models = {
    "resnet18": ["--model", "resnet18"],
    "vit-tiny": ["--model", "vit_tiny_patch16_224", "--override", "patch_size=8,depth=4,dim=96,num_heads=3,mlp_dim=192"],
}
runs = {}
for name, model_args in models.items():
    runs[name] = Path(work.name) / name
    argv = model_args + common + ["--out", str(runs[name])]
    print(f"\n$ python -m tinyvit.finetune {' '.join(argv)}")
    assert tinyvit.finetune.main(argv) == 0

# %% [markdown]
# `tinyvit.compare` reads the runs' `metrics.jsonl` (the same table `python -m tinyvit.compare
# RUN RUN` prints):

# %%
summaries = {name: summarise(path) for name, path in runs.items()}
print(format_table(list(summaries.values())))
histories = {name: read_metrics(path) for name, path in runs.items()}
assert all(len(h) == 5 for h in histories.values())
assert summaries["resnet18"].final_val_acc > summaries["vit-tiny"].final_val_acc  # what the text above says
assert summaries["vit-tiny"].final_train_acc < summaries["resnet18"].final_train_acc  # and what the text below says

# %% [markdown]
# Look at the training accuracy as well as the validation accuracy. The ViT is not overfitting
# its 300 images: it has not fitted them either. In 30 optimisation steps the ResNet's
# convolutions, which already compute local, position-independent features, find the stripes;
# the ViT still has to discover which patches relate to which. More steps, augmentation and a
# recipe like DeiT's would narrow the gap; the literature above says how far.

# %%
fig = Figure(figsize=(10, 3.8), layout="constrained")
ax_acc, ax_loss = fig.subplots(1, 2)
for name, history in histories.items():
    epochs = [r["epoch"] for r in history]
    ax_acc.plot(epochs, [100 * r["val_acc"] for r in history], "o-", label=f"{name} val")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in history], ":", color=ax_acc.lines[-1].get_color(), label=f"{name} train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label=name)
ax_acc.axhline(10, color="grey", lw=0.8, ls="--", label="chance")
for ax in (ax_acc, ax_loss):
    ax.set_xticks(epochs)
ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="from scratch, 300 training images")
ax_loss.set(xlabel="epoch", ylabel="validation cross-entropy", title="validation loss")
ax_acc.legend(fontsize=8)
ax_loss.legend(fontsize=8)
fig.suptitle("A tiny, one-seed illustration on synthetic data, not a benchmark")
fig.savefig(OUT / "09_vit_vs_resnet.png", dpi=100)
print("saved", OUT / "09_vit_vs_resnet.png")
work.cleanup()

# %% [markdown]
# ## From scratch vs pretrained, for real
#
# The comparison that matters for the study needs the ImageNet weights and CIFAR-10, so a GPU
# and network access. Fine-tune only the last block (or stage) of each, with each checkpoint's
# own preprocessing:
#
# ```bash
# python -m tinyvit.finetune --model vit_base_patch16_224 --dataset cifar10 --unfreeze last --no-augment
# python -m tinyvit.finetune --model deit_base_patch16_224 --dataset cifar10 --unfreeze last --no-augment
# python -m tinyvit.finetune --model resnet50 --dataset cifar10 --unfreeze last --no-augment
# python -m tinyvit.compare runs/vit_base_patch16_224-cifar10-last runs/deit_base_patch16_224-cifar10-last runs/resnet50-cifar10-last
# ```
#
# and, for the from-scratch side of the same question, `--weights none --unfreeze all` with a
# longer schedule. Expect the pretrained transformers in the mid-to-high 90s, and anything under
# ~90% to be a bug (the reports above).
#
# **Next:** [10_attention_maps.py](10_attention_maps.py) looks inside a trained ViT: where does
# its class token look?
