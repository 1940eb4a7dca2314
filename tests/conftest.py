import os
import tempfile

import pytest
import torch

# Keep caches and matplotlib config out of the user's home; nothing is downloaded.
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="invsolve-mpl-"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a test module: tiny tensors run much slower with threads on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
