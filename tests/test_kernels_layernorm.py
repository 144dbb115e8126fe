"""tinyvit.kernels.layer_norm: the Triton kernels against a float64 reference, forward and every gradient.

Without a GPU the kernels run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
triton is imported); with one, the same tests run the compiled kernels. Comparisons go through
backend="triton" and check that the fused autograd node ran. The interpreter runs one program per row,
slowly: row counts stay small and hypothesis runs a fixed, derandomized set of examples.
"""
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("triton")

from tinyvit import kernels  # noqa: E402
from tinyvit.kernels import FusedLayerNorm, LayerNormFunction, layer_norm, layer_norm_reference  # noqa: E402
from tinyvit.kernels import _dispatch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not kernels.INTERPRETER:
    pytest.skip("no GPU and TRITON_INTERPRET=1 was not set before import", allow_module_level=True)

# Per-dtype tolerance (rtol, atol) against a float64 reference computed from the very same (rounded)
# inputs: a tensor passes if max |kernel - reference| <= atol + rtol * max |reference|. rtol is several
# times what the kernels show: fp32 ~2e-7 (also for rows near 1e4); fp16 ~4e-4 (the outputs are rounded
# to fp16, epsilon 9.8e-4); bf16 ~7e-3 (epsilon 7.8e-3; the interpreter truncates where a GPU rounds).
# The statistics and the row sums are fp32 for every dtype, so only the final rounding differs.
TOLERANCE = {
    torch.float32: (2e-6, 1e-6),
    torch.float16: (4e-3, 1e-4),
    torch.bfloat16: (2e-2, 1e-3),
}

EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples on every run and in CI
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

WIDTHS = [1, 80, 192, 768, 1000, 1280, 3073]  # ViT widths and awkward ones (3073 pads to 4096)
LAYOUTS = ("contiguous", "transposed", "sliced", "strided_rows")


