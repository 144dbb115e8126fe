# %% [markdown]
# # 5. LayerNorm in Triton
#
# Every ViT block normalises its tokens twice, and the model once more at the end: 25
# LayerNorms in ViT-B. Each reads and writes the whole activation and does almost no arithmetic,
# so its speed is set by memory bandwidth. That makes it the simplest useful GPU kernel to write:
# one row per program, everything in registers.
#
# **What you'll learn**
# - the LayerNorm forward and backward formulas, checked against `tinyvit.kernels.layer_norm_reference`;
# - why the variance is computed in two passes (the one-pass formula cancels catastrophically in
#   fp32; plotted);
# - how `tinyvit/kernels/layernorm.py`'s Triton kernel is laid out, run here on a CPU by the Triton
#   interpreter, forward and backward, against the reference;
# - how LayerNorm speed is measured (GB/s), and the GPU numbers recorded in `bench/results`.

# %% [markdown]
# ## First: the Triton interpreter
#
# Triton compiles kernels for GPUs. With the environment variable `TRITON_INTERPRET=1`, it
# instead runs each kernel's Python body with numpy, one program at a time: slow, but it runs on
# any CPU, and `print` and a debugger work inside kernels. Triton reads the variable when a
# kernel is *decorated* with `@triton.jit`, which happens when `tinyvit.kernels` is imported
# (`import tinyvit` imports it too). So it must be set before that import, here at the very top.
# On a machine with a CUDA GPU we leave it unset and the kernels are compiled for real.

# %%
import os

import torch  # importing torch does not import triton

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import inspect
import sys
from pathlib import Path

from matplotlib.figure import Figure

