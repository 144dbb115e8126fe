"""Fused non-causal multi-head attention, FlashAttention-2 style (Dao 2023, arXiv:2307.08691).

    S = scale · Q Kᵀ,    P = softmax(S) (row-wise),    O = P V,        Q, K, V, O: [B, H, N, D]

The file reads top to bottom: the plain-PyTorch reference, the forward kernel, the three backward
kernels, their launchers (registered as PyTorch operators), autograd, the public function, the module.

Forward (the paper's Algorithm 1). The N × N matrices S and P never exist in memory. A program owns
BLOCK_M query rows and walks over the keys BLOCK_N at a time, keeping per row the running maximum m_i,
the running sum l_i = Σ_j exp(S_ij − m_i) and the unnormalised output acc_i = Σ_j exp(S_ij − m_i) V_j,
all in fp32. When a key block raises the maximum to m_new, what was summed so far is rescaled by
α = exp(m_i − m_new) before the block's terms are added; this "online softmax" gives exactly softmax(S) V
once the last block is in: O_i = acc_i / l_i. The program also saves the log-sum-exp L_i = m_i + log l_i
(fp32, [B, H, N]): with it the backward recomputes any probability as P_ij = exp(S_ij − L_i), so P is
never stored. Exponentials are exp2, the GPU's native instruction: exp(x) = exp2(x · log2 e), and log2 e
is folded into the score scale once (qk_scale = scale · log2 e), so the running statistics live in base 2.

Backward (Algorithm 2), with dO given and P recomputed from L:

    dV = Pᵀ dO          dP = dO Vᵀ          dS = P ∘ (dP − δ)          dQ = dS K · scale
                                                                        dK = dSᵀ Q · scale

where δ_i = Σ_j P_ij dP_ij is the softmax Jacobian's correction. Since Σ_j P_ij dP_ij
= dO_i · Σ_j P_ij V_j = dO_i · O_i, a small preprocess kernel computes δ = rowsum(dO ∘ O) once, in fp32.
dK and dV are sums over query rows, dQ a sum over key rows. FA-2 accumulates dQ with atomic adds, which
makes the result depend on the order programs finish; here two passes each own what they write, so
gradients are bitwise reproducible: the key-block pass holds BLOCK_N keys (K, V, and dK, dV accumulators)
and loops over all query blocks; the query-block pass holds BLOCK_M queries (Q, dO, and a dQ
accumulator) and loops over all key blocks. Each pass recomputes P; that extra Q Kᵀ is the price of
determinism without atomics.

Tails and padding. N need not be a multiple of the blocks (ViT: N = 197, 577). Keys past N get the score
−inf, i.e. probability 0. Query rows past N load zeros and are never stored; they stay finite because
every key block holds at least one real key, so the running maximum is finite from the first block on and
no exp(−inf − (−inf)) = NaN can appear. Head dims that are not a power of two (80, 96) are padded to
BLOCK_D = next_power_of_2(D) by masked loads: zero columns add nothing to Q Kᵀ, and padded output
columns are not stored.

Queries need not be as many as keys: Q is [B, H, N_q, D] and K, V are [B, H, N_k, D]. Nothing above
couples the two lengths: forward programs own query rows and loop over keys, the key-block pass holds
keys and loops over queries, the query-block pass the reverse. A ViT whose classifier reads only the
class token runs its last block with N_q = 1 (DeiT distilled: 2) against N_k = 197 keys (vit.py).

Precision. Statistics (m_i, l_i, L, δ) and accumulators are fp32 for every input dtype. With bf16/fp16
inputs, P and dS are rounded to the input dtype before their matmuls (as in FA-2: the tensor cores take
16-bit operands). With fp32 inputs every tl.dot runs with input_precision="ieee", so fp32 means fp32.
Triton's default for fp32 dots is TF32, which rounds both operands to a 10-bit mantissa (~5e-4 relative
error per product, roughly bf16-quality gradients) and fails comparisons against a true fp32 reference,
most visibly in the backward (evintunador/triton_docs_tutorials#6). There is no TF32 switch; to opt in, set
DOT_PRECISION below to "tf32" (fastest) or "tf32x3" (close to fp32, three TF32 products per dot).
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._dispatch import INTERPRETER, interpreter_bf16_dot_works, register_op, tl, triton, use_triton
from ._dispatch import wrap_triton

# ---------------------------------------------------------------------------------------------
# The reference: what the kernels compute, in plain PyTorch.
# ---------------------------------------------------------------------------------------------


def attention_reference(q: Tensor, k: Tensor, v: Tensor, scale=None) -> Tensor:
    """softmax(q kᵀ · scale) v for q [B, H, N_q, D], k, v [B, H, N_k, D], computed in (at least) fp32.

    The plain formula, materialising the N_q x N_k scores: the test oracle and the first thing to read.
    The model runs PyTorch's fused op (backend="torch") or the Triton kernels, never this.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    compute = torch.promote_types(q.dtype, torch.float32)  # fp64 stays fp64 (gradcheck)
    s = (q.to(compute) @ k.to(compute).transpose(-2, -1)) * scale  # [B, H, N_q, N_k]
    return (s.softmax(dim=-1) @ v.to(compute)).to(q.dtype)  # [B, H, N_q, D]


