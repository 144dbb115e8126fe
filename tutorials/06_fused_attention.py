# %% [markdown]
# # 6. Fused attention: online softmax and FlashAttention-2
#
# Tutorial 3 computed attention as three steps, `S = QKᵀ/√d`, `P = softmax(S)`, `O = PV`, each
# writing an `N × N` matrix per head to memory and reading it back. A fused kernel computes `O`
# without ever storing `S` or `P`. The trick that allows it is the *online softmax*.
#
# **What you'll learn**
# - the online softmax, derived and checked on a 2-block example in plain PyTorch;
# - FlashAttention-2's tiling (Dao 2023): which program computes what, and what is kept;
# - the backward pass from the saved log-sum-exp, formula by formula, checked against autograd;
# - `tinyvit/kernels/attention.py`'s Triton kernel run under the interpreter against
#   `tinyvit.kernels.attention_reference`, on ViT's awkward 197 tokens;
# - how attention speed is counted (TFLOP/s), and the GPU numbers recorded in `bench/results`.

# %%
import os

import torch  # importing torch does not import triton

# Set before tinyvit (and so triton) is imported: Triton decides at @triton.jit time whether a
# kernel is compiled for a GPU or run by its numpy interpreter. Tutorial 5 explains.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import sys
from pathlib import Path

