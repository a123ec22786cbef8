"""Fixtures shared by the crash tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from .helpers import quiet_simulated_crashes


@pytest.fixture(autouse=True)
def _simulated_crash_ends_background_threads_quietly() -> Iterator[None]:
    """A simulated crash also "kills" the engine's background threads (hint writer,
    everysec sync): they die with ``SimulatedCrash``, which is expected, not a test failure."""
    with quiet_simulated_crashes():
        yield


@pytest.fixture
def kvs_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """``caplog`` capturing the ``kvs`` logger from WARNING up."""
    caplog.set_level(logging.WARNING, logger="kvs")
    return caplog
