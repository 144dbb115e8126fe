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

Since transformers 5.25 Hugging Face's `kernels` package is installed with it, inside the project's own
`.venv/` when `make test` built it there: so the guard asks whether `kernels` resolves to a folder of the
repository's own tree *outside* the installed packages, not merely whether its path starts with the root.
Every probe runs with the real package installed, with none, and with a stub package that carries no
version metadata (the case in which transformers imports it), and one probe runs in a checkout that has
the old top-level `kernels/` folder, where the guard must fail.

These run in a fresh process, so they see only their own imports.
"""
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# How the probe meets the name `kernels`, put before the probe's own code.
STATES = {
    "installed": "",  # Hugging Face's package, as pip installed it with transformers
    "absent": "import sys; sys.modules['kernels'] = None  # as if not installed: find_spec None, import fails\n",
    "stub": "import sys; sys.path.insert(0, {stub!r})  # a `kernels` package with no version metadata\n",
}

PROBE = """
import importlib, importlib.util, site, sys
from pathlib import Path
sys.path.insert(0, {root!r})  # as pytest's pythonpath and `python -m` from the root put it
import torch
import torch._library.custom_ops as custom_ops
A = importlib.import_module("tinyvit.kernels.attention")
L = importlib.import_module("tinyvit.kernels.layernorm")

# The guard: no folder of the checkout's own tree answers to `kernels`. A package installed into a
# site-packages folder is a real distribution, even where that folder lies inside the checkout (.venv/).
spec = importlib.util.find_spec("kernels")
if spec is not None:
    places = [Path(p).resolve() for p in [spec.origin, *(spec.submodule_search_locations or [])] if p]
    installed = [Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]]
    root = Path({root!r}).resolve()
    for place in places:
        assert any(place.is_relative_to(p) for p in installed) or not place.is_relative_to(root), \\
            f"'kernels' resolves to {{place}}, a folder of the repository"

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

# The very call that freed the operators in the test suite: transformers' check for `kernels`.
TRANSFORMERS_CHECK = (
    "import sys; sys.path.insert(0, {root!r}); import tinyvit.kernels\n"
    "from transformers.utils.import_utils import _is_package_available\n"
    "_is_package_available('kernels', return_version=True)\n"
)


def run_probe(state: str, extra: str = "", root: Path = ROOT, stub: Path | None = None) -> subprocess.CompletedProcess:
    code = STATES[state].format(stub=str(stub)) + extra.format(root=str(root)) + PROBE.format(root=str(root))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def passed(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == 0 and result.stdout.strip().endswith("ok")


@pytest.fixture
def stub(tmp_path) -> Path:
    """A folder outside the repository holding a `kernels` package without version metadata."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("STUB = True\n")
    return tmp_path


def test_no_top_level_kernels_package_shadows_hugging_faces():
    """Nothing in the repository root answers to the name `kernels`."""
    assert not (ROOT / "kernels").exists()
    assert (ROOT / "tinyvit" / "kernels" / "__init__.py").exists()


def test_hugging_faces_kernels_is_installed():
    """The "installed" probes below test the real package (the test extra installs it, as transformers does)."""
    assert importlib.metadata.version("kernels")


@pytest.mark.parametrize("state", ["installed", "absent", "stub"])
def test_operators_survive_a_library_importing_the_name_kernels(state, stub):
    result = run_probe(state, stub=stub)
    assert passed(result), result.stderr[-3000:]


@pytest.mark.parametrize("state", ["installed", "absent", "stub"])
def test_operators_survive_transformers_availability_check(state, stub):
    result = run_probe(state, TRANSFORMERS_CHECK, stub=stub)
    assert passed(result), result.stderr[-3000:]


def test_guard_fails_on_a_checkout_with_a_top_level_kernels_folder(tmp_path):
    """The layout before the kernels moved: the guard names the folder (and the operators are redefined)."""
    (tmp_path / "tinyvit").symlink_to(ROOT / "tinyvit", target_is_directory=True)
    shutil.copytree(ROOT / "tinyvit" / "kernels", tmp_path / "kernels")
    result = run_probe("installed", root=tmp_path)
    assert not passed(result)
    assert f"'kernels' resolves to {(tmp_path / 'kernels').resolve()}" in result.stderr, result.stderr[-3000:]
