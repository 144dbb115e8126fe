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
