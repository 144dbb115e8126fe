# %% [markdown]
# # 16. FDViT: shrinking the token grid by a non-integer stride
#
# A hierarchical ViT spends less compute by shrinking its token grid between stages. PiT (Heo et
# al. 2021) does it with a stride-2 depthwise convolution: 27 x 27 tokens become 14 x 14, then
# 7 x 7, each step throwing away three quarters of the tokens. FDViT (Xu et al., ICCV 2023,
# "FDViT: Improve the Hierarchical Architecture of Vision Transformer"; official code
# `AMD-AIG-AIMA/AMD_FDViT`) takes smaller steps: its flexible downsampling (FD) layer resamples the
# grid bilinearly to any smaller side, 27 -> 19 -> 14 -> 10 -> 7, so each of its five stages keeps
# about half the tokens of the one before, and a masked-autoencoder loss trains those layers to lose
# little.
#
# **What you'll learn**
# - the FD layer: `F.grid_sample` on a `linspace(-1, 1)` grid with the corners aligned, which input
#   points feed each output token at a stride of 1.44, and why it is exactly `F.interpolate`;
# - the token counts per stage, 729 -> 361 -> 196 -> 100 -> 49, against PiT's 729 -> 196 -> 49;
# - the FLOP arithmetic both ways: FDViT's published 0.6 / 2.8 / 11.9 G are the multiply-adds of
#   its layers alone; with the attention products FDViT-Ti costs 0.82 G, more than PiT-Ti's 0.70 G
#   counted the same way;
# - the masked reconstruction that trains the FD layers, and how `tinyvit.finetune` runs it.

# %%
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

