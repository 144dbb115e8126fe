"""tinyvit.kernels.attention: the Triton kernels against a float64 reference, forward and every gradient.

Without a GPU the kernels run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
triton is imported); with one, the same tests run the compiled kernels. Every comparison goes through
backend="triton" and checks that the fused autograd node was used, so a silent fallback to the
reference cannot pass. The interpreter is slow: shapes stay small and hypothesis runs a fixed,
derandomized set of examples.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from tinyvit import kernels  # noqa: E402
from tinyvit.kernels import AttentionFunction, FusedAttention, attention, attention_reference  # noqa: E402
from tinyvit.kernels import _dispatch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not kernels.INTERPRETER:
    pytest.skip("no GPU and TRITON_INTERPRET=1 was not set before import", allow_module_level=True)

# Per-dtype tolerance (rtol, atol), against a float64 reference computed from the very same (rounded)
# inputs: a tensor passes if max |kernel - reference| <= atol + rtol * max |reference|. rtol is several
# times what the kernels show on unit-normal inputs: fp32 ~1e-6; fp16 ~5e-4 (its epsilon is 9.8e-4: P and
# the outputs are rounded to fp16); bf16 ~5e-3 (epsilon 7.8e-3; the interpreter truncates where a GPU
# rounds). atol, about an epsilon, is for gradients that are zero or nearly (dq, dk at N = 1): there the
# kernel leaves noise, because δ = rowsum(dO∘O) uses O rounded to the input dtype where the exact
# rowsum(P∘dP) would cancel dP exactly (FlashAttention-2 does the same).
TOLERANCE = {
    torch.float32: (2e-5, 1e-5),
    torch.float16: (4e-3, 1e-3),
    torch.bfloat16: (3e-2, 8e-3),
}
# Large logits (q scaled by 30: a one-hot softmax) make that noise large, proportional to |q| in dk. So a
# test that scales q by s scales atol by s, and in fp16/bf16 a tensor also passes if its error is at most
# twice the error of PyTorch's own attention computed in the same dtype: the criterion FlashAttention's
# tests use (Dao-AILab/flash-attention#410, #1849).
TIMES_PYTORCH_ERROR = 2.0
# In fp32 the relative tolerance grows with the logits too: the backward recomputes P = exp(S - L) from
# the saved log-sum-exp (FA-2), whose fp32 rounding is |S| * eps relative in P, where a direct softmax
# is exact to eps. Found by hypothesis 6.170 at q x 30, N=197, D=90: dk off by 2.9e-5 of its largest
# entry, 5x PyTorch's fp32 error (4.0e-4) and just over rtol; so at q x 30 the fp32 rtol is 4x.
FP32_RTOL_PER_LOGIT_SCALE = 1 / 7.5

EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples on every run and in CI
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", autouse=True)
def interpreter_bf16_dot():
    """Fix the interpreter's bf16 tl.dot for this module, so the kernels' bf16 code runs on CPU.

    Triton's interpreter keeps bf16 as raw uint16 and its tl.dot multiplies the bit patterns
    (triton-lang/triton#11584; the kernels refuse bf16 under such an interpreter, see
    test_bf16_refused_by_a_broken_interpreter). The fix converts bf16 operands to fp32 first, exactly
    (bf16 is the top half of an fp32), as the upstream PR #11585 proposes. Nothing in the kernel changes.
    """
    if not kernels.INTERPRETER or _dispatch.interpreter_bf16_dot_works():
        yield
        return
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_dot

    def as_fp32(h):
        if h.dtype != tl.bfloat16:
            return h
        return interpreter.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot(self, a, b, *rest):
        return original(self, as_fp32(a), as_fp32(b), *rest)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)
        _dispatch.interpreter_bf16_dot_works.cache_clear()
        assert _dispatch.interpreter_bf16_dot_works()
        yield original
    _dispatch.interpreter_bf16_dot_works.cache_clear()


# ---------------------------------------------------------------------------------------------
# Inputs in several memory layouts, and the comparison against float64.
# ---------------------------------------------------------------------------------------------

LAYOUTS = ("contiguous", "fused_qkv", "heads_last", "d_major", "mixed")


def randn(*shape, dtype=torch.float32, seed=0):
    """Seeded normal values on DEVICE (drawn on the CPU, so the same on every machine)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(DEVICE, dtype)


