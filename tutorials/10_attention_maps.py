# %% [markdown]
# # 10. What the model looks at: attention maps and attention rollout
#
# Every block's attention matrix says, for each token, how much of every other token it mixed
# in. The class token's row is the obvious thing to draw: which patches did the summary of the
# image come from?
#
# **What you'll learn**
# - `model.attention_maps(x)`: the `[b, h, n, n]` probabilities of every block, and why they
#   need the explicit (unfused) attention path;
# - attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"):
#   average the heads, add the identity for the residual, renormalise, multiply through layers;
# - what these maps show and what they don't, on a tiny ViT that we train in a few seconds on a
#   synthetic task where we *know* where the evidence is.
#
# With network access, the same code runs on real weights and photos:
# ```python
# from tinyvit.data import load_image  # RGB, 16-bit greyscale scaled rather than clipped
# model = tinyvit.create_model("vit_base_patch16_224", pretrained=True).eval()
# x = model.preprocess.eval_transform()(load_image("cat.jpg"))[None]
# maps = model.attention_maps(x)  # 12 tensors of [1, 12, 197, 197]
# ```

# %%
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from matplotlib.figure import Figure

from tinyvit.vit import ViTConfig, VisionTransformer

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook runs in tutorials/
OUT = Path(os.environ.get("TINYVIT_TUTORIAL_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% [markdown]
# ## A task with a known answer
#
# Each 32×32 image is colourful noise with one 8×8 square pasted at a random place. The square
# is red (class 0) or green (class 1). Only the square's pixels carry the label, so a model that
# solved the task *should* draw its class token from the square's patches. That gives us
# something to check the maps against; a random photo would not.

# %%
SIZE, PATCH, SQUARE = 32, 4, 8
COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1]])  # class 0 red, class 1 green


def squares(batch: int, generator: torch.Generator):
    """Images [b, 3, 32, 32], labels [b], and the square's pixel mask [b, 32, 32]."""
    images = torch.rand(batch, 3, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, 2, (batch,), generator=generator)
    corners = torch.randint(0, SIZE - SQUARE + 1, (batch, 2), generator=generator)
    mask = torch.zeros(batch, SIZE, SIZE, dtype=torch.bool)
    for i, (y, x) in enumerate(corners.tolist()):
        mask[i, y : y + SQUARE, x : x + SQUARE] = True
    images = torch.where(mask[:, None], COLOURS[labels][:, :, None, None], images)
    return images, labels, mask


cfg = ViTConfig(image_size=SIZE, patch_size=PATCH, dim=64, depth=3, num_heads=4, mlp_dim=128, num_classes=2)
model = VisionTransformer(cfg)
test_x, test_y, test_mask = squares(256, torch.Generator().manual_seed(1))
print(f"{cfg.grid_size}x{cfg.grid_size} patches + class token = {cfg.grid_size**2 + 1} tokens, {cfg.depth} blocks")

# %% [markdown]
# ## Attention maps
#
# `attention_maps(x)` runs the model block by block and asks each block's attention for its
# `attention_map`, the explicit `softmax(Q Kᵀ/√d)`, that is `P`. A fused kernel (tutorial 6) never
# writes `P` to memory, so it cannot return it; this is why timm, Hugging Face and PyTorch's
# SDPA return no attention weights on their fast paths (pytorch/pytorch#98505,
# huggingface/transformers#30978, jacobgil/vit-explain#23).
#
# We keep the maps of the model before training, to compare with after.

# %%
untrained = model.eval().attention_maps(test_x)  # the same model, before any training
print("attention_maps:", len(untrained), "blocks of", tuple(untrained[0].shape), "= [b, h, n, n]")
assert torch.allclose(untrained[0].sum(-1), torch.ones(()))  # every row is a distribution

# %% [markdown]
# ## Train for a few seconds
#
# AdamW, 100 steps of 64 fresh images each; the task is easy, and the point is the maps.

# %%
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
generator = torch.Generator().manual_seed(0)
start = time.perf_counter()
model.train()
for step in range(100):
    x, y, _ = squares(64, generator)
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 30 == 0 or step == 99:
        print(f"step {step:3d}  loss {loss.item():.4f}")
model.eval()
with torch.no_grad():
    accuracy = (model(test_x).argmax(-1) == test_y).float().mean().item()
print(f"test accuracy {accuracy:.1%} after {time.perf_counter() - start:.1f} s")
assert accuracy > 0.95

# %% [markdown]
# ## Attention rollout
#
# The last block's class-token row says where the class token looked *in that block*, but by
# then every token is already a mixture of others. Abnar & Zuidema (2020) follow the mixing
# through the layers. For each block `l`:
#
# 1. average the heads: `Ā_l = mean_h A_l` (`n × n`);
# 2. account for the residual connection, which carries each token's own value past attention:
#    `Â_l = ½ Ā_l + ½ I`;
# 3. renormalise each row to sum to 1;
#
# then multiply through the layers, `R = Â_L · … · Â_2 · Â_1`. Row 0 of `R`, over the patch
# tokens, is how much of each input patch ended up in the final class token.

