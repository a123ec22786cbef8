"""Options shared by the whole suite.

``--soak`` (or ``KVS_SOAK=1`` in the environment) turns every loop that has a short default
into its long form: more kill rounds, more fuzz examples, the slow tests. Tests read it
through ``soakmode.soak_enabled`` or the ``soak`` fixture, and pick their sizes with
``soakmode.soak_scale``, so the default run stays within the team's time budget.
"""

from __future__ import annotations

import os

import pytest
from soakmode import soak_enabled


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the long forms of the crash, fault and fuzz loops and the slow tests",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--soak"):
        # Environment, not only config: subprocesses and module-level constants see it too.
        os.environ["KVS_SOAK"] = "1"
        os.environ.setdefault("KVS_SLOW", "1")


@pytest.fixture
def soak() -> bool:
    """Whether the long forms of the loops are asked for."""
    return soak_enabled()