# ---------------------------------------------------------------------------------------------
# Kernels. Grid: (query or key blocks, H, B). Every [B, H, N, D] tensor comes with its own four
# strides, so views (the q, k, v slices of one fused qkv projection, transposes) need no copy.
# ---------------------------------------------------------------------------------------------

LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * LOG2E)
LN2 = tl.constexpr(0.6931471805599453)  # ln(2): log(x) = log2(x) * LN2


@triton.jit
def _attention_forward_kernel(
    Q,  # [B, H, N_Q, D] queries, strides below
    K, V,  # [B, H, N_K, D] keys and values
    O,  # [B, H, N_Q, D] output
    LSE,  # [B, H, N_Q] fp32 output, contiguous: log-sum-exp of each row of S (natural log)
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    H, N_Q, N_K,  # heads, query rows, keys (any N_Q, N_K >= 1; self-attention: N_Q = N_K = N)
    scale,  # softmax scale, usually D ** -0.5
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_D: tl.constexpr,  # next power of two >= max(D, 16): tl.arange and tl.dot need it
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per loop step
    INPUT_PRECISION: tl.constexpr,  # "ieee" keeps fp32 dots fp32 (see the module docstring)
):
    # This program's (batch, head) slice of every tensor. int64: B * H * N * D may pass 2**31.
    off_b = tl.program_id(2).to(tl.int64)
    off_h = tl.program_id(1).to(tl.int64)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    O += off_b * stride_ob + off_h * stride_oh
    LSE += (off_b * H + off_h) * N_Q

    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N_Q
    mask_d = offs_d < HEAD_DIM
    q_mask = mask_m[:, None] & mask_d[None, :]
    qk_scale = scale * LOG2E  # scores in base 2, for exp2

    q = tl.load(Q + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of the scaled scores
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # running sum of exp2(s - m_i) v

    for start_n in range(0, N_K, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < N_K
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(K + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)

        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
        s = tl.where(mask_n[None, :], s, float("-inf"))  # keys past N_K: probability 0
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: this block has a real key
        alpha = tl.exp2(m_i - m_new)  # rescales the sums made under the old max (0 on the first block)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)
        m_i = m_new

    o = acc / l_i[:, None]
    lse = (m_i + tl.log2(l_i)) * LN2  # back from base 2 to the natural log-sum-exp of S
    o_ptrs = O + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od
    tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=q_mask)
    tl.store(LSE + offs_m, lse, mask=mask_m)


@triton.jit
def _attention_backward_preprocess_kernel(
    O, DO,  # [B, H, N_Q, D]: the forward's output and its gradient, strides below
    Delta,  # [B, H, N_Q] fp32 output, contiguous: δ = rowsum(dO ∘ O)
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    H, N_Q,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    off_b = tl.program_id(2).to(tl.int64)
    off_h = tl.program_id(1).to(tl.int64)
    O += off_b * stride_ob + off_h * stride_oh
    DO += off_b * stride_dob + off_h * stride_doh
    Delta += (off_b * H + off_h) * N_Q

    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N_Q
    mask = mask_m[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(O + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od, mask=mask, other=0.0)
    do = tl.load(DO + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=mask, other=0.0)
    tl.store(Delta + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1), mask=mask_m)


# Past 60 lines for a reason: about 30 of them are the signature (four strides for each of eight
# tensors, passed as the Triton tutorials pass them); the body is the one loop over query blocks
# of FlashAttention-2's backward (Algorithm 2), kept whole so that it reads beside the paper.
@triton.jit
def _attention_backward_dkdv_kernel(
    Q, K, V, DO,  # inputs: Q, DO [B, H, N_Q, D]; K, V [B, H, N_K, D]; strides below
    LSE, Delta,  # [B, H, N_Q] fp32, contiguous: from the forward and the preprocess kernel
    DK, DV,  # [B, H, N_K, D] outputs
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    H, N_Q, N_K,
    scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,  # query rows per loop step (streamed)
    BLOCK_N: tl.constexpr,  # keys per program (held, with their dK, dV accumulators)
    INPUT_PRECISION: tl.constexpr,
):
    # The key-block pass: dV = Pᵀ dO and dK = dSᵀ Q · scale, summed over every query block.
    off_b = tl.program_id(2).to(tl.int64)
    off_h = tl.program_id(1).to(tl.int64)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    DO += off_b * stride_dob + off_h * stride_doh
    DK += off_b * stride_dkb + off_h * stride_dkh
    DV += off_b * stride_dvb + off_h * stride_dvh
    LSE += (off_b * H + off_h) * N_Q
    Delta += (off_b * H + off_h) * N_Q

    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N_K
    mask_d = offs_d < HEAD_DIM
    kv_mask = mask_n[:, None] & mask_d[None, :]
    qk_scale = scale * LOG2E

    k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
    v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    for start_m in range(0, N_Q, BLOCK_M):
        rows = start_m + offs_m
        mask_m = rows < N_Q
        q_mask = mask_m[:, None] & mask_d[None, :]
        q = tl.load(Q + rows[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)
        do = tl.load(DO + rows[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=q_mask, other=0.0)
        lse2 = tl.load(LSE + rows, mask=mask_m, other=0.0) * LOG2E  # base 2, like the scores
        delta = tl.load(Delta + rows, mask=mask_m, other=0.0)

        # Work with Sᵀ ([BLOCK_N, BLOCK_M]) so Pᵀ and dSᵀ come out in the orientation the sums need.
        sT = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION) * qk_scale
        pT = tl.exp2(sT - lse2[None, :])  # P recomputed from the saved log-sum-exp
        # Query rows past N_Q must add nothing (their zero dO and δ make it so already; this keeps it
        # explicit). Keys past N_K get garbage rows of dK, dV here, which are never stored.
        pT = tl.where(mask_m[None, :], pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=INPUT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)  # (dO Vᵀ)ᵀ
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=INPUT_PRECISION)

    dk = dk * scale  # S = scale · Q Kᵀ
    dk_ptrs = DK + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd
    dv_ptrs = DV + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attention_backward_dq_kernel(
    Q, K, V, DO,  # inputs: Q, DO [B, H, N_Q, D]; K, V [B, H, N_K, D]; strides below
    LSE, Delta,  # [B, H, N_Q] fp32, contiguous
    DQ,  # [B, H, N_Q, D] output
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    H, N_Q, N_K,
    scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,  # query rows per program (held, with their dQ accumulator)
    BLOCK_N: tl.constexpr,  # keys per loop step (streamed)
    INPUT_PRECISION: tl.constexpr,
):
    # The query-block pass: dQ = dS K · scale, summed over every key block.
    off_b = tl.program_id(2).to(tl.int64)
    off_h = tl.program_id(1).to(tl.int64)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    DO += off_b * stride_dob + off_h * stride_doh
    DQ += off_b * stride_dqb + off_h * stride_dqh
    LSE += (off_b * H + off_h) * N_Q
    Delta += (off_b * H + off_h) * N_Q

    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N_Q
    mask_d = offs_d < HEAD_DIM
    q_mask = mask_m[:, None] & mask_d[None, :]
    qk_scale = scale * LOG2E

    q = tl.load(Q + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)
    do = tl.load(DO + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=q_mask, other=0.0)
    lse2 = tl.load(LSE + offs_m, mask=mask_m, other=0.0) * LOG2E
    delta = tl.load(Delta + offs_m, mask=mask_m, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    for start_n in range(0, N_K, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < N_K
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(K + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)

        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
        p = tl.exp2(s - lse2[:, None])
        # Keys past N_K load as zeros and so score 0, not -inf: give them probability 0. (Their rows of K
        # are zero as well, so dQ would survive without this; dS should not have to rely on that.)
        p = tl.where(mask_n[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=INPUT_PRECISION)

    dq = dq * scale
    dq_ptrs = DQ + offs_m[:, None] * stride_dqn + offs_d[None, :] * stride_dqd
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=q_mask)


# ---------------------------------------------------------------------------------------------
# Launchers: allocate outputs, pick block sizes, launch. Registered as torch.library operators
# (tinyvit::attention_forward, tinyvit::attention_backward) so torch.compile traces through them.
# ---------------------------------------------------------------------------------------------

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256  # [BLOCK, 256] tiles of q, k, v and accumulators already fill an SM's registers
# tl.dot's input_precision. It only changes fp32 inputs ("ieee": true fp32 products); 16-bit products are
# exact on tensor cores anyway. "tf32" or "tf32x3" here would opt fp32 into TF32 (module docstring).
DOT_PRECISION = "ieee"


def _unsupported(q: Tensor, k: Tensor, v: Tensor):
    """Why the kernels cannot take these inputs (a message naming the shapes), or None."""
    if q.dim() != 4:
        return f"expected q, k, v of shape [B, H, N, D], got q of shape {tuple(q.shape)}"
    if k.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        shapes = ", ".join(str(tuple(x.shape)) for x in (q, k, v))
        return (
            f"k and v must share one shape [B, H, N_k, D], and q be [B, H, N_q, D] with the same B, H, D "
            f"(N_q may differ from N_k); got q, k, v of shapes {shapes}"
        )
    D = q.shape[-1]
    if not 1 <= D <= MAX_HEAD_DIM:
        return (
            f"head dim D={D} (q of shape [B, H, N, D] = {list(q.shape)}) is outside the kernel's range "
            f"1..{MAX_HEAD_DIM}; use backend='torch'"
        )
    if not q.dtype == k.dtype == v.dtype or q.dtype not in DTYPES:
        return f"q, k, v must share one dtype among {DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}"
    if not q.device == k.device == v.device:
        return f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}"
    if q.numel() == 0 or k.numel() == 0:
        return f"empty input: q of shape {tuple(q.shape)}, k of shape {tuple(k.shape)}"
    if q.dtype == torch.bfloat16 and INTERPRETER and not interpreter_bf16_dot_works():
        return "bf16 under the Triton interpreter, whose tl.dot is wrong for bf16 (triton-lang/triton#11584)"
    return None


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))  # tl.dot needs every dimension >= 16


def _forward_config(block_d: int, dtype: torch.dtype):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for the forward.

    Fixed choices, no autotuning (nothing to run at import or on first call). Each was compiled for
    sm_90 (H100) and checked with ptxas: no register spills, at most ~130 KB of shared memory (an H100
    has 227 KB, an A100 163 KB). 16-bit inputs run on tensor cores, BLOCK_M = 128 as in the Triton
    tutorial; 8 warps give each warpgroup 64 query rows. fp32 in "ieee" mode runs on the FMA units with
    twice the bytes per element: smaller tiles, more warps for the larger head dims.
    """
    if dtype == torch.float32:
        return (64, 32, 8, 2) if block_d <= 128 else (32, 32, 16, 1)
    return (128, 64, 8, 3) if block_d <= 128 else (64, 64, 8, 2)


def _backward_config(block_d: int, dtype: torch.dtype):
    """(BLOCK_SMALL, BLOCK_BIG, num_warps, num_stages) for the two backward passes.

    Each pass holds a BIG block (keys with their dK, dV accumulators; or queries with dQ) and streams
    SMALL blocks of the other side, as the Triton tutorial's backward does (32 streamed, 128 held at
    d = 64). The held accumulators cost 2 · BIG · BLOCK_D fp32 registers, so BIG shrinks as D grows.
    Checked as the forward's: no spills on sm_90, at most ~130 KB of shared memory.
    """
    if dtype == torch.float32:
        if block_d <= 64:
            return 32, 64, 8, 2
        return (32, 64, 16, 1) if block_d <= 128 else (32, 32, 16, 1)
    if block_d <= 64:
        return 32, 128, 8, 3
    return (32, 64, 8, 2) if block_d <= 128 else (32, 32, 8, 2)


def _empty_bhnd(x: Tensor) -> Tensor:
    """An uninitialised tensor shaped like x ([B, H, N, D]) but laid out in memory as [B, N, H, D].

    The next step in a ViT merges the heads, `b h n d -> b n (h d)`, which is then a free view instead
    of a copy. The kernels take any strides, so the layout costs them nothing.
    """
    B, H, N, D = x.shape
    return torch.empty((B, N, H, D), dtype=x.dtype, device=x.device).transpose(1, 2)


@register_op("tinyvit::attention_forward")
def attention_forward(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Run the forward kernel: O [B, H, N_q, D] and the log-sum-exp L [B, H, N_q] (fp32, natural log)."""
    reason = _unsupported(q, k, v)  # the operator can be called directly, without `attention`
    if reason is not None:
        raise ValueError(reason)
    B, H, N_q, D = q.shape
    N_k = k.shape[2]
    o = _empty_bhnd(q)
    lse = torch.empty((B, H, N_q), dtype=torch.float32, device=q.device)
    block_d = _block_d(D)
    block_m, block_n, num_warps, num_stages = _forward_config(block_d, q.dtype)
    wrap_triton(_attention_forward_kernel)[(triton.cdiv(N_q, block_m), H, B)](
        q, k, v, o, lse,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(),
        H, N_q, N_k, scale,
        HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
        INPUT_PRECISION=DOT_PRECISION, num_warps=num_warps, num_stages=num_stages,
    )
    return o, lse


