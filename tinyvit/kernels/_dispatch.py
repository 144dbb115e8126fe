"""Plumbing shared by the kernel files: is Triton here, may it run on this tensor, how ops are registered.

Importing this does no device work: triton is imported if installed (pure Python, no driver call), and
nothing asks CUDA anything until an op runs.
"""
import functools
import os

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only or macOS installs: the references still work, backend="triton" says why not

    class _NoTriton:
        """Stands in for `triton` and `triton.language` so the kernel files still import.

        Only what runs at import time is needed: `@triton.jit` (keeps the plain function, never launched)
        and `tl.constexpr` (used in annotations and for module constants).
        """

        @staticmethod
        def jit(fn):
            return fn

        @staticmethod
        def constexpr(value=None):
            return value

    triton = tl = _NoTriton()
    HAS_TRITON = False


def _interpreter_on() -> bool:
    # Triton decides at @triton.jit time whether a kernel is compiled or run by its numpy interpreter
    # (TRITON_INTERPRET=1), and our kernels are decorated when tinyvit.kernels is imported. So what
    # counts is the setting at import time, read here with Triton's own parser (triton.knobs).
    if not HAS_TRITON:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


INTERPRETER = _interpreter_on()

# "triton": the fused Triton kernels; "torch": PyTorch's own fused ops (F.scaled_dot_product_attention,
# F.layer_norm), the fast path off the GPU; "reference": the plain formulas beside each kernel, to read and
# to test against (never a default); "auto": Triton where it can run, PyTorch's fused ops otherwise.
BACKENDS = ("auto", "triton", "torch", "reference")


@triton.jit
def _bf16_dot_probe_kernel(A, C):  # A: [16, 16] bf16, C: [16, 16] fp32, both contiguous
    r = tl.arange(0, 16)
    a = tl.load(A + r[:, None] * 16 + r[None, :])
    tl.store(C + r[:, None] * 16 + r[None, :], tl.dot(a, a))


@functools.cache
def interpreter_bf16_dot_works() -> bool:
    """Whether the Triton interpreter multiplies bf16 tensors correctly in tl.dot.

    The interpreter stores bf16 as uint16 and, up to at least Triton 3.8, its tl.dot multiplies those
    bit patterns (triton-lang/triton#11584: "we just don't support it yet"). Kernels that use tl.dot on
    bf16 ask this under the interpreter (once: a 16 x 16 launch on the first bf16 call) and refuse bf16
    there rather than return garbage. Compiled kernels are not affected.
    """
    a = torch.eye(16, dtype=torch.bfloat16)
    c = torch.zeros(16, 16)
    _bf16_dot_probe_kernel[(1,)](a, c)
    return torch.equal(c, a.float())


def triton_unavailable(device: torch.device):
    """Why the Triton kernels cannot run on tensors on `device` in this process, or None if they can."""
    if not HAS_TRITON:
        return "triton is not installed (pip install 'triton>=3.6'; Linux only)"
    if INTERPRETER or device.type == "cuda":
        return None  # the interpreter copies CUDA tensors to the host and back, so it takes both
    return (
        f"the Triton kernels need CUDA tensors, got a {device.type} tensor; to run them on CPU through the "
        "Triton interpreter, set TRITON_INTERPRET=1 before tinyvit.kernels (and triton) is imported"
    )


def use_triton(backend: str, device: torch.device, unsupported) -> bool:
    """Resolve `backend` for one call: True runs the Triton kernel, False a PyTorch path (the caller runs
    PyTorch's fused op for "auto" and "torch", the plain reference for "reference").

    unsupported: a function of no arguments that says why the kernel cannot take these particular inputs
    (a message), or returns None.
    "auto" picks Triton on CUDA tensors (and on CPU tensors when the interpreter is on) whenever it can
    take the inputs, and PyTorch's fused op otherwise; "triton" raises instead of falling back.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; expected one of {BACKENDS}")
    if backend in ("torch", "reference"):
        return False
    environment = triton_unavailable(device)
    if backend == "auto":
        return environment is None and unsupported() is None
    if environment is not None:
        raise RuntimeError(f'backend="triton": {environment}')
    reason = unsupported()
    if reason is not None:
        raise ValueError(f'backend="triton": {reason}')
    return True


# torch.library.triton_op (torch >= 2.6) would let torch.compile see the Triton kernels inside the ops,
# but registering one imports dynamo and inductor: +1.5 s on every `import tinyvit`, GPU or not. A
# custom_op costs milliseconds and still compiles without graph breaks (an opaque node, which is all a
# hand-written fused kernel needs). Set this to True to trade import time for inductor visibility.
USE_TRITON_OP = False


def register_op(name: str):
    """Decorator: register a launcher as the PyTorch operator `name`, so torch.compile traces it without a
    graph break (it needs the op's fake, i.e. shape-only, implementation, registered beside each launcher).

    torch.library.custom_op by default (see USE_TRITON_OP); the interpreter's kernels, which run numpy on
    real data and cannot be traced into a graph, always get custom_op. Registration does no device work.
    """
    if USE_TRITON_OP and HAS_TRITON and hasattr(torch.library, "triton_op") and not INTERPRETER:
        return torch.library.triton_op(name, mutates_args=())
    return torch.library.custom_op(name, mutates_args=())


def wrap_triton(kernel):
    """torch.library.wrap_triton(kernel) inside a triton_op (USE_TRITON_OP), else the kernel itself.

    Inside a triton_op, wrap_triton records the launch so torch.compile can see it (eagerly it is a
    pass-through). Keep the name and call it as `wrap_triton(kernel)[grid](...)`: torch finds a
    triton_op's kernels by reading its source for that call. Inside a custom_op, and for the
    interpreter's kernels (never traced; older torch rejects them), the kernel is launched as it is.
    """
    wrap = getattr(torch.library, "wrap_triton", None)
    if wrap is None or INTERPRETER or not USE_TRITON_OP:
        return kernel
    return wrap(kernel)