def randn(*shape, dtype=torch.float32, seed=0):
    """Seeded normal values on DEVICE (drawn on the CPU, so the same on every machine)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(DEVICE, dtype)


def make_x(shape, dtype, layout, offset=0.0, seed=0):
    """x of `shape` ([..., N]) holding the same values in every layout.

    transposed: the last dim has stride M (x is a transposed [N, M] tensor; the launcher must copy).
    sliced: rows of a wider tensor (row stride N + 7, no copy). strided_rows: every other row of a
    taller tensor, so the leading dims cannot be merged into one (reshape copies).
    """
    values = (randn(*shape, dtype=torch.float64, seed=seed) + offset).to(dtype)
    N = shape[-1]
    if layout == "transposed":
        return values.reshape(-1, N).t().contiguous().t().reshape(shape)
    if layout == "sliced":
        wide = torch.zeros(*shape[:-1], N + 7, dtype=dtype, device=DEVICE)
        wide[..., :N] = values
        return wide[..., :N]
    if layout == "strided_rows" and len(shape) >= 2:
        tall = torch.zeros(*shape[:-2], 2 * shape[-2], N, dtype=dtype, device=DEVICE)
        tall[..., ::2, :] = values
        return tall[..., ::2, :]
    return values.contiguous()


def make_params(N, dtype, seed=0):
    weight = (1 + 0.5 * randn(N, dtype=torch.float64, seed=seed + 100)).to(dtype)
    bias = randn(N, dtype=dtype, seed=seed + 200)
    return weight, bias


def run_triton(x, weight, bias, dy, eps=1e-6):
    """y and (dx, dw, db) through backend="triton", asserting the fused node really ran."""
    inputs = [t.detach().requires_grad_() for t in (x, weight, bias)]
    y = layer_norm(*inputs, eps, backend="triton")
    assert type(y.grad_fn).__name__ == "LayerNormFunctionBackward", "not the Triton path"
    return (y, *torch.autograd.grad(y, inputs, dy))


def run_reference64(x, weight, bias, dy, eps=1e-6):
    inputs = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    y = layer_norm_reference(*inputs, eps)
    return (y, *torch.autograd.grad(y, inputs, dy.double()))


def assert_close(actual, expected, dtype, name=""):
    rtol, atol = TOLERANCE[dtype]
    err = (actual.double() - expected.double()).abs().max().item()
    bound = atol + rtol * expected.abs().max().item()
    assert err <= bound, f"{name}: max error {err:.2e} > bound {bound:.2e}"


def check_against_reference(x, weight, bias, dy, eps=1e-6):
    got = run_triton(x, weight, bias, dy, eps)
    want = run_reference64(x, weight, bias, dy, eps)
    for name, a, e, like in zip(("y", "dx", "dw", "db"), got, want, (x, x, weight, bias)):
        assert a.dtype == like.dtype and a.shape == like.shape, name
        assert torch.isfinite(a).all(), f"{name} has NaN/inf"
        assert_close(a, e, x.dtype if name in ("y", "dx") else weight.dtype, name)
    return got


# ---------------------------------------------------------------------------------------------
# Property test: forward and every gradient against float64.
# ---------------------------------------------------------------------------------------------


@EXAMPLES
@given(
    leading=st.lists(st.integers(1, 6), min_size=0, max_size=3),
    N=st.one_of(st.sampled_from(WIDTHS), st.integers(1, 4100)),
    dtype=st.sampled_from(list(TOLERANCE)),
    layout=st.sampled_from(LAYOUTS),
    offset=st.sampled_from([0.0, 1e4]),
    seed=st.integers(0, 2**16),
)
@example(leading=[1, 197], N=768, dtype=torch.bfloat16, layout="contiguous", offset=0.0, seed=0)
@example(leading=[3, 5], N=1000, dtype=torch.float32, layout="strided_rows", offset=1e4, seed=1)
@example(leading=[7], N=3073, dtype=torch.float16, layout="transposed", offset=0.0, seed=2)
@example(leading=[2, 9], N=80, dtype=torch.float32, layout="sliced", offset=0.0, seed=3)
@example(leading=[], N=1280, dtype=torch.bfloat16, layout="contiguous", offset=0.0, seed=4)
def test_matches_float64_reference(leading, N, dtype, layout, offset, seed):
    rows = 1
    for n in leading:
        rows *= n
    if rows * N > 200_000:  # keep the interpreter quick
        leading = [max(1, 200_000 // N)]
    if dtype != torch.float32:
        offset = 0.0  # 1e4 + noise is not representable in 16 bits: the spread would round away
    shape = (*leading, N)
    x = make_x(shape, dtype, layout, offset, seed)
    weight, bias = make_params(N, dtype, seed)
    dy = randn(*shape, dtype=dtype, seed=seed + 1)
    check_against_reference(x, weight, bias, dy)


# ---------------------------------------------------------------------------------------------
# Targeted properties.
# ---------------------------------------------------------------------------------------------


def test_large_offset_rows_keep_fp32_accuracy():
    """Rows near 1e4 with unit spread: the two-pass variance keeps fp32 accuracy, where the one-pass
    E[x²] - E[x]² would lose it all (fp32 values near 1e8 are 8 apart)."""
    x = make_x((16, 768), torch.float32, "contiguous", offset=1e4, seed=5)
    weight, bias = make_params(768, torch.float32, seed=5)
    check_against_reference(x, weight, bias, randn(16, 768, seed=6))


def test_dw_db_are_bitwise_reproducible():
    """No atomics, no locks: repeated backward passes give bitwise-identical dw and db (and dx)."""
    x = make_x((3, 37, 192), torch.float32, "contiguous", seed=7)  # 111 rows: chunks of unequal size
    weight, bias = make_params(192, torch.float32, seed=7)
    dy = randn(3, 37, 192, seed=8)
    first, second, third = (run_triton(x, weight, bias, dy) for _ in range(3))
    for a, b, c in zip(first[1:], second[1:], third[1:]):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_statistics_are_saved_in_fp32():
    x = make_x((4, 5, 96), torch.bfloat16, "contiguous", offset=0.0, seed=9)
    weight, bias = make_params(96, torch.bfloat16)
    y, mean, rstd = LayerNormFunction.apply(x, weight, bias, 1e-6)
    assert mean.dtype == rstd.dtype == torch.float32 and mean.shape == rstd.shape == (4, 5)
    var, want_mean = torch.var_mean(x.double(), dim=-1, unbiased=False)
    assert torch.allclose(mean.double(), want_mean, rtol=0, atol=1e-6)
    assert torch.allclose(rstd.double(), (var + 1e-6).rsqrt(), rtol=1e-5, atol=0)


def test_weight_and_bias_may_be_none():
    x = make_x((6, 80), torch.float32, "contiguous", seed=10).requires_grad_()
    y = layer_norm(x, None, None, backend="triton")
    assert type(y.grad_fn).__name__ == "LayerNormFunctionBackward"
    assert_close(y, layer_norm_reference(x.double(), None, None), torch.float32, "y")
    ones, zeros = torch.ones(80, device=DEVICE), torch.zeros(80, device=DEVICE)
    assert torch.equal(y, layer_norm(x, ones, zeros, backend="triton"))


def test_gradient_with_zero_strides():
    """y.sum().backward() hands the backward an expanded dy (all strides 0)."""
    x = make_x((2, 9, 80), torch.float32, "contiguous", seed=11).requires_grad_()
    weight, bias = (p.requires_grad_() for p in make_params(80, torch.float32, seed=11))
    layer_norm(x, weight, bias, backend="triton").sum().backward()
    want = run_reference64(x, weight, bias, torch.ones(2, 9, 80, device=DEVICE))
    for name, a, e in zip(("dx", "dw", "db"), (x.grad, weight.grad, bias.grad), want[1:]):
        assert_close(a, e, torch.float32, name)


def test_fp32_parameters_with_bf16_activations():
    """Mixed precision: fp32 weight and bias, bf16 x; y is bf16, dw and db come back in fp32."""
    x = make_x((5, 192), torch.bfloat16, "contiguous", seed=12)
    weight, bias = make_params(192, torch.float32, seed=12)
    dy = randn(5, 192, dtype=torch.bfloat16, seed=13)
    y, dx, dw, db = run_triton(x, weight, bias, dy)
    assert y.dtype == dx.dtype == torch.bfloat16 and dw.dtype == db.dtype == torch.float32
    want = run_reference64(x, weight, bias, dy)
    for name, a, e in zip(("y", "dx", "dw", "db"), (y, dx, dw, db), want):
        assert_close(a, e, torch.bfloat16, name)


def test_module_is_a_drop_in_for_nn_layer_norm():
    torch_ln = nn.LayerNorm(768, eps=1e-6).to(DEVICE)
    with torch.no_grad():
        torch_ln.weight.copy_(make_params(768, torch.float32)[0])
        torch_ln.bias.normal_()
    ours = FusedLayerNorm(768, eps=1e-6, backend="triton").to(DEVICE)
    assert list(ours.state_dict()) == ["weight", "bias"]
    ours.load_state_dict(torch_ln.state_dict())  # strict: same names and shapes
    x = make_x((2, 7, 768), torch.float32, "contiguous", seed=14)
    y = ours(x)
    assert type(y.grad_fn).__name__ == "LayerNormFunctionBackward"
    assert_close(y, torch_ln(x), torch.float32, "y")
    assert "768, eps=1e-06, backend='triton'" in repr(ours)


def test_autograd_function_and_operator_agree():
    x = make_x((3, 4, 80), torch.float32, "sliced", seed=15).requires_grad_()
    weight, bias = (p.requires_grad_() for p in make_params(80, torch.float32, seed=15))
    dy = randn(3, 4, 80, seed=16)
    y1, _, _ = LayerNormFunction.apply(x, weight, bias, 1e-5)
    y2, _, _ = torch.ops.tinyvit.layer_norm_forward(x, weight, bias, 1e-5)
    g1 = torch.autograd.grad(y1, (x, weight, bias), dy)
    g2 = torch.autograd.grad(y2, (x, weight, bias), dy)
    for a, b in zip((y1, *g1), (y2, *g2)):
        assert torch.equal(a, b)


def test_operator_registration_passes_opcheck():
    x = make_x((3, 5, 40), torch.float32, "transposed", seed=17).requires_grad_()
    weight, bias = (p.requires_grad_() for p in make_params(40, torch.float32, seed=17))
    torch.library.opcheck(torch.ops.tinyvit.layer_norm_forward.default, (x, weight, bias, 1e-6))
    y, mean, rstd = torch.ops.tinyvit.layer_norm_forward(x.detach(), weight.detach(), bias.detach(), 1e-6)
    args = (torch.randn_like(y), x.detach(), weight.detach(), mean, rstd)
    torch.library.opcheck(torch.ops.tinyvit.layer_norm_backward.default, args)


def test_torch_compile_traces_without_graph_breaks():
    x = make_x((2, 3, 48), torch.float32, "contiguous", seed=18).requires_grad_()
    weight, bias = (p.requires_grad_() for p in make_params(48, torch.float32, seed=18))

    def f(x, weight, bias):
        return layer_norm(x, weight, bias, backend="triton").square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    want = torch.autograd.grad(f(x, weight, bias), (x, weight, bias))
    got = torch.autograd.grad(compiled(x, weight, bias), (x, weight, bias))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# What the kernel refuses, and how backends resolve.
# ---------------------------------------------------------------------------------------------


def test_width_beyond_the_limit_is_rejected_by_name():
    x = torch.randn(2, 8193, device=DEVICE)
    with pytest.raises(ValueError, match=r"N=8193 .*\(2, 8193\)"):
        layer_norm(x, None, None, backend="triton")
    y = layer_norm(x, None, None, backend="auto")  # falls back to the reference
    assert y.grad_fn is None and torch.equal(y, layer_norm_reference(x, None, None))


def test_bad_inputs_and_backend_names_raise():
    x = torch.randn(3, 8, device=DEVICE)
    with pytest.raises(ValueError, match="backend='fast'"):
        layer_norm(x, None, None, backend="fast")
    with pytest.raises(ValueError, match=r"weight must be .* shape \(8,\)"):
        layer_norm(x, torch.ones(7, device=DEVICE), None, backend="triton")
    with pytest.raises(ValueError, match="dtype"):
        layer_norm(x.double(), None, None, backend="triton")
    with pytest.raises(ValueError, match="bias must be"):  # the operator checks too
        torch.ops.tinyvit.layer_norm_forward(x, x.new_ones(8), x.new_zeros(9), 1e-6)


def test_auto_uses_the_kernel_where_it_can():
    x = make_x((2, 80), torch.float32, "contiguous").requires_grad_()
    assert type(layer_norm(x, None, None).grad_fn).__name__ == "LayerNormFunctionBackward"


def test_cpu_tensor_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_dispatch, "INTERPRETER", False)
    x = torch.randn(2, 8)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        layer_norm(x, None, None, backend="triton")
    y = layer_norm(x.requires_grad_(), None, None, backend="auto")
    assert type(y.grad_fn).__name__ != "LayerNormFunctionBackward"  # the reference, silently
