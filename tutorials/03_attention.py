# %% [markdown]
# # 3. Attention by hand
#
# Self-attention is the only place where tokens talk to each other. Everything else in a
# transformer block (LayerNorm, the MLP) works on each token alone.
#
# **What you'll learn**
# - scaled dot-product attention, `softmax(Q Kᵀ / √d) V`, written out for one head and checked
#   against `tinyvit.kernels.attention_reference`;
# - why the `1/√d` is there (the logits' spread grows with `d` and the softmax saturates);
# - multiple heads as one einops split, checked against the model's own `tinyvit.vit.Attention`;
# - what attention costs: `4·N²·D` FLOPs and an `N × N` matrix per head, and when that matters
#   (a table for N = 197, 577, 1024, 4096, and a plot).

# %%
import os
from pathlib import Path

import torch
from einops import rearrange
from matplotlib.figure import Figure

from tinyvit.kernels import attention, attention_reference
from tinyvit.vit import Attention, ViTConfig

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook runs in tutorials/
OUT = Path(os.environ.get("TINYVIT_TUTORIAL_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% [markdown]
# ## One head
#
# Each token `x_i ∈ R^D` is projected three ways: a query `q_i = x_i W_q`, a key `k_i = x_i W_k`
# and a value `v_i = x_i W_v`, each of width `d` (the head width). Token `i` scores every token
# `j` by `q_i · k_j`, turns the scores into weights with a softmax over `j`, and takes the
# weighted mean of the values:
#
# $$\text{Attention}(Q, K, V) = \text{softmax}\!\left(\frac{Q K^\top}{\sqrt{d}}\right) V,\qquad
#   Q, K, V \in \mathbb{R}^{N \times d}$$
#
# Row `i` of the softmax matrix `P` is a probability distribution: where token `i` looks.

# %%
n, d = 5, 8  # 5 tokens, head width 8
q, k, v = torch.randn(3, n, d).unbind(0)
scores = q @ k.T / d**0.5  # [n, n]: scores[i, j] = q_i . k_j / sqrt(d)
probs = scores.softmax(dim=-1)  # each row sums to 1
out = probs @ v  # [n, d]: token i's weighted mean of the values
print("P =\n", probs.numpy().round(2))
print("row sums:", probs.sum(-1).numpy().round(6))
reference = attention_reference(q[None, None], k[None, None], v[None, None])[0, 0]  # takes [b, h, n, d]
print(f"max |by hand - tinyvit.kernels.attention_reference| = {(out - reference).abs().max():.1e}")
assert torch.allclose(out, reference, atol=1e-6)

# %% [markdown]
# ## Why divide by √d
#
# If the entries of `q` and `k` have mean 0 and variance 1, their dot product is a sum of `d`
# such products: its variance is `d`. At `d = 64` the raw scores have a standard deviation of 8,
# and the softmax puts most of the weight on one token, where its gradient nearly vanishes. Dividing by
# `√d` brings the variance back to 1 (Vaswani et al. 2017, §3.2.1).

# %%
d = 64
q, k = torch.randn(2, 197, d).unbind(0)
for label, s in [("q k^T", q @ k.T), ("q k^T / sqrt(d)", q @ k.T / d**0.5)]:
    p = s.softmax(-1)
    print(f"{label:16s} std {s.std():5.2f}   mean of each row's largest weight {p.max(-1).values.mean():.2f}")

# %% [markdown]
# ## Many heads
#
# A block does `H` of these in parallel, each on its own `D/H`-wide slice, so different heads can
# look for different things. In tinyvit (as in timm) one `Linear(D, 3D)` computes all the
# queries, keys and values at once, rows ordered `[q; k; v]`, heads contiguous inside each; one
# einops pattern splits them, and another merges the heads back before the output projection:
#
# `qkv: b n (three h dh) -> three b h n dh`, … , `b h n dh -> b n (h dh)`, then `proj`.
#
# We redo `tinyvit.vit.Attention`'s forward by hand from its own weights.

# %%
cfg = ViTConfig(image_size=32, patch_size=8, dim=64, depth=1, num_heads=4, mlp_dim=128)
attn = Attention(cfg).eval()
x = torch.randn(2, 17, cfg.dim)  # [b, n, D]: 16 patches + the class token

with torch.no_grad():
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias  # [b, n, 3D]
    q, k, v = rearrange(qkv, "b n (three h dh) -> three b h n dh", three=3, h=cfg.num_heads)
    dh = cfg.dim // cfg.num_heads
    p_hand = (q @ k.transpose(-2, -1) / dh**0.5).softmax(-1)  # [b, h, n, n]
    heads = p_hand @ v  # [b, h, n, dh]
    y_hand = rearrange(heads, "b h n dh -> b n (h dh)") @ attn.proj.weight.T + attn.proj.bias

    p_module = attn.attention_map(x)  # the explicit path: P itself, [b, h, n, n]
    y_module = attn.merge_heads(p_module @ v)  # P V, the heads concatenated and projected
    y_kernel = attn(x)  # the default path: tinyvit.kernels.attention (the reference on CPU)
    y_dispatch = attention(q, k, v, scale=dh**-0.5)
print(f"max |by hand - Attention(x)|                       = {(y_hand - y_kernel).abs().max():.1e}")
print(f"max |by hand - merge_heads(attention_map(x) V)|    = {(y_hand - y_module).abs().max():.1e}")
print(f"max |P by hand - P from the module|                = {(p_hand - p_module).abs().max():.1e}")
print(f"max |heads by hand - tinyvit.kernels.attention|    = {(heads - y_dispatch).abs().max():.1e}")
assert torch.allclose(y_hand, y_kernel, atol=1e-5) and torch.allclose(p_hand, p_module, atol=1e-6)
assert torch.allclose(heads, y_dispatch, atol=1e-5)

# %% [markdown]
# ## What it costs as N grows
#
# Per head, `Q Kᵀ` is `N·N·d` multiply-adds and `P V` another `N·N·d`: with 2 FLOPs per
# multiply-add that is **`4·N²·d` FLOPs per head** (the convention of the FlashAttention and
# Triton benchmarks), and an **`N × N` matrix of scores per head** to hold. The rest of a block
# is linear in `N`: the qkv, output and MLP projections cost `2·N·(3D² + D² + 2·D·4D) = 24·N·D²`
# FLOPs. So attention's share of a block is `4N²D / (4N²D + 24ND²) = N / (N + 6D)`.
#
# For ViT-B (D = 768, 12 heads of d = 64, 12 blocks, batch 1):

# %%
D, H, L = 768, 12, 12
dh = D // H
rows = []
print(f"{'N':>5} {'attn GFLOP/head':>16} {'scores/head':>12} {'fp32 MiB/layer':>15} "
      f"{'attn GFLOP/model':>17} {'linear GFLOP/model':>19} {'attn share':>10}")
for N in (197, 577, 1024, 4096):
    attn_flops_head = 4 * N**2 * dh
    attn_model = attn_flops_head * H * L
    linear_model = 24 * N * D**2 * L
    scores_mib = H * N**2 * 4 / 2**20  # the H score matrices of one layer, fp32
    rows.append((N, attn_model, linear_model, scores_mib))
    print(f"{N:5d} {attn_flops_head / 1e9:16.3f} {N**2:12,d} {scores_mib:15.1f} "
          f"{attn_model / 1e9:17.1f} {linear_model / 1e9:19.1f} {attn_model / (attn_model + linear_model):10.0%}")
assert abs(rows[0][1] / (rows[0][1] + rows[0][2]) - 197 / (197 + 6 * D)) < 1e-12

# %% [markdown]
# At N = 197 (224 px, patch 16) attention is about 4% of ViT-B's FLOPs: the MLP dominates, which
# is why fused attention kernels often buy little at ViT sizes (apple/ml-sigmoid-attention#5: "with
# ViTs ... MLPs typically dominate"). At N = 4096 it is
# close to half, and the score matrices alone need ~768 MiB per layer in fp32; training keeps
# them for every layer for the backward pass. Not storing them is the point of the fused kernel
# of tutorial 6.

# %%
Ns = torch.logspace(1.5, 4, 40)
fig = Figure(figsize=(10, 4), layout="constrained")
ax1, ax2 = fig.subplots(1, 2)
ax1.loglog(Ns, 4 * Ns**2 * dh * H * L / 1e9, label="attention  4·N²·d·H·L")
ax1.loglog(Ns, 24 * Ns * D**2 * L / 1e9, label="projections + MLP  24·N·D²·L")
ax1.set(xlabel="tokens N", ylabel="GFLOP per image", title="ViT-B forward FLOPs")
ax2.loglog(Ns, H * Ns**2 * 4 / 2**20, color="C3")
ax2.set(xlabel="tokens N", ylabel="MiB", title="score matrices of one layer (fp32, 12 heads)")
for ax in (ax1, ax2):
    for N in (197, 577, 1024, 4096):
        ax.axvline(N, color="grey", lw=0.5, ls=":")
    ax.grid(True, which="major", alpha=0.3)
ax1.legend()
fig.savefig(OUT / "03_attention_cost.png", dpi=100)
print("saved", OUT / "03_attention_cost.png")

# %% [markdown]
# **Next:** [04_vit.py](04_vit.py) wraps attention into the transformer block and the whole
# ViT, and counts ViT-B/16's 86,567,656 parameters by formula.