def make_qkv(B, H, N, D, dtype, layout, logit_scale=1.0, seed=0):
    """q, k, v [B, H, N, D] holding the same values in every layout (views of one leaf with grad).

    fused_qkv: the views a ViT takes of one nn.Linear output, [B, N, 3, H, D] permuted (no copy).
    heads_last: memory [B, N, H, D]. d_major: memory [B, H, D, N], so stride(-1) = N, not 1.
    mixed: q, k, v each in a different layout (catches a kernel that reads K with V's strides).
    """
    values = randn(3, B, H, N, D, dtype=torch.float64, seed=seed)
    values[0] *= logit_scale  # large |q| gives large logits, a sharply peaked softmax
    values = values.to(dtype)

    def laid_out(x, how):  # x: [B, H, N, D]; the same values, other strides
        if how == "heads_last":
            return x.transpose(1, 2).contiguous().transpose(1, 2)
        if how == "d_major":
            return x.transpose(2, 3).contiguous().transpose(2, 3)
        return x.contiguous()

    if layout == "fused_qkv":
        leaf = values.permute(1, 3, 0, 2, 4).contiguous().requires_grad_()  # [B, N, 3, H, D]
        return (leaf, *leaf.permute(2, 0, 3, 1, 4).unbind(0))
    hows = ("contiguous", "d_major", "heads_last") if layout == "mixed" else (layout,) * 3
    leaves = [laid_out(x, how).requires_grad_() for x, how in zip(values.unbind(0), hows)]
    return (leaves, *leaves)


def run_triton(q, k, v, do, scale=None):
    """Output and (dq, dk, dv) through backend="triton", asserting the fused node really ran."""
    o = attention(q, k, v, scale=scale, backend="triton")
    assert type(o.grad_fn).__name__ == "AttentionFunctionBackward", "not the Triton path"
    return (o, *torch.autograd.grad(o, (q, k, v), do))


def run_reference(q, k, v, do, scale=None, dtype=torch.float64):
    """Output and gradients of plain PyTorch attention computed in `dtype` throughout."""
    q, k, v = (x.detach().to(dtype).requires_grad_() for x in (q, k, v))
    o = attention_reference(q, k, v, scale) if dtype == torch.float64 else naive_attention(q, k, v, scale)
    return (o, *torch.autograd.grad(o, (q, k, v), do.to(dtype)))


def naive_attention(q, k, v, scale=None):  # what a user's PyTorch code does in bf16/fp16: no upcast
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1) @ v


def assert_close(actual, expected, dtype, name="", input_scale=1.0, pytorch_error=0.0):
    rtol, atol = TOLERANCE[dtype]
    if dtype == torch.float32:
        rtol *= max(1.0, input_scale * FP32_RTOL_PER_LOGIT_SCALE)
    err = (actual.double() - expected.double()).abs().max().item()
    bound = max(atol * input_scale + rtol * expected.abs().max().item(), TIMES_PYTORCH_ERROR * pytorch_error)
    baseline = f", PyTorch's error in {dtype}: {pytorch_error:.2e}" if pytorch_error else ""
    assert err <= bound, f"{name}: max error {err:.2e} > bound {bound:.2e}{baseline}"


def check_against_reference(q, k, v, do, scale=None, input_scale=1.0):
    got = run_triton(q, k, v, do, scale)
    want = run_reference(q, k, v, do, scale)
    baseline = run_reference(q, k, v, do, scale, q.dtype) if q.dtype != torch.float32 else [None] * 4
    for name, a, e, b in zip(("out", "dq", "dk", "dv"), got, want, baseline):
        assert a.dtype == q.dtype and a.shape == e.shape, name
        assert torch.isfinite(a).all(), f"{name} has NaN/inf"
        pytorch_error = 0.0 if b is None else (b.double() - e).abs().max().item()
        assert_close(a, e, q.dtype, name, input_scale, pytorch_error)
    return got


