# %% [markdown]
# # 1. Images to patches
#
# A Vision Transformer reads an image the way a language model reads a sentence: as a sequence
# of tokens. The tokens are square patches of pixels, each flattened and multiplied by one
# shared matrix (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", eq. 1).
#
# **What you'll learn**
# - how one einops pattern cuts an image `[c, H, W]` into `(H/p)·(W/p)` patches of `p·p·c` numbers;
# - why the paper's "flatten, then `nn.Linear`" and every checkpoint's "`Conv2d` with
#   kernel = stride = p" are the *same* linear map, and how `tinyvit.vit.PatchEmbed` offers both;
# - how a conv kernel becomes a linear weight by a plain `rearrange`, and why the flattening
#   order `(p1 p2 c)` is the one that matters.
#
# Run it from the repository root: `python tutorials/01_patches.py`. Plots land in
# `tutorials/out/` (or in `$TINYVIT_TUTORIAL_OUT`).

# %%
import os
from pathlib import Path

import torch
from einops import rearrange
from matplotlib.figure import Figure

from tinyvit.vit import PatchEmbed, ViTConfig

# Figures are saved, not only shown: tutorials/out/ by default, $TINYVIT_TUTORIAL_OUT if set.
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook runs in tutorials/
OUT = Path(os.environ.get("TINYVIT_TUTORIAL_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% [markdown]
# ## An image, and its patches
#
# A synthetic 32×32 RGB image keeps this offline: a smooth colour gradient with a few shapes on
# it, so the patches are easy to tell apart. With patch size `p = 8` the image is a 4×4 grid of
# patches. The einops pattern names every axis, so it *is* the shape comment:
#
# $$x \in \mathbb{R}^{C \times H \times W} \;\to\; x_p \in \mathbb{R}^{N \times (P^2 C)},\qquad N = \frac{HW}{P^2}$$

# %%
size, p = 32, 8
ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
image = torch.stack([xs, ys, 1 - xs * ys])  # [c, H, W], values in [0, 1]
image[:, 4:12, 18:28] = torch.tensor([1.0, 0.9, 0.1])[:, None, None]  # a yellow bar
image[:, 20:29, 5:14] = torch.tensor([0.8, 0.1, 0.6])[:, None, None]  # a magenta square

patches = rearrange(image, "c (gh p1) (gw p2) -> (gh gw) (p1 p2 c)", p1=p, p2=p)
print(f"image {tuple(image.shape)} -> patches {tuple(patches.shape)}: "
      f"{patches.shape[0]} tokens of p*p*c = {p}*{p}*3 = {patches.shape[1]} numbers")
print("ViT-B/16 at 224 px: (224/16)^2 =", (224 // 16) ** 2, "patches of 16*16*3 =", 16 * 16 * 3, "numbers")

# %% [markdown]
# The picture below shows the image on the left and the same pixels on the right, cut into the
# 16 patches in the order the transformer reads them (row by row, `(gh gw)`).

# %%
grid = rearrange(patches, "(gh gw) (p1 p2 c) -> gh gw p1 p2 c", gh=size // p, p1=p, p2=p)
fig = Figure(figsize=(8, 4))
left, right = fig.subfigures(1, 2)
ax = left.subplots()
ax.imshow(rearrange(image, "c h w -> h w c").numpy())
ax.set_title(f"{size}x{size} image")
ax.axis("off")
axes = right.subplots(size // p, size // p)
for i in range(size // p):
    for j in range(size // p):
        axes[i, j].imshow(grid[i, j].numpy())
        axes[i, j].set_title(f"{i * (size // p) + j}", fontsize=7)
        axes[i, j].axis("off")
right.suptitle(f"{patches.shape[0]} patches of {p}x{p}")
fig.savefig(OUT / "01_patches.png", dpi=100)
print("saved", OUT / "01_patches.png")

# %% [markdown]
# ## Two views of one linear map
#
# The paper writes the embedding as `z = x_p E + b` with `E ∈ R^{(P²C) × D}`: flatten, multiply.
# A `Conv2d(C, D, kernel_size=P, stride=P)` visits the same non-overlapping patches and takes the
# same dot product of each with each of its `D` kernels. Official checkpoints (Google, timm,
# torchvision, Hugging Face) all store the conv kernel, shape `[D, C, P, P]`.
#
# `tinyvit.vit.PatchEmbed` has both: `patch_embed="conv"` (the checkpoint's form) and
# `patch_embed="linear"` (the paper's form, flattening in `(p1 p2 c)` order). Loading a conv
# state dict into the linear view runs `rearrange(w, "d c p1 p2 -> d (p1 p2 c)")` inside
# `PatchEmbed._load_from_state_dict`. Let's check they give the same numbers.

# %%
cfg = dict(image_size=size, patch_size=p, dim=64, depth=1, num_heads=2, mlp_dim=128)
conv = PatchEmbed(ViTConfig(**cfg, patch_embed="conv"))
linear = PatchEmbed(ViTConfig(**cfg, patch_embed="linear"))
print("conv   proj.weight", tuple(conv.proj.weight.shape), " (d, c, p1, p2), as checkpoints store it")
print("linear proj.weight", tuple(linear.proj.weight.shape), "     (d, p1*p2*c), the paper's E transposed")

linear.load_state_dict(conv.state_dict())  # the conv kernel, rearranged on the way in
batch = torch.stack([image, image.flip(-1), torch.rand(3, size, size)])  # [b, c, H, W]
with torch.no_grad():
    z_conv, z_linear = conv(batch), linear(batch)  # both [b, n, d]
print("tokens", tuple(z_conv.shape), " max |conv - linear| =", f"{(z_conv - z_linear).abs().max():.2e}")
assert torch.allclose(z_conv, z_linear, atol=1e-5)

# %% [markdown]
# ## The order that silently breaks
#
# Both `(p1 p2 c)` and `(c p1 p2)` are valid ways to flatten a patch, and a model trained from
# scratch learns happily with either. But the conv kernel maps onto a linear weight only when the
# weight is flattened in the same order as the pixels. If the pixels go `(p1 p2 c)` and the kernel
# goes `(c p1 p2)`, every shape still fits and nothing raises, yet the numbers are wrong:

# %%
w_wrong = rearrange(conv.proj.weight.detach(), "d c p1 p2 -> d (c p1 p2)")
with torch.no_grad():
    z_wrong = torch.nn.functional.linear(
        rearrange(batch, "b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)", p1=p, p2=p), w_wrong, conv.proj.bias
    )
print("kernel flattened (c p1 p2), pixels (p1 p2 c): max error =", f"{(z_wrong - z_conv).abs().max():.3f}",
      f"(tokens have std {z_conv.std():.3f})")
assert (z_wrong - z_conv).abs().max() > z_conv.std()  # an error as large as the signal itself

# %% [markdown]
# ## Cost
#
# The patch embedding has `P²·C·D + D` parameters: 590,592 for ViT-B/16 (`16·16·3·768 + 768`).
# Its output length `N = HW/P²` decides the cost of everything after it: attention grows with
# `N²` (tutorial 3), which is why small patches on large images get expensive fast.

# %%
for name, (img, patch, d) in {"ViT-B/16": (224, 16, 768), "ViT-B/32": (224, 32, 768), "ViT-B/16 @384": (384, 16, 768)}.items():
    n = (img // patch) ** 2
    print(f"{name:14s} N = {n:4d} patches, patch embedding {patch * patch * 3 * d + d:,} parameters")

# %% [markdown]
# **Next:** [02_embeddings.py](02_embeddings.py) adds the class token and the position embedding,
# without which the transformer could not tell one patch's place from another's.
