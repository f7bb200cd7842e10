"""Fixtures shared by every test module: a counting scheduler and the bundled data."""

from __future__ import annotations

import contextlib
from pathlib import Path

import dask
import pytest

DATA = Path(__file__).parent / "data"


class UnexpectedCompute(AssertionError):
    """More computes ran than the test allowed."""


class CountingScheduler:
    """A dask scheduler that counts ``compute`` calls and fails past ``max_computes``.

    Use as ``with counting_scheduler(max_computes=1) as counter: ...``; ``counter.count``
    holds the number of computes that ran.
    """

    def __init__(self, max_computes: int) -> None:
        self.max_computes = max_computes
        self.count = 0

    def __call__(self, dsk, keys, **kwargs):
        self.count += 1
        if self.count > self.max_computes:
            raise UnexpectedCompute(
                f"compute #{self.count} ran but at most {self.max_computes} were allowed"
            )
        return dask.get(dsk, keys, **kwargs)


@pytest.fixture
def counting_scheduler():
    """Factory: ``with counting_scheduler(n) as c:`` fails on the (n+1)-th compute."""

    @contextlib.contextmanager
    def _make(max_computes: int = 0):
        counter = CountingScheduler(max_computes)
        with dask.config.set(scheduler=counter):
            yield counter

    return _make


@pytest.fixture(scope="session")
def sample_path() -> Path:
    """The bundled real 559-cell sample (.h5ad, CSR counts)."""
    from scdask.datasets import sample_path

    return sample_path()
