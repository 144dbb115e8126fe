# %% [markdown]
# # 14. Masked autoencoders: pretraining without labels
#
# Tutorial 11 ended with the ViT behind the ResNet on small data, and the study behind it says the
# ViT catches up once pretrained. Offline there are no pretrained weights, but there are the
# training images themselves. A masked autoencoder (He et al. 2022, "Masked Autoencoders Are
# Scalable Vision Learners"; facebookresearch/mae `models_mae.py`) hides most of the patches and
# learns to paint them back: no label is needed.
#
# **What you'll learn**
# - random masking as MAE codes it, in einops: `argsort` of noise, `gather`, and `ids_restore` to
#   undo the shuffle, run on `tinyvit.mae.random_masking`;
# - what the encoder sees (the visible quarter only) and what the decoder sees (visible tokens plus
#   one shared mask token per hidden patch, back in patch order, with fixed sin-cos positions);
# - the loss: mean squared error on the hidden patches only;
# - MAE's sin-cos table against big_vision's;
# - a short pretraining on the digits' training images, and its reconstructions.

# %%
import os
from pathlib import Path

import torch
from einops import rearrange, repeat
from matplotlib.figure import Figure

from tinyvit import data
from tinyvit.freeze import param_groups
from tinyvit.mae import MaskedAutoencoder, mae_loss, mae_sincos_2d, patchify, random_masking
from tinyvit.preprocess import Preprocess
from tinyvit.vit import ViTConfig, VisionTransformer, sincos_2d

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook runs in tutorials/
OUT = Path(os.environ.get("TINYVIT_TUTORIAL_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% [markdown]
# ## Masking by sorting noise
#
# Each image draws one uniform number per patch and sorts them: the patches with the smallest
# numbers stay. `argsort` of that order is its inverse, `ids_restore`. Here 8 "patches" whose
# values are their positions, so the shuffle is visible:

# %%
x = repeat(torch.arange(8.0), "n -> b n 1", b=2)  # [b, L, d] = [2, 8, 1]
noise = torch.rand(2, 8)
ids_shuffle = noise.argsort(dim=1)  # ascending: small noise is kept
ids_restore = ids_shuffle.argsort(dim=1)
keep = int(8 * (1 - 0.75))  # MAE's int(L * (1 - mask_ratio)): 2 of 8
visible = x.gather(1, repeat(ids_shuffle[:, :keep], "b k -> b k d", d=1))
print("shuffle order  ", ids_shuffle.tolist())
print("visible patches", visible[..., 0].long().tolist())
shuffled = x.gather(1, repeat(ids_shuffle, "b n -> b n d", d=1))
assert torch.equal(shuffled.gather(1, repeat(ids_restore, "b n -> b n d", d=1)), x)  # ids_restore undoes it
# the library's function does the same and also returns the binary mask (1 = hidden), in patch order
vis, mask, restore = random_masking(x, 0.75)
assert vis.shape == (2, 2, 1) and mask.sum(1).tolist() == [6.0, 6.0]
print("mask (1 = hidden)", mask.long().tolist())

# %% [markdown]
# ## What the encoder and the decoder see
#
# A digit at 16 px in 4x4 patches is 16 patches; the encoder runs on 4 of them and the class
# token, so it is about 3x cheaper than on all 17 tokens. The decoder gets the 4 encoded patches,
# 12 copies of one learned mask token, puts them back in patch order with `ids_restore` and adds
# fixed positions, so every mask token knows *where* it has to paint.

# %%
encoder = VisionTransformer(ViTConfig(image_size=16, patch_size=4, dim=64, depth=6, num_heads=4, mlp_dim=256,
                                      num_classes=0))
mae = MaskedAutoencoder(encoder, decoder_dim=64, decoder_depth=2, decoder_heads=4, mask_ratio=0.75)
imgs = torch.randn(2, 3, 16, 16)
latent, mask, ids_restore = mae.forward_encoder(imgs)
print("encoder output:", tuple(latent.shape), "(class token + 4 visible patches)")
pred = mae.forward_decoder(latent, ids_restore)
print("decoder output:", tuple(pred.shape), "(every patch: 4 x 4 pixels x 3 channels)")
assert latent.shape == (2, 5, 64) and pred.shape == (2, 16, 48)

# %% [markdown]
# ## The loss counts the hidden patches only
#
# The per-patch MSE is averaged over the hidden patches: what the decoder outputs for a visible
# patch costs nothing, so it spends its capacity on the ones it cannot see.

# %%
target = patchify(imgs, 4)
perfect_where_hidden = torch.where(mask[..., None] == 1, target, target + 100.0)
assert mae_loss(perfect_where_hidden, target, mask) == 0
print("loss of the untrained model:", f"{mae(imgs)[0].item():.3f}")

# %% [markdown]
# ## MAE's sin-cos positions
#
# Both MAE (`util/pos_embed.py`) and big_vision (`tinyvit.vit.sincos_2d`) give a quarter of the
# channels each to sin(x w), cos(x w), sin(y w), cos(y w). They differ in the frequencies:
# MAE's w_i = 1/10000^(i/(d/4)), big_vision's 1/10000^(i/(d/4 - 1)). The largest difference:

# %%
diff = (mae_sincos_2d(4, 64) - sincos_2d(4, 64)).abs().max().item()
print(f"largest difference between the two tables (4x4 grid, d = 64): {diff:.3f}")
assert diff > 0.01

# %% [markdown]
# ## A short pretraining on the digits
#
# The 1,347 training images of scikit-learn's digits, labels thrown away, at 16 px; MAE's optimiser
# (AdamW, betas 0.9 and 0.95, weight decay 0.05 on matrices). Twelve epochs here, to stay under a
# minute; `python -m tinyvit.pretrain` runs the whole recipe (warm-up and cosine, a figure per epoch,
# resumable), and `make levers` measures whether it helps the classifier.

# %%
splits = data.load_splits("digits")
pre = Preprocess(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", None)  # to 16 px, pixels to [-1, 1]
tf = data.transforms(pre, True, False, source_size=8)[1]
images = torch.stack([tf(splits.train[i][0]) for i in range(len(splits.train))])  # [1347, 3, 16, 16]
opt = torch.optim.AdamW(param_groups(mae, 0.05, skip=set()), lr=1.5e-3, betas=(0.9, 0.95))  # MAE decays the tokens too
losses = []
for epoch in range(12):
    order = torch.randperm(len(images))
    total = 0.0
    for i in range(0, len(images), 128):
        loss = mae(images[order[i:i + 128]])[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * len(order[i:i + 128])
    losses.append(total / len(images))
print("MAE loss per epoch:", " ".join(f"{l:.3f}" for l in losses))
assert losses[-1] < 0.8 * losses[0]  # it learns to paint digits

# %%
mae.eval()
masked, pasted, original = mae.reconstruct(images[:6], torch.Generator().manual_seed(0))
fig = Figure(figsize=(9, 4.6))
axes = fig.subplots(3, 6)
for col in range(6):
    for row, (title, im) in enumerate((("masked", masked), ("reconstruction", pasted), ("original", original))):
        ax = axes[row][col]
        ax.imshow(rearrange((im[col] * 0.5 + 0.5).clamp(0, 1), "c h w -> h w c").numpy(), interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        if col == 0:
            ax.set_ylabel(title, fontsize=9)
fig.suptitle(f"MAE on the digits after {len(losses)} epochs: 75% of the patches hidden (loss {losses[-1]:.3f})")
fig.tight_layout()
fig.savefig(OUT / "14_mae.png", dpi=100)
print("saved", OUT / "14_mae.png")

# %% [markdown]
# **Reading it.** After a dozen epochs the decoder already puts strokes where strokes continue from
# the visible patches; the hidden half of a digit is guessed from its visible quarter. Whether that
# makes a better classifier from 67 labels is the question `make levers` answers (the encoder is a
# tinyvit ViT: `python -m tinyvit.finetune --weights PRETRAIN_RUN` gives it a head, MAE's mean
# pooling into a new `fc_norm`, and `--layer-decay`). Its answer (studies/digits-levers, 3 seeds,
# 100 pretraining epochs): +2.3 points at 67 labels (90.15 against 87.85 %) and the one ViT arm level
# with ResNet-18 on all 1,347 (99.63 against 99.04 %).
#
# Next: [15_locality.py](15_locality.py), the other lever: building locality into the ViT itself.
