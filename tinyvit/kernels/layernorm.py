"""LayerNorm over the last dimension (Ba, Kiros & Hinton 2016), forward and backward in Triton.

    y = (x − mean) · rstd · w + b,   mean = Σ_j x_j / N,   rstd = 1 / √(Σ_j (x_j − mean)² / N + ε)

for every row x of N features; rows are all leading indices of the input, flattened ([..., N] -> [M, N]).
The file reads top to bottom: reference, the two kernels, launchers (PyTorch operators), autograd, the
public function, the module.

Forward. One program normalises one row, held whole in registers (ViT widths 192..1280 need one block;
up to 8192 is allowed). The statistics therefore take two passes over registers, not over memory:
first the mean, then the variance of the centred values x − mean. The one-pass E[x²] − E[x]² cancels
catastrophically when |mean| ≫ std: a row near 1e4 with unit spread has E[x²] ≈ 1e8, where fp32 values
are 8 apart. For the same reason the mean is summed as Σ (x − x_0) / N + x_0, shifted by the row's first
value ("shifted data", Chan, Golub & LeVeque 1983): 768 values near 1e4 sum to ~7.7e6, where fp32
values are 0.5 apart, while the shifted values are small and exact. mean and rstd are saved in fp32
([M] each) for the backward, whatever the input dtype.

Backward. With x̂ = (x − mean) · rstd and g = w ∘ dy (the gradient arriving at x̂), and using
∂mean/∂x_j = 1/N and ∂rstd/∂x_j = −rstd³ (x_j − mean)/N:

    dx = rstd · (g − mean_j(g) − x̂ · mean_j(g ∘ x̂))        (means over the row's N features)
    dw = Σ_rows dy ∘ x̂          db = Σ_rows dy

The kernel recomputes x̂ from x and the saved statistics, re-centring x − mean on its own row mean
first (the saved fp32 mean is rounded, by up to 5e-4 for rows near 1e4, and that would shift all of x̂).
dx is per row. dw and db are sums over all M rows. The Triton tutorial adds per-program partial sums
into a few shared buffers under a spin lock, which raced (meta-pytorch/tritonbench#1266) and depends on
the order programs arrive in. Here each of G programs takes a contiguous chunk of rows, keeps its dw, db
partial sums in fp32 registers, and writes them to its own row of a [G, N] buffer; one `.sum(0)` in torch
finishes the reduction. No locks, no atomics: for a given device (which fixes G), repeated runs give
bitwise-identical dw and db.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._dispatch import register_op, tl, triton, use_triton, wrap_triton

# ---------------------------------------------------------------------------------------------
# The reference: what the kernels compute, in plain PyTorch.
# ---------------------------------------------------------------------------------------------


def layer_norm_reference(x: Tensor, weight, bias, eps: float = 1e-6) -> Tensor:
    """LayerNorm of x over its last dimension, computed in (at least) fp32; weight/bias may be None."""
    compute = torch.promote_types(x.dtype, torch.float32)  # fp64 stays fp64 (gradcheck)
    weight = None if weight is None else weight.to(compute)
    bias = None if bias is None else bias.to(compute)
    return F.layer_norm(x.to(compute), x.shape[-1:], weight, bias, eps).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Kernels.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _layer_norm_forward_kernel(
    X,  # [M, N] input rows: row stride stride_x, unit column stride
    Y,  # [M, N] output, contiguous
    W, B,  # [N] weight and bias (any float dtype; the math is fp32)
    Mean, Rstd,  # [M] fp32 outputs, saved for the backward
    stride_x,
    N,  # row width
    eps,
    BLOCK_N: tl.constexpr,  # next power of two >= N: the whole row in one block
):
    row = tl.program_id(0).to(tl.int64)  # int64: M * N may pass 2**31 elements
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)

    # Pass 1, the mean, summed as x - shift with shift = the row's first value: the raw sum of a row
    # near 1e4 grows to ~1e7, where fp32 values are 0.5 apart; x - shift stays small and exact.
    shift = tl.load(X + row * stride_x).to(tl.float32)
    xs = tl.where(mask, x - shift, 0.0)
    mean_s = tl.sum(xs, axis=0) / N  # mean - shift
    # Pass 2, the variance of the centred values (over registers, not memory).
    xc = tl.where(mask, xs - mean_s, 0.0)  # padded lanes would add mean_s² each to the variance
    var = tl.sum(xc * xc, axis=0) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    mean = shift + mean_s

    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w + b
    tl.store(Y + row * N + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _layer_norm_backward_kernel(
    X, DY,  # [M, N] the forward's input and the output's gradient: row strides below, unit column stride
    DX,  # [M, N] output, contiguous
    W,  # [N]
    Mean, Rstd,  # [M] fp32, from the forward
    DW_partial, DB_partial,  # [G, N] fp32 outputs: row `pid` holds this program's sums over its rows
    stride_x, stride_dy,
    M, N,
    rows_per_program,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)

    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for row in range(row_start, row_end):
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(Mean + row)
        rstd = tl.load(Rstd + row)

        # x - mean, re-centred on its own row mean: the saved fp32 mean is rounded (by up to 5e-4 for
        # a row near 1e4), and that error would shift every x̂ of the row and bias dw.
        xc = tl.where(mask, x - mean, 0.0)
        xhat = tl.where(mask, xc - tl.sum(xc, axis=0) / N, 0.0) * rstd
        g = w * dy  # zero on padded lanes (w and dy load as 0 there)
        dx = (g - tl.sum(g, axis=0) / N - xhat * (tl.sum(g * xhat, axis=0) / N)) * rstd
        tl.store(DX + row * N + cols, dx.to(DX.dtype.element_ty), mask=mask)

        dw += dy * xhat
        db += dy

    tl.store(DW_partial + pid * N + cols, dw, mask=mask)
    tl.store(DB_partial + pid * N + cols, db, mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers, registered as torch.library operators (tinyvit::layer_norm_forward, _backward).
# ---------------------------------------------------------------------------------------------

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_WIDTH = 8192  # a row lives in registers: the widest whose backward does not spill on sm_90


def _unsupported(x: Tensor, weight, bias):
    """Why the kernels cannot take these inputs (a message naming the shapes), or None."""
    N = x.shape[-1] if x.dim() else 0
    if x.dtype not in DTYPES:
        return f"x has dtype {x.dtype}; the kernels take {DTYPES}"
    if not 1 <= N <= MAX_WIDTH:
        return f"row width N={N} (x of shape {tuple(x.shape)}) is outside the kernel's range 1..{MAX_WIDTH}"
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if tuple(p.shape) != (N,) or p.dtype not in DTYPES or p.device != x.device:
            got = f"{p.dtype} {tuple(p.shape)} on {p.device}"
            return f"{name} must be a float tensor of shape ({N},) on {x.device}; got {got}"
    if x.numel() == 0:
        return f"empty input of shape {tuple(x.shape)}"
    return None


def _rows(x: Tensor) -> Tensor:
    """x as [M, N] rows with unit column stride: a view where possible, a copy only where needed."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _num_warps(block_n: int) -> int:
    return min(max(block_n // 256, 1), 16)  # up to ~8 values of a row per thread (16 at N = 8192)


def _backward_programs(device: torch.device) -> int:
    """G, the number of programs of the backward (each sums dw, db over a contiguous chunk of rows).

    Two per SM on a GPU, enough to hide memory latency. G is fixed per device, never by timing, so the
    final .sum(0) over the [G, N] partials adds the same numbers in the same order on every run. The
    interpreter runs programs one by one: a few suffice (and exercise the cross-program reduction).
    """
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8


@register_op("tinyvit::layer_norm_forward")
def layer_norm_forward(
    x: Tensor, weight: Tensor, bias: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the forward kernel: y (x's shape and dtype), mean and rstd (fp32, shape x.shape[:-1])."""
    reason = _unsupported(x, weight, bias)  # the operator can be called directly, without `layer_norm`
    if reason is not None:
        raise ValueError(reason)
    rows = _rows(x)
    M, N = rows.shape
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    mean = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    rstd = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    block_n = triton.next_power_of_2(N)
    wrap_triton(_layer_norm_forward_kernel)[(M,)](
        rows, y, weight.contiguous(), bias.contiguous(), mean, rstd,
        rows.stride(0), N, eps,
        BLOCK_N=block_n, num_warps=_num_warps(block_n),
    )
    return y, mean, rstd


@layer_norm_forward.register_fake
def _(x, weight, bias, eps):
    stats = x.new_empty(x.shape[:-1], dtype=torch.float32)
    return torch.empty_like(x, memory_format=torch.contiguous_format), stats, torch.empty_like(stats)


@register_op("tinyvit::layer_norm_backward")
def layer_norm_backward(
    dy: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the backward kernel: dx (x's shape and dtype), dw and db (weight's dtype)."""
    rows, dy_rows = _rows(x), _rows(dy)
    M, N = rows.shape
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rows_per_program = triton.cdiv(M, min(M, _backward_programs(x.device)))
    programs = triton.cdiv(M, rows_per_program)  # no program left without rows
    dw_partial = torch.empty((programs, N), dtype=torch.float32, device=x.device)
    db_partial = torch.empty((programs, N), dtype=torch.float32, device=x.device)
    block_n = triton.next_power_of_2(N)
    wrap_triton(_layer_norm_backward_kernel)[(programs,)](
        rows, dy_rows, dx, weight.contiguous(), mean, rstd, dw_partial, db_partial,
        rows.stride(0), dy_rows.stride(0), M, N, rows_per_program,
        BLOCK_N=block_n, num_warps=_num_warps(block_n),
    )
    return dx, dw_partial.sum(0).to(weight.dtype), db_partial.sum(0).to(weight.dtype)


@layer_norm_backward.register_fake
def _(dy, x, weight, mean, rstd):
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    return dx, torch.empty_like(weight), torch.empty_like(weight)


# ---------------------------------------------------------------------------------------------
# Autograd: the forward saves x, mean and rstd (fp32); the backward is one kernel and one .sum(0).
# ---------------------------------------------------------------------------------------------


class LayerNormFunction(torch.autograd.Function):
    """(y, mean, rstd) = layer_norm_forward(x, weight, bias, eps), differentiable in x, weight, bias."""

    @staticmethod
    def forward(x, weight, bias, eps):
        return layer_norm_forward(x, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, eps = inputs
        y, mean, rstd = output
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.mark_non_differentiable(mean, rstd)

    @staticmethod
    def backward(ctx, dy, _dmean, _drstd):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = layer_norm_backward(dy, x, weight, mean, rstd)
        return dx, dw, db, None


# The same rule on the operator itself (torch.compile and torch.export see the operator).
layer_norm_forward.register_autograd(
    LayerNormFunction.backward, setup_context=LayerNormFunction.setup_context
)


# ---------------------------------------------------------------------------------------------
# The public function and module.
# ---------------------------------------------------------------------------------------------


def layer_norm(x: Tensor, weight, bias, eps: float = 1e-6, backend: str = "auto") -> Tensor:
    """LayerNorm of x ([..., N]) over its last dimension; weight, bias: [N] or None (ones, zeros).

    backend: "triton" runs the kernels (fp16/bf16/fp32, 1 <= N <= 8192, any leading shape and strides)
    and raises if it cannot; "torch" runs PyTorch's fused F.layer_norm; "reference" runs
    `layer_norm_reference`; "auto" runs the kernels on CUDA tensors (and on CPU tensors under
    TRITON_INTERPRET=1) when they can take the inputs, F.layer_norm otherwise.
    """
    if use_triton(backend, x.device, lambda: _unsupported(x, weight, bias)):
        N = x.shape[-1]
        weight = x.new_ones(N) if weight is None else weight
        bias = x.new_zeros(N) if bias is None else bias
        y, _, _ = LayerNormFunction.apply(x, weight, bias, float(eps))
        return y
    if backend == "reference":
        return layer_norm_reference(x, weight, bias, eps)
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)  # fp32 statistics inside for 16-bit x too


class FusedLayerNorm(nn.Module):
    """A drop-in for nn.LayerNorm(dim, eps) (parameters `weight`, `bias`), computed by `layer_norm` with
    one fixed backend (as FusedAttention is for `attention`)."""

    def __init__(self, dim: int, eps: float = 1e-6, backend: str = "auto"):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.backend = backend
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps, self.backend)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, backend={self.backend!r}"
