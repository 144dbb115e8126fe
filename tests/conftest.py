"""Test set-up shared by every test file.

The Triton kernels are tested on CPU through the Triton interpreter. The variable has to be set
before anything imports triton, so it is set here, at collection time, and only where no GPU is
present (on a GPU the same tests run the compiled kernels).
"""
import os

import pytest

try:  # a cheap check that never initialises CUDA
    import torch

    _has_cuda = torch.cuda.is_available()
except Exception:  # pragma: no cover - torch is a hard dependency
    _has_cuda = False

if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; deselected in CI (-m 'not gpu')")
    config.addinivalue_line("markers", "slow: slower end-to-end tests")


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny models: on a 2-core machine shared with other work, tiny ops run many times
    faster on one thread than on two (and timings that would matter live in bench/, not here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(session, config, items):
    """Run the kernel tests last, in this same process, after every other test's imports (transformers,
    timm, datasets ...) and training runs: the order in which a library that freed the kernels' operators
    (issue 21: transformers importing a top-level `kernels` folder) shows up as a failure, not a pass."""
    items.sort(key=lambda item: item.path.name.startswith("test_kernels_"))  # stable: order kept otherwise


@pytest.fixture(autouse=True)
def kernel_operators_intact(request):
    """Before each kernel test: the torch.library operators tinyvit.kernels calls are still the registered
    ones (a second registration under the same name frees the first: see tests/test_kernels_import.py)."""
    if not request.node.path.name.startswith("test_kernels_"):
        yield
        return
    import importlib

    import torch._library.custom_ops as custom_ops

    attention = importlib.import_module("tinyvit.kernels.attention")  # the module (the package exports
    layernorm = importlib.import_module("tinyvit.kernels.layernorm")  # functions of the same names)

    for op in (attention.attention_forward, attention.attention_backward,
               layernorm.layer_norm_forward, layernorm.layer_norm_backward):
        assert custom_ops.OPDEFS.get(op._qualname) is op, f"{op._qualname} was registered again"
    yield