# ---------------------------------------------------------------------------------------------
# Property test: forward and every gradient against float64, over shapes, dtypes, layouts, logits.
# ---------------------------------------------------------------------------------------------


@EXAMPLES
@given(
    BH=st.sampled_from([(1, 1), (1, 2), (2, 1)]),  # B = H = 2: the explicit example and the layout test
    N=st.one_of(st.sampled_from([1, 2, 16, 17, 64, 197, 257]), st.integers(1, 300)),
    D=st.one_of(st.sampled_from([16, 32, 64, 80, 96]), st.integers(1, 256)),
    dtype=st.sampled_from(list(TOLERANCE)),
    layout=st.sampled_from(LAYOUTS),
    logit_scale=st.sampled_from([1.0, 30.0]),
    custom_scale=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(BH=(2, 2), N=197, D=64, dtype=torch.bfloat16, layout="fused_qkv", logit_scale=1.0,
         custom_scale=False, seed=0)  # ViT-B/16: 197 tokens, head dim 64
@example(BH=(1, 2), N=197, D=80, dtype=torch.float16, layout="mixed", logit_scale=30.0,
         custom_scale=False, seed=1)  # ViT-H: head dim 80
@example(BH=(1, 1), N=257, D=96, dtype=torch.float32, layout="d_major", logit_scale=1.0,
         custom_scale=True, seed=2)
@example(BH=(1, 1), N=1, D=16, dtype=torch.float32, layout="contiguous", logit_scale=30.0,
         custom_scale=False, seed=3)
def test_matches_float64_reference(BH, N, D, dtype, layout, logit_scale, custom_scale, seed):
    B, H = BH
    if B * H * N * D > 60_000:  # keep the interpreter quick: large N and large D not together
        N = max(1, 60_000 // (B * H * D))
    _, q, k, v = make_qkv(B, H, N, D, dtype, layout, logit_scale, seed)
    do = randn(B, N, H, D, dtype=dtype, seed=seed + 1).transpose(1, 2)  # dO with strides of its own
    check_against_reference(q, k, v, do, scale=0.3 if custom_scale else None, input_scale=logit_scale)


# ---------------------------------------------------------------------------------------------
# Targeted properties.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_layout_invariance(dtype):
    """The same values in five layouts give bitwise the same output and gradients."""
    B, H, N, D = 2, 2, 70, 80
    do = randn(B, H, N, D, dtype=dtype, seed=7)
    results = {}
    for layout in LAYOUTS:
        _, q, k, v = make_qkv(B, H, N, D, dtype, layout, seed=11)
        results[layout] = run_triton(q, k, v, do)
    for layout, got in results.items():
        for name, a, b in zip(("out", "dq", "dk", "dv"), got, results["contiguous"]):
            assert torch.equal(a, b), f"{layout}: {name} differs from the contiguous layout"


def test_fused_qkv_views_need_no_copy_and_get_gradients():
    """The ViT layout: q, k, v are views of one [B, N, 3, H, D] tensor; grads land in it."""
    B, H, N, D = 2, 3, 197, 64
    qkv, q, k, v = make_qkv(B, H, N, D, torch.float32, "fused_qkv", seed=5)
    assert not q.is_contiguous() and q.stride(-1) == 1 and q.data_ptr() != k.data_ptr()
    o = attention(q, k, v, backend="triton")
    o.sum().backward()  # dO arrives with all strides 0 (an expanded scalar): read through its strides
    _, *grads = run_reference(q, k, v, torch.ones(B, H, N, D))
    want = torch.stack(grads).permute(1, 3, 0, 2, 4)  # [B, N, 3, H, D]
    assert_close(qkv.grad, want, torch.float32, "d qkv")


def test_output_layout_merges_heads_for_free():
    """O is allocated as [B, N, H, D] memory, so `b h n d -> b n (h d)` is a view, not a copy."""
    _, q, k, v = make_qkv(1, 2, 9, 16, torch.float32, "contiguous")
    o = attention(q, k, v, backend="triton")
    merged = o.transpose(1, 2).reshape(1, 9, 32)
    assert merged.untyped_storage().data_ptr() == o.untyped_storage().data_ptr()


def test_log_sum_exp_is_saved_in_fp32():
    """AttentionFunction returns (O, L) with L = logsumexp(scale · q kᵀ), fp32, natural log."""
    _, q, k, v = make_qkv(2, 1, 33, 24, torch.bfloat16, "contiguous", logit_scale=30.0)
    o, lse = AttentionFunction.apply(q, k, v, 0.2)
    assert lse.dtype == torch.float32 and lse.shape == (2, 1, 33) and not lse.requires_grad
    want = torch.logsumexp(q.double() @ k.double().transpose(-2, -1) * 0.2, dim=-1)
    assert (lse.double() - want).abs().max() <= 1e-5 * want.abs().max()


def test_backward_is_deterministic():
    """No atomics: two backward passes give bitwise-identical gradients."""
    _, q, k, v = make_qkv(2, 2, 197, 64, torch.float16, "fused_qkv", seed=3)
    do = randn(2, 2, 197, 64, dtype=torch.float16, seed=4)
    first, second = run_triton(q, k, v, do), run_triton(q, k, v, do)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_tail_rows_are_finite_for_every_block_boundary():
    """N just under, at and just over block multiples (16, 32, 64, 128): no NaN from the padded tails."""
    for N in (15, 16, 17, 31, 33, 63, 65, 127, 129):
        _, q, k, v = make_qkv(1, 1, N, 32, torch.float32, "contiguous", logit_scale=30.0, seed=N)
        check_against_reference(q, k, v, torch.ones(1, 1, N, 32, device=DEVICE), input_scale=30.0)


def test_autograd_function_and_operator_agree():
    """AttentionFunction and the registered operator (with its own autograd) give the same results."""
    _, q, k, v = make_qkv(1, 2, 40, 32, torch.float32, "contiguous", seed=9)
    do = randn(1, 2, 40, 32, seed=10)
    o1, _ = AttentionFunction.apply(q, k, v, 0.25)
    o2, _ = torch.ops.tinyvit.attention_forward(q, k, v, 0.25)
    first = (o1, *torch.autograd.grad(o1, (q, k, v), do))
    second = (o2, *torch.autograd.grad(o2, (q, k, v), do))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_operator_registration_passes_opcheck():
    """Schema, fake (shape-only) implementations, autograd registration and AOT tracing of the ops."""
    _, q, k, v = make_qkv(1, 2, 20, 16, torch.float32, "heads_last")
    torch.library.opcheck(torch.ops.tinyvit.attention_forward.default, (q, k, v, 0.25))
    o, lse = torch.ops.tinyvit.attention_forward(q.detach(), k.detach(), v.detach(), 0.25)
    do = torch.randn_like(o)
    args = (do, q.detach(), k.detach(), v.detach(), o, lse, 0.25)
    torch.library.opcheck(torch.ops.tinyvit.attention_backward.default, args)


def test_torch_compile_traces_without_graph_breaks():
    """fullgraph=True fails on any graph break; aot_eager also runs the fake implementations and autograd."""
    _, q, k, v = make_qkv(1, 2, 21, 16, torch.float32, "fused_qkv", seed=12)

    def f(q, k, v):
        return attention(q, k, v, backend="triton").square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    want = torch.autograd.grad(f(q, k, v), (q, k, v))
    got = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_module_wraps_the_function():
    _, q, k, v = make_qkv(1, 1, 10, 16, torch.float32, "contiguous")
    module = FusedAttention(scale=0.5, backend="triton")
    assert torch.equal(module(q, k, v), attention(q, k, v, scale=0.5, backend="triton"))
    assert "backend='triton'" in repr(module) and list(module.parameters()) == []


# ---------------------------------------------------------------------------------------------
# Fewer queries than keys: a ViT's last block asks for the class (and distillation) token only.
# ---------------------------------------------------------------------------------------------


def make_q_kv(B, H, N_q, N_k, D, dtype, layout, seed=0):
    """q [B, H, N_q, D] and k, v [B, H, N_k, D]; "fused_qkv": q is the first N_q tokens of the same
    fused projection k and v are views of (the model's reduced last block computes q apart, but a
    prefix view of one buffer is the harder case for strides)."""
    _, q, k, v = make_qkv(B, H, N_k, D, dtype, layout, seed=seed)
    return q[:, :, :N_q], k, v


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    N_q=st.sampled_from([1, 2, 3, 65]),
    N_k=st.sampled_from([1, 17, 197]),
    D=st.sampled_from([16, 64, 80]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    layout=st.sampled_from(["contiguous", "fused_qkv", "mixed"]),
)
@example(N_q=1, N_k=197, D=64, dtype=torch.float32, layout="fused_qkv")
@example(N_q=2, N_k=197, D=64, dtype=torch.float32, layout="contiguous")
def test_fewer_queries_than_keys_match_float64_reference(N_q, N_k, D, dtype, layout):
    q, k, v = make_q_kv(2, 2, N_q, N_k, D, dtype, layout)
    do = randn(2, 2, N_q, D, dtype=dtype, seed=9)
    o, dq, dk, dv = check_against_reference(q, k, v, do)
    assert o.shape == dq.shape == (2, 2, N_q, D) and dk.shape == dv.shape == (2, 2, N_k, D)


def test_fewer_queries_equal_the_first_rows_of_full_attention():
    """Rows of the output are independent: N_q queries give the first N_q rows of the N_k x N_k result."""
    _, q, k, v = make_qkv(1, 2, 197, 64, torch.float32, "contiguous", seed=3)
    full = attention(q, k, v, backend="triton")
    part = attention(q[:, :, :2], k, v, backend="triton")
    torch.testing.assert_close(part, full[:, :, :2], rtol=1e-6, atol=1e-6)


def test_query_and_key_shapes_must_agree_on_b_h_d():
    q, k = randn(1, 2, 3, 16), randn(1, 2, 9, 16)
    with pytest.raises(ValueError, match="share one shape"):
        attention(q, k, k[:, :1], backend="triton")
    with pytest.raises(ValueError, match="same B, H, D"):
        attention(randn(1, 3, 3, 16), k, k, backend="triton")


# ---------------------------------------------------------------------------------------------
# What the kernel refuses, and how backends resolve.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("D", [0, 257, 512])
def test_head_dim_outside_1_to_256_is_rejected_by_name(D):
    q = torch.randn(1, 2, 5, D, device=DEVICE)
    with pytest.raises(ValueError, match=rf"head dim D={D} .*\[1, 2, 5, {D}\]"):
        attention(q, q, q, backend="triton")


def test_auto_falls_back_to_pytorchs_fused_op_for_what_the_kernel_cannot_take():
    for q in (randn(1, 1, 5, 300), randn(1, 1, 5, 16, dtype=torch.float64)):
        o = attention(q, q, q, backend="auto")
        assert o.grad_fn is None
        assert torch.equal(o, torch.nn.functional.scaled_dot_product_attention(q, q, q))
        torch.testing.assert_close(o, attention_reference(q, q, q))


def test_torch_and_reference_backends_agree_and_reference_is_the_plain_formula():
    """backend="torch" is PyTorch's fused op, "reference" the formula; neither goes through Triton."""
    q, k, v = randn(2, 3, 2, 24, seed=1), randn(2, 3, 9, 24, seed=2), randn(2, 3, 9, 24, seed=3)
    fused = attention(q, k, v, scale=0.3, backend="torch")
    plain = attention(q, k, v, scale=0.3, backend="reference")
    assert torch.equal(plain, ((q @ k.transpose(-2, -1)) * 0.3).softmax(-1) @ v)
    assert fused.shape == (2, 3, 2, 24)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_bad_inputs_and_backend_names_raise():
    q = randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match="backend='cuda'"):
        attention(q, q, q, backend="cuda")
    with pytest.raises(ValueError, match="same shape|share one shape"):
        attention(q, q[:, :, :4], q, backend="triton")
    with pytest.raises(ValueError, match="dtype"):
        attention(q, q.double(), q, backend="triton")
    with pytest.raises(ValueError, match=r"\[B, H, N, D\]"):
        attention(q[0], q[0], q[0], backend="triton")
    with pytest.raises(ValueError, match="head dim D=300"):  # the operator checks too
        torch.ops.tinyvit.attention_forward(*[randn(1, 1, 4, 300)] * 3, 0.1)


def test_auto_uses_the_kernel_where_it_can():
    """Under the interpreter (or on a GPU), backend="auto" takes the Triton path for supported inputs."""
    _, q, k, v = make_qkv(1, 1, 12, 16, torch.float32, "contiguous")
    o = attention(q, k, v, backend="auto")
    assert type(o.grad_fn).__name__ == "AttentionFunctionBackward"


def test_cpu_tensor_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_dispatch, "INTERPRETER", False)
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        attention(q, q, q, backend="triton")
    assert attention(q, q, q, backend="auto").grad_fn is None  # the reference, silently