from einops import rearrange
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import tinyvit.kernels
from tinyvit.kernels import attention, attention_reference
from tinyvit.kernels.attention import _block_d, _forward_config
from tinyvit.vit import sincos_2d

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook runs in tutorials/
OUT = Path(os.environ.get("TINYVIT_TUTORIAL_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
print(f"triton installed: {tinyvit.kernels.HAS_TRITON}, interpreter: {tinyvit.kernels.INTERPRETER}, device: {DEVICE}")

# %% [markdown]
# ## The online softmax
#
# Take one query's row of scores `s ∈ R^N` and the values `V`. The output is
# `o = Σ_j e^{s_j} v_j / Σ_j e^{s_j}`; for numerical safety every exponent is taken relative to
# the row maximum `m`, which cancels between numerator and denominator.
#
# Now split the keys into blocks and see them one at a time. After the first block keep three
# things: its maximum `m₁`, the sum `ℓ₁ = Σ_{j∈1} e^{s_j − m₁}`, and the unnormalised output
# `a₁ = Σ_{j∈1} e^{s_j − m₁} v_j`. When block 2 arrives, the maximum becomes
# `m = max(m₁, max_{j∈2} s_j)`, and what was summed under `m₁` is rescaled by
# `α = e^{m₁ − m}`:
#
# $$\ell = \alpha\,\ell_1 + \sum_{j \in 2} e^{s_j - m},\qquad
#   a = \alpha\,a_1 + \sum_{j \in 2} e^{s_j - m} v_j,\qquad o = a / \ell$$
#
# This is exact, not an approximation, and it extends to any number of blocks. At the end,
# `L = m + log ℓ` is the row's log-sum-exp, from which any probability can be recomputed later:
# `P_j = e^{s_j − L}`.

# %%
s = torch.tensor([0.5, 2.0, -1.0, 1.0, 4.0, 0.0, 3.0, -2.0], dtype=torch.float64)  # one query's scores
v = torch.randn(8, 2, dtype=torch.float64)  # values, head dim 2
s1, s2, v1, v2 = s[:4], s[4:], v[:4], v[4:]

m1 = s1.max()
l1 = torch.exp(s1 - m1).sum()
a1 = torch.exp(s1 - m1) @ v1
print(f"block 1: m1 = {m1:.1f}, l1 = {l1:.4f}, a1 = {a1.numpy().round(4)}")

m = torch.maximum(m1, s2.max())
alpha = torch.exp(m1 - m)  # block 2 holds a larger score: alpha < 1 shrinks block 1's sums
l = alpha * l1 + torch.exp(s2 - m).sum()
a = alpha * a1 + torch.exp(s2 - m) @ v2
o = a / l
print(f"block 2: m = {m:.1f}, alpha = e^(m1 - m) = {alpha:.4f}, l = {l:.4f}")
print(f"online o = {o.numpy().round(6)}   softmax(s) @ v = {(s.softmax(0) @ v).numpy().round(6)}")
print(f"L = m + log l = {m + l.log():.6f}   logsumexp(s) = {s.logsumexp(0):.6f}")
assert torch.allclose(o, s.softmax(0) @ v) and torch.allclose(m + l.log(), s.logsumexp(0))

# %% [markdown]
# ## FlashAttention-2 tiling
#
# The kernel runs one *program* per block of `BLOCK_M` queries (and per head, per image). Each
# program loads its queries once, then walks over the keys `BLOCK_N` at a time: compute the
# `BLOCK_M × BLOCK_N` tile of scores, update `m_i`, `ℓ_i` and the accumulator as above, discard
# the tile. Only the output `O` and `L` (one fp32 number per query) are written. FA-2's changes
# over FA-1 are that the loop over keys is the *inner* one (each program owns its output rows,
# no synchronisation) and that the division by `ℓ` happens once at the end.
#
# The key count rarely divides evenly: ViT-B has N = 197. Keys past `N` get the score `−∞`
# (probability 0); query rows past `N` are computed on zeros and never stored.
#
# The picture shows one head's probabilities for N = 197 (queries and keys built from 2-D
# positions, so the pattern is local), with the tiles the fp16 kernel at head dim 64 uses.

# %%
block_m, block_n, num_warps, num_stages = _forward_config(_block_d(64), torch.float16)
print(f"fp16, head dim 64: BLOCK_M = {block_m}, BLOCK_N = {block_n}, num_warps = {num_warps}, num_stages = {num_stages}")
N = 197
tokens = torch.cat([torch.zeros(1, 64), sincos_2d(14, 64)])  # [N, 64]: a class token and 196 positions
P = (tokens @ tokens.T / 64**0.5).softmax(-1)
padded = -(-N // block_m) * block_m, -(-N // block_n) * block_n  # rounded up to whole tiles

fig = Figure(figsize=(6, 6), layout="constrained")
ax = fig.subplots()
ax.imshow(P.numpy(), cmap="magma", extent=(0, N, N, 0))
for i in range(0, padded[0], block_m):
    for j in range(0, padded[1], block_n):
        ax.add_patch(Rectangle((j, i), block_n, block_m, fill=False, edgecolor="cyan", lw=1))
ax.axhspan(N, padded[0], color="grey", alpha=0.4)
ax.axvspan(N, padded[1], color="grey", alpha=0.4)
ax.set_xlim(0, padded[1])
ax.set_ylim(padded[0], 0)
ax.set(xlabel="keys", ylabel="queries",
       title=f"P, N = {N}: {padded[0] // block_m} programs (rows of tiles), each walking "
             f"{padded[1] // block_n} key tiles;\ngrey: padding past N (masked)")
fig.savefig(OUT / "06_tiles.png", dpi=100)
print("saved", OUT / "06_tiles.png")

# %% [markdown]
# What that saves, per layer of ViT-B (12 heads, batch 1) in fp32: the probabilities the plain
# version keeps for the backward, against the log-sum-exp the fused one keeps.

# %%
for n in (197, 577, 1024, 4096):
    print(f"N = {n:5d}: P {12 * n * n * 4 / 2**20:8.1f} MiB   L {12 * n * 4 / 2**10:6.1f} KiB")

# %% [markdown]
# ## The backward pass
#
# With `dO` arriving from above, `S = scale·QKᵀ`, `P = softmax(S)` recomputed as `e^{S − L}`:
#
# $$dV = P^\top dO,\qquad dP = dO\,V^\top,\qquad dS = P \circ (dP - \delta),\qquad
#   dQ = \text{scale}\cdot dS\,K,\qquad dK = \text{scale}\cdot dS^\top Q$$
#
# The softmax's Jacobian contributes `δ_i = Σ_j P_ij dP_ij`, and since `Σ_j P_ij V_j = O_i`,
# `δ_i = dO_i · O_i`: one dot product per row, computed by a small preprocess kernel. We check
# every line against autograd on the reference, in fp64.

# %%
B, H, n, d = 1, 2, 9, 4
q, k, v = (torch.randn(B, H, n, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
scale = d**-0.5
o_ref = attention_reference(q, k, v, scale)
do = torch.randn_like(o_ref)
dq_auto, dk_auto, dv_auto = torch.autograd.grad(o_ref, (q, k, v), do)
with torch.no_grad():
    S = scale * q @ k.transpose(-2, -1)
    L = S.logsumexp(-1, keepdim=True)  # what the forward kernel saves, [B, H, N]
    P = torch.exp(S - L)  # recomputed, never stored
    dv_ = P.transpose(-2, -1) @ do
    dP = do @ v.transpose(-2, -1)
    delta = (do * o_ref).sum(-1, keepdim=True)  # = rowsum(P * dP)
    dS = P * (dP - delta)
    dq_, dk_ = scale * dS @ k, scale * dS.transpose(-2, -1) @ q
for name, mine, auto in [("dQ", dq_, dq_auto), ("dK", dk_, dk_auto), ("dV", dv_, dv_auto)]:
    print(f"max |{name} by formula - autograd| = {(mine - auto).abs().max():.1e}")
    assert torch.allclose(mine, auto, atol=1e-12)
assert torch.allclose(delta, (P * dP).sum(-1, keepdim=True))

# %% [markdown]
# FA-2 computes all three gradients in one kernel and adds into `dQ` with atomics, so the
# result depends on the order programs finish. tinyvit's kernel uses two passes instead: one
# per key block (holding `dK`, `dV`) and one per query block (holding `dQ`), each owning what it
# writes. Gradients are then bitwise reproducible; the price is recomputing `P` in both passes.
#
# ## Run the Triton kernel
#
# `attention(q, k, v, backend="triton")` forces the fused kernels (here, under the interpreter).
# The first case takes `q, k, v` as strided views straight out of one fused qkv projection, as
# the model does (no `.contiguous()` copy; the kernel honours strides: a kernel that ignored them gave
# silently wrong results in flagos-ai/FlagAttention#45); the second
# has head dim 80 (ViT-H), padded to 128 inside the kernel. fp32, forward and backward.

# %%
qkv = torch.randn(1, 197, 3 * 2 * 64, device=DEVICE)  # [b, n, 3·h·dh], as Attention.qkv produces
views = rearrange(qkv, "b n (three h dh) -> three b h n dh", three=3, h=2).unbind(0)
cases = {
    "197 tokens, d 64, strided views": [t.requires_grad_() for t in (x.detach() for x in views)],
    "50 tokens, d 80": [torch.randn(2, 3, 50, 80, device=DEVICE, requires_grad=True) for _ in range(3)],
}
print("q is contiguous:", cases["197 tokens, d 64, strided views"][0].is_contiguous())
for name, (q, k, v) in cases.items():
    do = torch.randn_like(q)
    o_kernel = attention(q, k, v, backend="triton")
    g_kernel = torch.autograd.grad(o_kernel, (q, k, v), do)
    o_ref = attention_reference(q, k, v)
    g_ref = torch.autograd.grad(o_ref, (q, k, v), do)
    errors = [("O", (o_kernel - o_ref).abs().max().item())]
    errors += [(f"d{x}", (a - r).abs().max().item()) for x, a, r in zip("QKV", g_kernel, g_ref)]
    print(f"{name:32s} max |kernel - reference|: " + "  ".join(f"{x} {e:.1e}" for x, e in errors))
    assert all(e < 1e-4 for _, e in errors), errors

# %% [markdown]
# ## Measuring it on a GPU
#
# Attention is counted in FLOPs, by the convention of the FlashAttention and Triton benchmarks:
# the forward's two matmuls (`QKᵀ`, `PV`) are `4·B·H·N²·D`, and the backward counts 2.5× that:
# five matmuls (the recompute of `QKᵀ`, then `PᵀdO`, `dO Vᵀ`, `dS K`, `dSᵀQ`). tinyvit's two-pass
# backward really does seven (3.5×), because each pass recomputes `QKᵀ` and `dO Vᵀ`; the
# convention is kept so its numbers compare with everyone else's. At ViT's N = 197 the
# matmuls are small and fused attention often gains little over PyTorch's SDPA; the honest way
# is to report both, at N = 197 and 577 as well as long sequences (at N = 196 a custom flash kernel was
# slower than SDPA in apple/ml-sigmoid-attention#5).
#
# The numbers below come from `bench/results/*.json`, written by `python -m bench.attention` on
# a GPU: ViT shapes (N = 197, 257, 577) and a sweep over N, forward ("fwd") and forward plus
# backward ("fwd+bwd", counted as 1 + 2.5 = 3.5 times the forward's FLOPs), against eager
# attention and each `scaled_dot_product_attention` backend. If none are recorded yet, this says
# so; it never makes numbers up.

# %%
sys.path.insert(0, str(HERE.parent))  # bench/ is a folder of scripts at the repository root, not installed
from bench.common import RESULTS_DIR, format_table, read_rows  # noqa: E402

files = sorted(RESULTS_DIR.glob("*.json"))
rows = [r for f in files for r in read_rows(f) if r["op"] == "attention" and not r.get("smoke")]
if not rows:
    print(f"No GPU attention results are recorded in {RESULTS_DIR} yet.")
else:
    # The files hold every dtype, shape and provider; show one dtype (bf16 when there is one).
    dtype = "bf16" if any(r["dtype"] == "bf16" for r in rows) else rows[0]["dtype"]
    rows = [r for r in rows if r["dtype"] == dtype]
    device = sorted({r["device"] for r in rows})
    print(format_table([r for r in rows if r.get("group") == "vit"],
                       title=f"attention at ViT shapes, {dtype}, on {', '.join(device)} ({', '.join(f.name for f in files)})"))
    sweep = [r for r in rows if r.get("group") == "sweep" and r.get("tflops")]
    passes = sorted({r["pass"] for r in sweep})
    fig = Figure(figsize=(5 * max(len(passes), 1), 4), layout="constrained")
    axes = fig.subplots(1, max(len(passes), 1), squeeze=False)[0]
    for ax, pass_ in zip(axes, passes):
        for provider in sorted({r["provider"] for r in sweep if r["pass"] == pass_}):
            pts = sorted((r["dims"]["N"], r["tflops"]) for r in sweep if r["pass"] == pass_ and r["provider"] == provider)
            ax.plot(*zip(*pts), "o-", label=provider)
        ax.set(xscale="log", xlabel="tokens N", ylabel="TFLOP/s", title=f"attention {pass_}, {dtype}")
        ax.legend(fontsize=7)
    fig.savefig(OUT / "06_attention_bench.png", dpi=100)
    print("saved", OUT / "06_attention_bench.png")

# %% [markdown]
# **Next:** [07_official_weights.py](07_official_weights.py) leaves kernels for checkpoints: the
# four formats official ViT weights come in, and how `tinyvit.load_pretrained` reads each.
