# %% [markdown]
# # 4. The transformer block and the whole ViT
#
# Tutorials 1–3 built the pieces: patches, embeddings, attention. Here they are put together.
#
# **What you'll learn**
# - the pre-norm block, `x + Attn(LN(x))` then `x + MLP(LN(x))`, recomputed by hand from a
#   `tinyvit.vit.Block`'s own modules;
# - the path of one image through the whole `VisionTransformer`, shape by shape;
# - ViT-B/16's **86,567,656** parameters derived by formula and checked against
#   `tinyvit.create_model("vit_base_patch16_224")`, then every ViT/DeiT preset the same way.

# %%
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

import tinyvit
from tinyvit.vit import Block, ViTConfig

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook runs in tutorials/
OUT = Path(os.environ.get("TINYVIT_TUTORIAL_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% [markdown]
# ## The block
#
# A ViT block (the paper's eq. 2–3) is two residual branches, each after a LayerNorm
# ("pre-norm": Xiong et al. 2020 show it trains stably even without learning-rate warm-up):
#
# $$z' = z + \text{MSA}(\text{LN}(z)),\qquad z'' = z' + \text{MLP}(\text{LN}(z'))$$
#
# - LayerNorm normalises each token over its `D` channels, then scales and shifts:
#   `LN(x) = (x − μ) / √(σ² + ε) · γ + β`, with `ε = 1e-6` in every official ViT (tutorial 5);
# - MSA is the multi-head attention of tutorial 3;
# - the MLP is `Linear(D, 4D) → GELU → Linear(4D, D)`, applied to each token alone.
#
# Attention is the only step where tokens mix; LayerNorm and the MLP see one token at a time.

# %%
cfg = ViTConfig(image_size=32, patch_size=8, dim=64, depth=3, num_heads=4, mlp_dim=256, num_classes=10)
block = Block(cfg).eval()
z = torch.randn(2, 17, cfg.dim)  # [b, n, D]

with torch.no_grad():
    ln1 = F.layer_norm(z, (cfg.dim,), block.norm1.weight, block.norm1.bias, eps=cfg.norm_eps)
    z1 = z + block.attn(ln1)  # the attention branch
    ln2 = F.layer_norm(z1, (cfg.dim,), block.norm2.weight, block.norm2.bias, eps=cfg.norm_eps)
    hidden = F.gelu(ln2 @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)  # [b, n, 4D]
    z2 = z1 + hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias  # the MLP branch
    out = block(z)
print("block:", tuple(z.shape), "->", tuple(out.shape), f"  max |by hand - Block| = {(z2 - out).abs().max():.1e}")
assert torch.allclose(z2, out, atol=1e-5)

# %% [markdown]
# ## The whole model, one image through it
#
# `VisionTransformer.forward` is `forward_head(forward_features(x))`, and `forward_features` is
# `norm(blocks(embed(x)))`. We follow one 224×224 image through ViT-B/16 (random weights: the
# shapes are what matters here).

# %%
vit_b = tinyvit.create_model("vit_base_patch16_224").eval()
image = torch.rand(1, 3, 224, 224)  # [b, c, H, W]
with torch.no_grad():
    steps = [("image", image)]
    steps.append(("patch_embed", vit_b.patch_embed(image)))  # [b, 196, 768]
    tokens = vit_b.embed(image)  # + class token, + positions
    steps.append(("embed (cls + pos)", tokens))
    for blk in vit_b.blocks:
        tokens = blk(tokens)  # same shape in, same shape out, 12 times
    steps.append(("12 blocks", tokens))
    steps.append(("norm", vit_b.norm(tokens)))
    steps.append(("head(token 0)", vit_b.forward_head(vit_b.norm(tokens))))
    logits = vit_b(image)
for name, t in steps:
    print(f"{name:18s} {tuple(t.shape)}")
assert torch.allclose(steps[-1][1], logits, atol=1e-5)

# %% [markdown]
# ## 86,567,656 parameters, by formula
#
# With patch size `P`, `C` input channels, width `D`, MLP width `M`, `L` blocks, `N` patches and
# `K` classes:
#
# | piece | parameters |
# |---|---|
# | patch embedding (conv kernel + bias) | `P²·C·D + D` |
# | class token (+ DeiT's distillation token) | `D` each |
# | learned position embedding, one row per token | `(N + prefix)·D` |
# | block: two LayerNorms | `4D` |
# | block: qkv (with bias) and output projection | `3D² + 3D + D² + D` |
# | block: MLP | `D·M + M + M·D + D` |
# | final LayerNorm | `2D` |
# | head (+ DeiT's `head_dist`) | `D·K + K` each |
#
# With `M = 4D` a block is `12D² + 13D`: 7,087,872 parameters at `D = 768`, the bulk of the model.

# %%
def count_by_formula(c: ViTConfig) -> dict:
    """Parameters of each piece of a ViT, from its config alone."""
    P, C, D, M, L, K = c.patch_size, c.in_channels, c.dim, c.mlp_dim, c.depth, c.num_classes
    N, prefix = c.grid_size**2, c.num_prefix_tokens
    assert c.pre_logits is None and c.qkv_bias  # the presets below; other cases add their own terms
    per_block_attn = 3 * D * D + 3 * D + D * D + D
    per_block_mlp = D * M + M + M * D + D
    return {
        "patch embedding": P * P * C * D + D,
        "tokens + positions": prefix * D + ((N + prefix) * D if c.pos_embed == "learned" else 0),
        "attention (all blocks)": L * per_block_attn,
        "MLP (all blocks)": L * per_block_mlp,
        "LayerNorms": L * 4 * D + 2 * D,
        "head": (D * K + K) * (1 + int(c.distilled)) if K else 0,
    }


vit_b_cfg = ViTConfig(**tinyvit.PRESETS["vit_base_patch16_224"]["config"])
parts = count_by_formula(vit_b_cfg)
formula = sum(parts.values())
counted = sum(p.numel() for p in vit_b.parameters())
for name, count in parts.items():
    print(f"{name:24s} {count:>12,d}  {count / formula:6.1%}")
print(f"{'formula':24s} {formula:>12,d}\n{'create_model(...)':24s} {counted:>12,d}")
assert formula == counted == 86_567_656

# %% [markdown]
# The same formula for every ViT and DeiT preset. Building ViT-H (632M parameters) for real
# would take seconds and gigabytes, so these are built on PyTorch's `meta` device: shapes
# without storage, enough to count.

# %%
print(f"{'preset':34s} {'formula':>13s} {'create_model':>13s}")
for name, preset in tinyvit.PRESETS.items():
    if preset["arch"] != "vit":
        continue
    with torch.device("meta"):
        model = tinyvit.create_model(name)
    by_formula = sum(count_by_formula(model.cfg).values())
    counted = sum(p.numel() for p in model.parameters())
    print(f"{name:34s} {by_formula:13,d} {counted:13,d}")
    assert by_formula == counted, name

# %% [markdown]
# The published counts (timm's and torchvision's models, counted; tests/test_presets.py checks them): ViT-Ti/16
# 5,717,416, ViT-S/16 22,050,664, ViT-B/16 86,567,656, DeiT-B distilled 87,338,192.
#
# Where do ViT-B's parameters live? Two thirds are in the MLPs, one third in attention, and the
# embeddings, norms and head together are about 2%.

# %%
fig = Figure(figsize=(7, 3.5), layout="constrained")
ax = fig.subplots()
names, counts = list(parts), [v / 1e6 for v in parts.values()]
bars = ax.barh(names[::-1], counts[::-1], color="C0")
ax.bar_label(bars, labels=[f"{c:.2f}M" for c in counts[::-1]], padding=3)
ax.set(xlabel="millions of parameters", title=f"ViT-B/16: {formula:,} parameters")
ax.set_xlim(0, max(counts) * 1.2)
fig.savefig(OUT / "04_parameters.png", dpi=100)
print("saved", OUT / "04_parameters.png")

# %% [markdown]
# **Next:** [05_layernorm_triton.py](05_layernorm_triton.py) writes the block's LayerNorm as a
# Triton kernel and runs it on a CPU through the Triton interpreter.