import tinyvit.kernels
from tinyvit.kernels import layer_norm, layer_norm_reference
from tinyvit.kernels.layernorm import _layer_norm_backward_kernel, _layer_norm_forward_kernel

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook runs in tutorials/
OUT = Path(os.environ.get("TINYVIT_TUTORIAL_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
print(f"triton installed: {tinyvit.kernels.HAS_TRITON}, interpreter: {tinyvit.kernels.INTERPRETER}, device: {DEVICE}")

# %% [markdown]
# ## The formulas
#
# For each row `x ∈ R^N` (a token's `N = D` channels):
#
# $$\mu = \frac{1}{N}\sum_j x_j,\qquad \sigma^2 = \frac{1}{N}\sum_j (x_j - \mu)^2,\qquad
#   \text{rstd} = \frac{1}{\sqrt{\sigma^2 + \varepsilon}},\qquad
#   y_j = (x_j - \mu)\,\text{rstd}\; w_j + b_j$$
#
# with `ε = 1e-6` in every official ViT. The backward, with `x̂ = (x − μ)·rstd` and
# `g = w ∘ dy` (the gradient arriving at `x̂`), is
#
# $$dx = \text{rstd}\,\big(g - \overline{g} - \hat x\, \overline{g \circ \hat x}\big),\qquad
#   dw = \sum_\text{rows} dy \circ \hat x,\qquad db = \sum_\text{rows} dy$$
#
# where the bars are means over the row. We check both against PyTorch's autograd.

# %%
x = torch.randn(4, 197, 100, dtype=torch.float64, requires_grad=True)  # N = 100: not a power of two
w = torch.randn(100, dtype=torch.float64, requires_grad=True)
b = torch.randn(100, dtype=torch.float64, requires_grad=True)
eps = 1e-6
mean = x.mean(-1, keepdim=True)
rstd = ((x - mean).pow(2).mean(-1, keepdim=True) + eps).rsqrt()
y = (x - mean) * rstd * w + b
print(f"forward:  max |by hand - layer_norm_reference| = {(y - layer_norm_reference(x, w, b, eps)).abs().max():.1e}")

dy = torch.randn_like(y)
dx_auto, dw_auto, db_auto = torch.autograd.grad(y, (x, w, b), dy)
with torch.no_grad():
    xhat = (x - mean) * rstd
    g = w * dy
    dx = rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    dw, db = (dy * xhat).sum((0, 1)), dy.sum((0, 1))
for name, mine, auto in [("dx", dx, dx_auto), ("dw", dw, dw_auto), ("db", db, db_auto)]:
    print(f"backward: max |{name} by formula - autograd| = {(mine - auto).abs().max():.1e}")
    assert torch.allclose(mine, auto, atol=1e-10)

# %% [markdown]
# ## Two passes for the variance
#
# `σ² = E[x²] − E[x]²` needs only one pass over the row, and is exact in real numbers. In fp32
# it fails when the mean is large against the spread: for a row near 10⁴ with unit spread,
# `E[x²] ≈ 10⁸`, where neighbouring fp32 numbers are 8 apart, so the difference of two such
# numbers is mostly rounding. The kernel first computes `μ`, then the mean of `(x − μ)²`: the
# row is in registers, so the second pass costs no memory traffic. Activations with a large
# common offset do occur in trained transformers, so this is not academic.

# %%
offsets = torch.logspace(0, 4, 9)
one_pass, two_pass = [], []
for offset in offsets:
    rows = torch.randn(256, 768, dtype=torch.float64) + offset  # spread 1 around `offset`
    true_var = rows.var(-1, unbiased=False)
    r = rows.float()
    v1 = (r * r).mean(-1) - r.mean(-1) ** 2
    v2 = (r - r.mean(-1, keepdim=True)).pow(2).mean(-1)
    one_pass.append(((v1.double() - true_var).abs() / true_var).max().item())
    two_pass.append(((v2.double() - true_var).abs() / true_var).max().item())
    print(f"mean {offset:8.0f}: worst relative error of the fp32 variance, one pass {one_pass[-1]:.1e}, two passes {two_pass[-1]:.1e}")
assert one_pass[-1] > 0.1 and two_pass[-1] < 1e-4

fig = Figure(figsize=(6, 3.5), layout="constrained")
ax = fig.subplots()
ax.loglog(offsets, one_pass, "o-", label="one pass: E[x²] − E[x]²")
ax.loglog(offsets, two_pass, "s-", label="two passes: E[(x − μ)²] (the kernel)")
ax.set(xlabel="row mean (spread 1)", ylabel="worst relative error of σ²", title="fp32 variance of 768-wide rows")
ax.legend()
ax.grid(True, alpha=0.3)
fig.savefig(OUT / "05_variance_two_pass.png", dpi=100)
print("saved", OUT / "05_variance_two_pass.png")

# %% [markdown]
# ## The kernel
#
# `tinyvit/kernels/layernorm.py` holds the reference, two kernels, their launchers, an
# `autograd.Function` and a module, in that order. The forward kernel is short enough to read
# here, printed from the library itself. One program normalises one row; `BLOCK_N` is the next
# power of two ≥ N (`tl.arange` needs a power of two), and `mask = cols < N` keeps the padded
# lanes out of every load, store and sum. Statistics are fp32 whatever the input dtype; `mean`
# and `rstd` are saved (fp32, one number per row) for the backward.

# %%
print(inspect.getsource(_layer_norm_forward_kernel.fn))  # .fn: the Python function under @triton.jit

# %% [markdown]
# The backward kernel computes `dx` row by row with the formula above. `dw` and `db` are sums over
# all rows: instead of the Triton tutorial's spin lock and shared buffers (which raced,
# meta-pytorch/tritonbench#1266), each program sums over its own chunk of rows into its own row
# of a `[G, N]` fp32 buffer, and one `.sum(0)` in PyTorch finishes. No atomics, so repeated runs
# give bitwise-identical `dw`, `db`. Its signature:

# %%
print(inspect.getsource(_layer_norm_backward_kernel.fn).split("):")[0] + "): ...")

# %% [markdown]
# ## Run it: kernel against reference
#
# `layer_norm(x, w, b, eps, backend="triton")` forces the kernels (on CPU, the interpreter).
# Shapes are deliberately awkward: 3·37 rows of width 100 (masked lanes), and 197 rows of width 768 (ViT-B).
# fp32 throughout: the interpreter is for correctness, not speed.

# %%
for shape in [(3, 37, 100), (1, 197, 768)]:
    x = torch.randn(shape, device=DEVICE, requires_grad=True)
    w = torch.randn(shape[-1], device=DEVICE, requires_grad=True)
    b = torch.randn(shape[-1], device=DEVICE, requires_grad=True)
    dy = torch.randn(shape, device=DEVICE)
    y_kernel = layer_norm(x, w, b, 1e-6, backend="triton")
    grads_kernel = torch.autograd.grad(y_kernel, (x, w, b), dy)
    y_ref = layer_norm_reference(x, w, b, 1e-6)
    grads_ref = torch.autograd.grad(y_ref, (x, w, b), dy)
    errors = {"y": (y_kernel - y_ref).abs().max().item()}
    errors.update({n: (a - r).abs().max().item() for n, a, r in zip(("dx", "dw", "db"), grads_kernel, grads_ref)})
    print(f"x {shape}: max |kernel - reference|  " + "  ".join(f"{n} {e:.1e}" for n, e in errors.items()))
    assert errors["y"] < 1e-4 and errors["dx"] < 1e-3 and errors["dw"] < 1e-2 and errors["db"] < 1e-2

again = torch.autograd.grad(layer_norm(x, w, b, 1e-6, backend="triton"), (x, w, b), dy)
print("dw, db bitwise equal on a second run:", torch.equal(again[1], grads_kernel[1]) and torch.equal(again[2], grads_kernel[2]))
assert torch.equal(again[1], grads_kernel[1]) and torch.equal(again[2], grads_kernel[2])

# %% [markdown]
# ## Measuring it on a GPU
#
# LayerNorm is memory-bound: the forward must read `x` and write `y` (plus `w`, `b`), so the
# figure of merit is **effective bandwidth**, the fewest bytes the pass must move over its time:
#
# - forward: `(2·M·N + 2·N)·s` bytes, for `M` rows of width `N` and `s` bytes per element;
# - backward: `(3·M·N + 3·N)·s + 2·M·4` bytes (read `x`, `dy`, `w`, the fp32 `mean`/`rstd`; write `dx`, `dw`, `db`).
#
# A LayerNorm cannot beat a copy of the same bytes, so `bench/layernorm.py` also reports the
# result as a percentage of the copy bandwidth it measures in the same run. For a ViT-B batch of
# 256 images (M = 256·197 = 50,432 rows, N = 768) in bf16, the forward must move:

# %%
M, N, s = 256 * 197, 768, 2
print(f"forward {(2 * M * N + 2 * N) * s / 1e6:.1f} MB, backward {((3 * M * N + 3 * N) * s + 2 * M * 4) / 1e6:.1f} MB per LayerNorm")

# %% [markdown]
# The numbers below are read from `bench/results/*.json`, written by `python -m bench.layernorm`
# on a GPU (smoke runs on CPU never write there). If none are recorded yet, this says so; it
# never makes numbers up. To produce them: `python -m bench.layernorm` on a CUDA machine.

# %%
sys.path.insert(0, str(HERE.parent))  # bench/ is a folder of scripts at the repository root, not installed
from bench.common import RESULTS_DIR, format_table, read_rows  # noqa: E402

files = sorted(RESULTS_DIR.glob("*.json"))
rows = [r for f in files for r in read_rows(f) if r["op"] == "layernorm" and not r.get("smoke")]
if not rows:
    print(f"No GPU LayerNorm results are recorded in {RESULTS_DIR} yet.")
else:
    # The files hold every dtype, width and provider; show one dtype (bf16 when there is one).
    dtype = "bf16" if any(r["dtype"] == "bf16" for r in rows) else rows[0]["dtype"]
    rows = [r for r in rows if r["dtype"] == dtype]
    device = sorted({r["device"] for r in rows})
    print(format_table(rows, title=f"LayerNorm, {dtype}, on {', '.join(device)} ({', '.join(f.name for f in files)})"))
    timed = [r for r in rows if r.get("gbps")]
    widths = sorted({r["dims"]["N"] for r in timed})
    series = sorted({(r["provider"], r["pass"]) for r in timed})
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax = fig.subplots()
    for provider, pass_ in series:
        pts = sorted((r["dims"]["N"], r["gbps"]) for r in timed if r["provider"] == provider and r["pass"] == pass_)
        ax.plot(*zip(*pts), "o-", label=f"{provider} {pass_}")
    ax.set(xscale="log", xlabel="row width N", ylabel="effective GB/s", title=f"LayerNorm, {dtype}")
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.legend(fontsize=7)
    fig.savefig(OUT / "05_layernorm_bench.png", dpi=100)
    print("saved", OUT / "05_layernorm_bench.png")

# %% [markdown]
# **Next:** [06_fused_attention.py](06_fused_attention.py) does the same for attention, where
# the fused kernel also saves the `N × N` memory of tutorial 3.
