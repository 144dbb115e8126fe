# %% [markdown]
# # 2. Embeddings: the class token and where each patch sits
#
# Tutorial 1 turned an image into `N` patch tokens. Two things are still missing before the
# transformer can use them: a token whose output summarises the image (the class token), and a
# sense of *where* each patch came from (the position embedding).
#
# **What you'll learn**
# - what `VisionTransformer.embed` builds: `[cls, patch_1, …, patch_N] + positions`;
# - why positions are needed at all: without them a transformer sees a *bag* of patches, and
#   shuffling the image does not change its answer (we check this numerically);
# - learned positions (the ViT paper) against fixed 2-D sin-cos positions
#   (`tinyvit.vit.sincos_2d`, as big_vision and MAE), with the similarity plot of the ViT
#   paper's Fig. 7;
# - how a position embedding is resampled for another image size (`model.set_image_size`).

# %%
import os
from pathlib import Path

import torch
from einops import rearrange
from matplotlib.figure import Figure

from tinyvit.vit import ViTConfig, VisionTransformer, sincos_2d

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook runs in tutorials/
OUT = Path(os.environ.get("TINYVIT_TUTORIAL_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% [markdown]
# ## The class token
#
# The paper (eq. 1) prepends one learned vector, `x_class`, to the patch tokens, and adds a
# position embedding to every token:
#
# $$z_0 = [x_\text{class};\, x_p^1 E;\, \dots;\, x_p^N E] + E_\text{pos},\qquad E_\text{pos} \in \mathbb{R}^{(N+1) \times D}$$
#
# After the last block, the head reads only token 0. Attention lets that token gather whatever it
# needs from the patches, so it ends up as the image summary. `embed` is the whole of eq. 1:

# %%
tiny = dict(image_size=32, patch_size=8, dim=64, depth=2, num_heads=2, mlp_dim=128, num_classes=10)
model = VisionTransformer(ViTConfig(**tiny)).eval()
x = torch.rand(2, 3, 32, 32)  # [b, c, H, W]
with torch.no_grad():
    tokens = model.embed(x)
print("cls_token", tuple(model.cls_token.shape), " pos_embed", tuple(model.pos_embed.shape))
print("embed(x)", tuple(tokens.shape), "= [b, 1 + (32/8)^2, d]")
# Token 0 is the class token plus its position, identical for every image in the batch:
assert torch.allclose(tokens[0, 0], tokens[1, 0]) and torch.allclose(tokens[0, 0], (model.cls_token + model.pos_embed[:, 0])[0, 0])

# %% [markdown]
# ## Without positions, a bag of patches
#
# Self-attention and the MLP treat every token alike: permute the input tokens and the outputs
# come out permuted the same way (the operation is *permutation-equivariant*). The class token
# pools over all of them, so its output does not change at all. A ViT with no position embedding
# therefore gives the same logits for an image and for the same image with its patches shuffled.
#
# We cut the image into patches, shuffle them, and sew the image back together; then compare the
# logits of a model whose position embedding is zero with one that has sin-cos positions.

# %%
def shuffle_patches(images: torch.Tensor, patch: int, perm: torch.Tensor) -> torch.Tensor:
    """Images [b, c, H, W] with their patches put in the order `perm` (a jigsaw)."""
    g = images.shape[-1] // patch
    p = rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) c p1 p2", p1=patch, p2=patch)
    return rearrange(p[:, perm], "b (gh gw) c p1 p2 -> b c (gh p1) (gw p2)", gh=g, gw=g)


perm = torch.randperm(16)
shuffled = shuffle_patches(x, 8, perm)

no_pos = VisionTransformer(ViTConfig(**tiny)).eval()
with torch.no_grad():
    no_pos.pos_embed.zero_()
with_pos = VisionTransformer(ViTConfig(**tiny, pos_embed="sincos")).eval()

with torch.no_grad():
    d_no_pos = (no_pos(x) - no_pos(shuffled)).abs().max().item()
    d_with_pos = (with_pos(x) - with_pos(shuffled)).abs().max().item()
print(f"no positions:     max |logits(image) - logits(shuffled)| = {d_no_pos:.1e}  (the same, up to rounding)")
print(f"sin-cos positions: max |logits(image) - logits(shuffled)| = {d_with_pos:.1e}")
assert d_no_pos < 1e-5 and d_with_pos > 100 * max(d_no_pos, 1e-7)

# %% [markdown]
# ## Learned or fixed positions
#
# The ViT paper learns `E_pos` from scratch (initialised with a truncated normal, std 0.02, as
# timm does) and found 1-D learned positions as good as 2-D-aware ones (its Appendix D.4): the
# model learns the 2-D layout itself. big_vision and MAE use a *fixed* 2-D sin-cos table
# instead. A quarter of the `D` channels encodes each of `sin(x ω_i)`, `cos(x ω_i)`,
# `sin(y ω_i)`, `cos(y ω_i)` with frequencies
#
# $$\omega_i = T^{-i/(D/4 - 1)},\qquad i = 0, \dots, D/4 - 1,\quad T = 10000.$$
#
# Because `sin a sin b + cos a cos b = cos(a - b)`, the dot product of two positions is
# `Σ_i cos((x - x')ω_i) + Σ_i cos((y - y')ω_i)`: it depends only on the *offset* between them.
# We check that on the 14×14 grid of ViT-B/16 (`D = 768`).

# %%
g, d = 14, 768
pos = sincos_2d(g, d)  # [(gh gw), d]
print("sincos_2d(14, 768):", tuple(pos.shape))
gram = rearrange(pos @ pos.T, "(y x) (y2 x2) -> y x y2 x2", y=g, y2=g)
# Every pair of positions with offset (dy, dx) = (2, 3) has the same dot product:
same_offset = torch.stack([gram[y, x, y + 2, x + 3] for y in range(g - 2) for x in range(g - 3)])
print(f"dot products at offset (2, 3): spread {same_offset.max() - same_offset.min():.1e} around {same_offset.mean():.2f}")
assert same_offset.max() - same_offset.min() < 1e-3

# %% [markdown]
# The ViT paper's Fig. 7 (centre) plots, for every patch position, the cosine similarity of its
# embedding with all the others: one small 14×14 map per position, laid out on the 14×14 grid.
# Trained learned embeddings show a bright spot at the position itself, with rows and columns
# lighting up. The sin-cos table has that structure by construction; a learned table at
# initialisation has none (it is noise until trained).
#
# With network access you can draw the trained one too:
# `tinyvit.create_model("vit_base_patch16_224", pretrained=True).pos_embed[0, 1:]` (the first
# row is the class token's slot, which has no place on the grid).

# %%
def similarity_mosaic(table: torch.Tensor, g: int) -> torch.Tensor:
    """[(gh gw), d] -> one image of g x g tiles; tile (i, j) is the cosine similarity of
    position (i, j) with every position, separated by a one-pixel NaN gap (drawn blank)."""
    t = torch.nn.functional.normalize(table.float(), dim=-1)
    sim = rearrange(t @ t.T, "(y x) (y2 x2) -> y x y2 x2", y=g, y2=g)
    sim = torch.nn.functional.pad(sim, (0, 1, 0, 1), value=float("nan"))
    return rearrange(sim, "y x y2 x2 -> (y y2) (x x2)")


learned_init = VisionTransformer(ViTConfig(dim=d, depth=1, num_heads=12, mlp_dim=4)).pos_embed[0, 1:].detach()
fig = Figure(figsize=(10, 5), layout="constrained")
axes = fig.subplots(1, 2)
for ax, (title, table) in zip(axes, [("2-D sin-cos (tinyvit.vit.sincos_2d)", pos),
                                     ("learned, at initialisation", learned_init)]):
    # Each panel gets its own colour range: the many slow sin-cos frequencies keep every
    # similarity high, and a shared -1..1 scale would wash its structure out.
    im = ax.imshow(similarity_mosaic(table, g).numpy(), cmap="viridis")
    ax.set_title(title)
    ax.axis("off")
    fig.colorbar(im, ax=ax, shrink=0.7, label="cosine similarity")
fig.suptitle("Position embedding similarity, 14x14 grid (ViT paper Fig. 7, centre)")
fig.savefig(OUT / "02_position_similarity.png", dpi=100)
print("saved", OUT / "02_position_similarity.png")

# %% [markdown]
# ## Another image size
#
# Fine-tuning at 384 px instead of 224 px gives a 24×24 grid, 577 tokens instead of 197. A
# sin-cos table is simply recomputed for the new grid. A learned table is treated as a
# `D`-channel 14×14 image and resampled (bicubic) to 24×24; the class token's slot is kept as
# it is. `model.set_image_size` does either. Resampling is a starting point, not a finished
# model: fine-tune afterwards (going from 384 to 224 px without it cost 9.5 points of top-1 in
# google-research/vision_transformer#6).

# %%
for kind in ("learned", "sincos"):
    m = VisionTransformer(ViTConfig(dim=64, depth=1, num_heads=2, mlp_dim=128, pos_embed=kind))
    before = tuple(m.pos_embed.shape)
    cls_slot = m.pos_embed[0, 0].clone()
    m.set_image_size(384)
    print(f"{kind:8s} pos_embed {before} -> {tuple(m.pos_embed.shape)}")
    assert m.pos_embed.shape[1] == 1 + 24 * 24 and torch.equal(m.pos_embed[0, 0], cls_slot)

# %% [markdown]
# **Next:** [03_attention.py](03_attention.py) opens the block that mixes these tokens:
# self-attention, by hand, and what it costs as `N` grows.