def test_bf16_refused_by_a_broken_interpreter(interpreter_bf16_dot):
    """With the interpreter's own (broken) bf16 dot, bf16 is refused, not computed wrongly."""
    if interpreter_bf16_dot is None:
        pytest.skip("needs the interpreter with its bf16 tl.dot bug (Triton <= 3.8)")
    from triton.runtime import interpreter

    q = torch.randn(1, 1, 16, 16, dtype=torch.bfloat16)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(interpreter.InterpreterBuilder, "create_dot", interpreter_bf16_dot)
        _dispatch.interpreter_bf16_dot_works.cache_clear()
        with pytest.raises(ValueError, match="11584"):
            attention(q, q, q, backend="triton")
        assert attention(q, q, q, backend="auto").grad_fn is None
    _dispatch.interpreter_bf16_dot_works.cache_clear()


_WITHOUT_INTERPRETER = """
import torch
import tinyvit.kernels as K
assert not K.INTERPRETER and K.HAS_TRITON == HAS_TRITON and not torch.cuda.is_initialized()
x = torch.randn(1, 2, 5, 16)
w = torch.ones(16)
assert torch.equal(K.attention(x, x, x), torch.nn.functional.scaled_dot_product_attention(x, x, x))
torch.testing.assert_close(K.attention(x, x, x), K.attention_reference(x, x, x))
assert torch.equal(K.layer_norm(x, w, w), K.layer_norm_reference(x, w, w))
for call in (lambda: K.attention(x, x, x, backend="triton"), lambda: K.layer_norm(x, w, w, backend="triton")):
    try:
        call()
    except RuntimeError as e:
        assert EXPECTED in str(e), str(e)
    else:
        raise AssertionError("backend='triton' ran")
print("ok")
"""


@pytest.mark.parametrize("block_triton", [False, True], ids=["no-interpreter", "no-triton"])
def test_import_and_dispatch_in_a_fresh_process(block_triton):
    """A CPU process without TRITON_INTERPRET (and one where triton cannot be imported at all):
    the import works, "auto" gives PyTorch's fused op, "triton" raises a RuntimeError that says why."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine CPU-tensor dispatch is covered in-process")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    prelude = "import sys; sys.modules['triton'] = None\n" if block_triton else ""
    expected = "triton is not installed" if block_triton else "TRITON_INTERPRET=1"
    script = prelude + f"EXPECTED, HAS_TRITON = {expected!r}, {not block_triton}\n" + _WITHOUT_INTERPRETER
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