import tinyvit
from tinyvit.fdvit import FDLayer, FDViT, FDViTConfig, fdvit_flops, stage_grids
from tinyvit.flops import hooked_flops
from tinyvit.presets import PRESETS

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook runs in tutorials/
OUT = Path(os.environ.get("TINYVIT_TUTORIAL_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% [markdown]
# ## The FD layer is a bilinear resampling with the corners aligned
#
# The official `bilinear_conv_pooling` normalises the tokens, lays them out as an h x h map and
# calls `F.grid_sample` with a grid of `linspace(-1, 1, s)` in both directions and
# `align_corners=True`. There -1 and +1 are the centres of the first and last input pixels, so
# output pixel j samples the input at coordinate
#
# $$x_j = \frac{j\,(h-1)}{s-1},$$
#
# a stride of (h - 1) / (s - 1): 26 / 18 = 1.44 from 27 to 19. Each output token is a bilinear mix
# of the four input tokens around x_j, with weights given by the fractional parts. Then a 3x3
# convolution changes the width. That is `F.interpolate(mode="bilinear", align_corners=True)`,
# which is what `tinyvit.fdvit.FDLayer` calls; here it is checked against the official formulation.

# %%
h, s, c = 27, 19, 8
d = torch.linspace(-1, 1, s)
meshx, meshy = torch.meshgrid(d, d, indexing="ij")
grid = torch.stack((meshy, meshx), dim=2)  # grid[i, j] = (x = d[j], y = d[i]), as the official code builds it
layer = FDLayer(c, 4, out_side=s).eval()
tokens = torch.randn(1, h * h, c)
with torch.no_grad():
    normed = F.layer_norm(tokens, (c,), layer.ln.weight, layer.ln.bias, 1e-5).transpose(1, 2).reshape(1, c, h, h)
    official = layer.conv(F.grid_sample(normed, grid[None], align_corners=True))
    ours = layer(tokens, h)
print(f"FD layer vs the official grid_sample: max |diff| = {(ours - official).abs().max():.2e}")
assert torch.allclose(ours, official, atol=1e-5)

coords = (d + 1) / 2 * (h - 1)  # input coordinate of each output column
stride = (h - 1) / (s - 1)
print(f"stride {stride:.3f}; output columns 0..4 read input x =", [round(float(x), 2) for x in coords[:5]])
assert torch.allclose(coords, torch.arange(s) * stride)

# %% [markdown]
# The picture: the 27 x 27 input tokens (grey), the 19 x 19 sampling points (orange), and for one
# output token the four input tokens it mixes, with their bilinear weights.

# %%
fig = Figure(figsize=(15, 4.6))
ax = fig.add_subplot(1, 3, 1)
yy, xx = torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij")
ax.scatter(xx.flatten(), yy.flatten(), s=6, color="0.6", label="input tokens (27 x 27)")
sy, sx = torch.meshgrid(coords, coords, indexing="ij")
ax.scatter(sx.flatten(), sy.flatten(), s=10, color="C1", label="sampling points (19 x 19)")
i, j = 5, 7  # one output token
y, x = float(coords[i]), float(coords[j])
x0, y0 = math.floor(x), math.floor(y)
for dy in (0, 1):
    for dx in (0, 1):
        w = (1 - abs(x - (x0 + dx))) * (1 - abs(y - (y0 + dy)))
        ax.plot([x, x0 + dx], [y, y0 + dy], color="C3", lw=1)
        ax.annotate(f"{w:.2f}", (x0 + dx, y0 + dy), fontsize=7, color="C3", xytext=(3, 3), textcoords="offset points")
ax.scatter([x], [y], s=40, color="C3", zorder=3, label=f"output ({i}, {j}) and its 4 inputs")
ax.set(xlim=(-0.5, 14.5), ylim=(14.5, -0.5), aspect="equal", title=f"FD layer 27 -> 19: stride {stride:.2f}")
ax.legend(fontsize=7, loc="lower right")

# %% [markdown]
# ## Tokens per stage
#
# FDViT's grids follow one rule (`tinyvit.fdvit.stage_grids`): the overlapping patch conv gives
# W0 = (224 - 16) / 8 + 1 = 27, and stage s has round(W0 / 2^(s/2)) tokens a side. At 224 px this is
# the official `out_size` of all three presets. PiT-Ti starts from the same 27 x 27 and halves the
# side twice with a stride-2, padding-1, 3x3 depthwise conv: (27 + 2 - 3) / 2 + 1 = 14, then 7.

# %%
fd = stage_grids(224, 16, 8)
pit = [27]
for _ in range(2):
    pit.append((pit[-1] + 2 - 3) // 2 + 1)
print("FDViT grids", fd, "tokens", [g * g for g in fd])
print("PiT   grids", pit, "tokens", [g * g for g in pit])
assert [g * g for g in fd] == [729, 361, 196, 100, 49] and [g * g for g in pit] == [729, 196, 49]
assert fd == tinyvit.create_model("fdvit_ti").cfg.grids
assert stage_grids(224, 14, 7) == [31, 22, 16, 11, 8]  # FDViT-B's official out_size

ax = fig.add_subplot(1, 3, 2)
ax.bar([k - 0.2 for k in range(5)], [g * g for g in fd], width=0.4, label="FDViT (5 stages)")
ax.bar([k + 0.2 for k in (0, 2, 4)], [g * g for g in pit], width=0.4, label="PiT (3 stages)")
for k, g in enumerate(fd):
    ax.text(k - 0.2, g * g + 10, str(g * g), ha="center", fontsize=7)
ax.set(xticks=range(5), xlabel="stage (PiT's at the FDViT stage of equal grid)", ylabel="tokens", title="tokens per stage")
ax.legend(fontsize=8)

# %% [markdown]
# ## FLOPs, counted both ways
#
# Per block with n tokens of width d (one multiply-add, MAC): qkv 3nd², projection nd², MLP 8nd², the
# depthwise LePE conv 9nd; the attention products q kᵀ and P v add 2n²d. Add the patch conv, the FD
# layers' 3x3 convs and the head. `fdvit_flops` counts FLOPs (2 per MAC, as all of `tinyvit.flops`).
# The official `main.py` measures with ptflops' module hooks, which see convolutions and linear
# layers, not the attention products: the layers-only column reproduces the published numbers.

# %%
print(f"{'':9s} {'layers only':>12s} {'+ attention':>12s} {'published':>10s}   (G multiply-adds at 224 px)")
published = {"fdvit_ti": 0.6, "fdvit_s": 2.8, "fdvit_b": 11.9}
for name, pub in published.items():
    cfg = FDViTConfig(**PRESETS[name]["config"])
    layers, total = fdvit_flops(cfg, attention_matmuls=False) / 2e9, fdvit_flops(cfg) / 2e9
    print(f"{name:9s} {layers:12.3f} {total:12.3f} {pub:10.1f}")
    assert round(layers, 1) == pub
model = FDViT(FDViTConfig(**PRESETS["fdvit_ti"]["config"])).eval()
hooked = hooked_flops(model, torch.zeros(1, 3, 224, 224))  # what module hooks see
assert hooked == fdvit_flops(model.cfg, attention_matmuls=False)
print(f"module hooks on FDViT-Ti: {hooked / 2e9:.3f} G multiply-adds, the layers-only count")

# %% [markdown]
# PiT-Ti counted the same way (naver-ai/pit `pit.py`: patch 16, stride 8, base_dims 32, heads 2, 4, 8,
# depth 2, 6, 4, a class token, stride-2 depthwise pooling that doubles the width, plus a Linear for
# the class token): its README's 0.71 G matches the count *with* the attention products.

# %%
def pit_macs(attention):
    widths, depth, grids = [64, 128, 256], [2, 6, 4], [27, 14, 7]
    macs = grids[0] ** 2 * widths[0] * 3 * 16 * 16 + widths[-1] * 1000
    for st, (w, blocks, g) in enumerate(zip(widths, depth, grids)):
        n = g * g + 1  # + the class token
        macs += blocks * (12 * n * w * w + (2 * n * n * w if attention else 0))
        if st + 1 < len(widths):
            macs += grids[st + 1] ** 2 * widths[st + 1] * 9 + w * widths[st + 1]
    return macs / 1e9


fd_ti = FDViTConfig(**PRESETS["fdvit_ti"]["config"])
print(f"PiT-Ti  : {pit_macs(False):.3f} G layers only, {pit_macs(True):.3f} G with attention (README: 0.71)")
print(f"FDViT-Ti: {fdvit_flops(fd_ti, attention_matmuls=False) / 2e9:.3f} G layers only, "
      f"{fdvit_flops(fd_ti) / 2e9:.3f} G with attention (README: 0.6)")
assert round(pit_macs(True), 1) == 0.7 and fdvit_flops(fd_ti) / 2e9 > pit_macs(True)

# %% [markdown]
# So the paper's table sets FDViT counted without the attention products beside PiT counted with
# them. Like for like, FDViT-Ti costs 0.82 G against PiT-Ti's 0.70 G: its five stages keep more
# tokens longer, and attention's n² term grows with them. Per stage, for FDViT-Ti:

# %%
cfg = model.cfg
per_stage_layers, per_stage_attn = [], []
for st, (w, blocks, g) in enumerate(zip(cfg.widths, cfg.depth, cfg.grids)):
    n = g * g
    per_stage_layers.append(blocks * (12 * n * w * w + 9 * n * w) / 1e6)
    per_stage_attn.append(blocks * 2 * n * n * w / 1e6)
    print(f"stage {st}: {n:4d} tokens x {w:3d} wide, {blocks} blocks: layers {per_stage_layers[-1]:6.1f} M, "
          f"attention {per_stage_attn[-1]:6.1f} M multiply-adds")
assert per_stage_attn[0] > per_stage_attn[-1] * 50  # the first stage's 729² dominates the attention cost
ax = fig.add_subplot(1, 3, 3)
ax.bar(range(5), per_stage_layers, label="layers (convs, linears)")
ax.bar(range(5), per_stage_attn, bottom=per_stage_layers, label="attention products")
ax.set(xlabel="stage", ylabel="M multiply-adds per image", title="FDViT-Ti blocks, per stage")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "16_fdvit.png", dpi=100)
print("saved", OUT / "16_fdvit.png")

# %% [markdown]
# ## The masked reconstruction that trains the FD layers
#
# In training only, for each FD layer: whole tokens of the stage output xt are zeroed with
# probability p (the others scaled by 1 / (1 - p)), the same FD layer downsamples the masked map, and
# a decoder (3x3 conv back to the stage width, bilinear upsampling) rebuilds the whole xt, not
# detached; the loss is cross-entropy + ratio x the mean MSE over the FD layers (official: ratio
# 0.03, p = 0.2). In tinyvit the decoders exist only while they train (`set_reconstruction`), a
# training forward stores each MSE, and `auxiliary_loss()` hands the mean to the trainer; in eval
# the forward returns logits only, and `save_pretrained` writes the model without decoders.

# %%
small = FDViT(FDViTConfig(image_size=32, patch_size=4, stride=2, base_dims=(8, 6, 5, 6, 4),
                          heads=(1, 2, 3, 2, 4), depth=(1, 1, 1, 1, 1), num_classes=10))
small.set_reconstruction(0.2).train()
images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
logits = small(images)
ce, recon = F.cross_entropy(logits, labels), small.auxiliary_loss()
print(f"cross-entropy {ce.item():.3f}, reconstruction MSE {recon.item():.3f}, loss {(ce + 0.03 * recon).item():.3f}")
small.eval()
assert small(images).shape == (8, 10) and small.auxiliary_loss() is None  # eval: no decoder runs
print(f"parameters with decoders {sum(p.numel() for p in small.parameters()):,}; saved without them: "
      f"{sum(v.numel() for v in small.inference_state()[1].values()):,}")

# %% [markdown]
# From the command line, `--fd-ratio` turns it on (the run log prints the FLOPs both ways, and
# metrics.jsonl gets `train_cls_loss` and `train_recon_loss`):
#
# ```bash
# python -m tinyvit.finetune --model fdvit_ti --weights none --unfreeze all --fd-ratio 0.03 --fd-mask 0.2 ...
# ```
#
# `--unfreeze last` trains the last stage, the final norm and the head; the last stage has no FD
# layer, so no reconstruction runs there.
#
# **Not measured here.** The issue behind this lesson also asked for accuracy at matched FLOPs
# against an isotropic ViT and stride-2 pooling on the digits; that comparison has not been run yet,
# so this lesson makes no accuracy claim. The published one is ImageNet at 224 px: FDViT-Ti 73.74%,
# PiT-Ti 73.0% (README of each repository).
#
# Two ways of spending fewer tokens are now behind us: learned ones ([13_token_learner.py](13_token_learner.py))
# and non-integer downsampling (this one). Last, out into the Hugging Face ecosystem:
# [17_hf_trainer.py](17_hf_trainer.py) fine-tunes an exported run with `transformers.Trainer`.
