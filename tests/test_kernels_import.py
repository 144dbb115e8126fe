"""The kernels' torch.library operators survive other libraries' imports (issue 21's root cause).

The kernels used to live in a top-level `kernels/` folder. With the repository root on sys.path (pytest's
`pythonpath = ["."]`, or any `python -m ...` run from the root), that folder was importable as `kernels`,
the name of Hugging Face's kernels package. transformers checks whether that package is installed
(`transformers.utils.import_utils._is_package_available("kernels")`, reached from
`transformers.integrations.hub_kernels`) and, finding no version metadata, imports it: tinyvit's kernel
files ran a second time, `torch.library.custom_op("tinyvit::attention_forward")` and the others were
defined again, and torch destroys an operator's old registration when a custom op of the same name is
defined (`get_library_allowing_overwrite`). The operators that `tinyvit.kernels` had already bound kept
pointing at the freed dispatcher entries: a use-after-free, which crashed later kernel calls at random
(segfaults, `ValueError: vector::reserve`, `MemoryError: std::bad_alloc` under MALLOC_PERTURB_), depending
on what had reused the memory.

These run in a fresh process, so they see only their own imports.
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib, importlib.util, sys
sys.path.insert(0, {root!r})  # as pytest's pythonpath and `python -m` from the root put it
import torch
import torch._library.custom_ops as custom_ops
A = importlib.import_module("tinyvit.kernels.attention")
L = importlib.import_module("tinyvit.kernels.layernorm")

spec = importlib.util.find_spec("kernels")
assert spec is None or not str(spec.origin).startswith({root!r}), f"'kernels' resolves to {{spec.origin}}"

# What transformers' availability check does for the name "kernels" (and what any library may do).
try:
    importlib.import_module("kernels")
except ImportError:
    pass
for name, op in [("attention_forward", A.attention_forward), ("attention_backward", A.attention_backward),
                 ("layer_norm_forward", L.layer_norm_forward), ("layer_norm_backward", L.layer_norm_backward)]:
    assert custom_ops.OPDEFS.get("tinyvit::" + name) is op, f"tinyvit::{{name}} was registered again"

# And the operators still run, forward and backward (the Triton interpreter on CPU, the kernels on a GPU).
device = "cuda" if torch.cuda.is_available() else "cpu"
q, k, v = (torch.randn(1, 2, 5, 16, device=device, requires_grad=True) for _ in range(3))
A.attention(q, k, v, backend="triton").sum().backward()
x = torch.randn(3, 8, device=device, requires_grad=True)
L.layer_norm(x, torch.ones(8, device=device), torch.zeros(8, device=device), backend="triton").sum().backward()
assert torch.isfinite(q.grad).all() and torch.isfinite(x.grad).all()
print("ok")
"""


def run_probe(extra: str = "") -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, "-c", extra + PROBE.format(root=str(ROOT))], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_no_top_level_kernels_package_shadows_hugging_faces():
    """Nothing in the repository root answers to the name `kernels`."""
    assert not (ROOT / "kernels").exists()
    assert (ROOT / "tinyvit" / "kernels" / "__init__.py").exists()


def test_operators_survive_a_library_importing_the_name_kernels():
    result = run_probe()
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_operators_survive_transformers_availability_check():
    """The very call that freed the operators in the test suite: transformers' check for `kernels`."""
    check = (
        "import sys; sys.path.insert(0, {root!r}); import tinyvit.kernels\n"
        "from transformers.utils.import_utils import _is_package_available\n"
        "_is_package_available('kernels', return_version=True)\n"
    ).format(root=str(ROOT))
    result = run_probe(check)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
