"""How long the loops run: short in the default run, long under ``--soak`` or ``KVS_SOAK=1``.

Import it from any test (``from soakmode import soak_scale``); ``tests/`` is on the path.
"""

from __future__ import annotations

import os


def soak_enabled() -> bool:
    """True when this run asked for the long forms of the loops."""
    return os.environ.get("KVS_SOAK") == "1"


def soak_scale(default: int, soak: int) -> int:
    """``default`` in the ordinary run, ``soak`` under ``--soak``."""
    return soak if soak_enabled() else default