@attention_forward.register_fake
def _(q, k, v, scale):
    B, H, N_q, D = q.shape
    return _empty_bhnd(q), q.new_empty((B, H, N_q), dtype=torch.float32)


@register_op("tinyvit::attention_backward")
def attention_backward(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the three backward kernels: dQ [B, H, N_q, D], dK and dV [B, H, N_k, D]. dO may have any strides (even 0)."""
    B, H, N_q, D = q.shape
    N_k = k.shape[2]
    dq, dk, dv = _empty_bhnd(q), _empty_bhnd(k), _empty_bhnd(v)
    delta = torch.empty((B, H, N_q), dtype=torch.float32, device=q.device)
    block_d = _block_d(D)
    small, big, num_warps, num_stages = _backward_config(block_d, q.dtype)
    query_blocks, key_blocks = triton.cdiv(N_q, big), triton.cdiv(N_k, big)

    wrap_triton(_attention_backward_preprocess_kernel)[(query_blocks, H, B)](
        o, do, delta, *o.stride(), *do.stride(), H, N_q,
        HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=big,
    )
    wrap_triton(_attention_backward_dkdv_kernel)[(key_blocks, H, B)](
        q, k, v, do, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
        H, N_q, N_k, scale,
        HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=small, BLOCK_N=big,
        INPUT_PRECISION=DOT_PRECISION, num_warps=num_warps, num_stages=num_stages,
    )
    wrap_triton(_attention_backward_dq_kernel)[(query_blocks, H, B)](
        q, k, v, do, lse, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
        H, N_q, N_k, scale,
        HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=big, BLOCK_N=small,
        INPUT_PRECISION=DOT_PRECISION, num_warps=num_warps, num_stages=num_stages,
    )
    return dq, dk, dv


@attention_backward.register_fake
def _(do, q, k, v, o, lse, scale):
    return _empty_bhnd(q), _empty_bhnd(k), _empty_bhnd(v)


# ---------------------------------------------------------------------------------------------
# Autograd. The forward saves O and L, not P; the backward recomputes P inside the kernels.
# ---------------------------------------------------------------------------------------------


class AttentionFunction(torch.autograd.Function):
    """(O, L) = attention_forward(q, k, v, scale), differentiable in q, k, v. L is not differentiable."""

    @staticmethod
    def forward(q, k, v, scale):
        return attention_forward(q, k, v, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, scale = inputs
        o, lse = output
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale = scale
        ctx.mark_non_differentiable(lse)

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(do, q, k, v, o, lse, ctx.scale)
        return dq, dk, dv, None


# The same rule on the operator itself, so torch.ops.tinyvit.attention_forward is differentiable on its
# own (torch.compile and torch.export see the operator, not the Python class).
attention_forward.register_autograd(AttentionFunction.backward, setup_context=AttentionFunction.setup_context)


# ---------------------------------------------------------------------------------------------
# The public function and module.
# ---------------------------------------------------------------------------------------------


def attention(q: Tensor, k: Tensor, v: Tensor, scale=None, backend: str = "auto") -> Tensor:
    """softmax(q kᵀ · scale) v for q [B, H, N_q, D] and k, v [B, H, N_k, D] (self-attention: N_q = N_k);
    scale defaults to D ** -0.5.

    backend: "triton" runs the fused kernels (any N_q, N_k >= 1, 1 <= D <= 256, fp16/bf16/fp32, any
    strides) and raises if it cannot; "torch" runs PyTorch's fused F.scaled_dot_product_attention;
    "reference" runs `attention_reference`; "auto" runs the kernels on CUDA tensors (and on CPU tensors
    under TRITON_INTERPRET=1) when they can take the inputs, F.scaled_dot_product_attention otherwise.
    """
    if use_triton(backend, q.device, lambda: _unsupported(q, k, v)):
        o, _ = AttentionFunction.apply(q, k, v, q.shape[-1] ** -0.5 if scale is None else float(scale))
        return o
    if backend == "reference":
        return attention_reference(q, k, v, scale)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


class FusedAttention(nn.Module):
    """The attention core, softmax(q kᵀ · scale) v over [B, H, N, D] (no projections, no parameters)."""

    def __init__(self, scale=None, backend: str = "auto"):
        super().__init__()
        self.scale = scale
        self.backend = backend

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return attention(q, k, v, self.scale, self.backend)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, backend={self.backend!r}"