# %%
def rollout(maps: list[torch.Tensor]) -> torch.Tensor:
    """Attention maps of every block, each [b, h, n, n] -> rollout R [b, n, n]."""
    n = maps[0].shape[-1]
    eye = torch.eye(n)
    R = repeat(eye, "n m -> b n m", b=maps[0].shape[0])
    for A in maps:  # first block first: R_l = Â_l R_{l-1}
        A = 0.5 * A.mean(dim=1) + 0.5 * eye  # [b, n, n]: heads averaged, residual added
        A = A / A.sum(dim=-1, keepdim=True)
        R = A @ R
    return R


def cls_to_patches(M: torch.Tensor) -> torch.Tensor:
    """Row 0 (the class token) over the patch tokens, renormalised, as a grid [b, gh, gw]."""
    row = M[:, 0, 1:]
    row = row / row.sum(dim=-1, keepdim=True)
    return rearrange(row, "b (gh gw) -> b gh gw", gh=cfg.grid_size)


trained = model.attention_maps(test_x)
# The fraction of each image's square inside each patch; the square covers 1/16 of the image.
square_in_patch = reduce(test_mask.float(), "b (gh p1) (gw p2) -> b gh gw", "mean", p1=PATCH, p2=PATCH)
area = square_in_patch.sum((1, 2)) / square_in_patch[0].numel()


def share_on_square(grid: torch.Tensor, images=slice(None)) -> float:
    """Mean share of the class token's attention (a [b, gh, gw] grid) that lands on the square."""
    return (grid * square_in_patch)[images].sum((1, 2)).mean().item()


red, green = test_y == 0, test_y == 1
print(f"share of the class token's attention on the square (the square is {area.mean():.1%} of the image):")
print(f"  {'':22s} {'all':>6s} {'red':>6s} {'green':>6s}")
shares = {}
for label, maps in [("untrained", untrained), ("trained", trained)]:
    for name, grid in [("last block", cls_to_patches(maps[-1].mean(1))), ("rollout", cls_to_patches(rollout(maps)))]:
        shares[label, name] = [share_on_square(grid, which) for which in (slice(None), red, green)]
        print(f"  {label:9s} {name:12s} " + " ".join(f"{v:6.1%}" for v in shares[label, name]))
assert shares["trained", "rollout"][0] > 2 * shares["untrained", "rollout"][0]
assert min(shares["trained", "rollout"][1:]) > area.mean()  # more than the square's area in both classes

# %% [markdown]
# Untrained, the class token spreads its attention almost evenly, so the share on the square is
# about its area. Trained, it concentrates on the square. Split by class, this model's last
# block looks hard at red squares and hardly at green ones: a two-class problem can be solved by
# looking for one colour only, and nothing asked the model to attend to evidence it does not
# need. The rollout, which also counts what the earlier blocks gathered, still leans towards the
# square in both classes. One block's map is not the whole story. The plot shows a few test
# images with the last block's class-token attention and the rollout, upsampled to pixels.

# %%
rolled = cls_to_patches(rollout(trained))
last = cls_to_patches(trained[-1].mean(1))
shown = range(4)


def to_pixels(grid: torch.Tensor):
    """A [gh, gw] grid of patch values as a [H, W] image: each patch's value over its pixels."""
    return repeat(grid, "gh gw -> (gh p1) (gw p2)", p1=PATCH, p2=PATCH).numpy()


fig = Figure(figsize=(7.5, 2.2 * len(shown)), layout="constrained")
axes = fig.subplots(len(shown), 3)
for row, i in enumerate(shown):
    axes[row, 0].imshow(rearrange(test_x[i], "c h w -> h w c").numpy())
    axes[row, 0].set_title("red" if test_y[i] == 0 else "green", fontsize=8)
    axes[row, 1].imshow(to_pixels(last[i]), cmap="inferno")
    axes[row, 2].imshow(rearrange(test_x[i], "c h w -> h w c").numpy())
    axes[row, 2].imshow(to_pixels(rolled[i]), cmap="inferno", alpha=0.7)
    for ax in axes[row]:
        ax.axis("off")
fig.suptitle("class-token attention: image | last block | rollout", fontsize=10)
fig.savefig(OUT / "10_attention_maps.png", dpi=100)
print("saved", OUT / "10_attention_maps.png")

# %% [markdown]
# ## What these maps are, and are not
#
# - Rollout assumes attention mixes values linearly and equally across heads, and that the
#   residual counts as much as attention (the ½). It ignores the MLPs and the value vectors'
#   sizes. It is a heuristic for *where information flowed*, not a proof of what the decision
#   rests on.
# - It is class-agnostic: the same map whatever class you ask about. Gradient-weighted variants
#   (Chefer et al. 2021, "Transformer Interpretability Beyond Attention Visualization") address
#   that.
# - Large pretrained ViTs develop a few high-norm "artifact" tokens in background patches that
#   soak up attention (Darcet et al. 2024, "Vision Transformers Need Registers", who add register
#   tokens to absorb them); their maps show spikes this tiny model does not.
#
# The library code each step used is in `tinyvit/` and `tinyvit/kernels/`, meant to be read beside these
# tutorials.
#
# **Next:** [11_data_scaling.py](11_data_scaling.py) measures what tutorial 9 argued: ViT against
# ResNet from scratch on real digits, at growing training-set sizes.
