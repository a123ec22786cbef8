"""Fixtures shared by the crash tests."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from kvs.log.faultfs import SimulatedCrash


@pytest.fixture(autouse=True)
def _simulated_crash_ends_background_threads_quietly() -> Iterator[None]:
    """A simulated crash also "kills" the engine's background threads (hint writer,
    everysec sync): they die with ``SimulatedCrash``, which is expected, not a test failure."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not None and issubclass(args.exc_type, SimulatedCrash):
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


@pytest.fixture
def kvs_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """``caplog`` capturing the ``kvs`` logger from WARNING up."""
    caplog.set_level(logging.WARNING, logger="kvs")
    return caplog
