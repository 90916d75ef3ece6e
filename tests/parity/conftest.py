"""Parity tests run tiny models: one intra-op thread is faster than two.

On a shared 2-core machine, a 32-wide matmul spends most of its time
handing work to a second thread (about 15x slower than on one), so every
parity test runs single-threaded and restores the setting afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
