"""Test-session settings: the tests run on pytest-xdist workers (`make test`: `-n 2`) as well as in one process."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """On an xdist worker, use its share of the cores: at torch's default (one thread per core) in every worker and
    in every process the tests start, two workers would oversubscribe a 2-core machine."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return
    share = str(max(1, (os.cpu_count() or 1) // int(workers)))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # for the processes the tests start
        os.environ.setdefault(name, share)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with a test marked slow run first, longest first (`@pytest.mark.slow(seconds=N)`: about how long, on
    an idle machine, where it is far longer than the rest), each module kept whole (its fixtures are built once): on
    two workers the longest tests then start at once instead of ending the run on one worker alone."""
    weight: dict[object, float] = {}
    for item in items:
        marker = item.get_closest_marker("slow")
        if marker is not None:
            weight[item.module] = max(weight.get(item.module, 0.0), float(marker.kwargs.get("seconds", 1.0)))
    items.sort(key=lambda item: -weight.get(item.module, 0.0))  # stable: the order within a module is kept
