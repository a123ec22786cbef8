"""Server addresses: ``IPv4:PORT`` or ``[IPv6]:PORT``, parsed without touching the network.

The same forms ``kvs-server --addr`` accepts, so an address that one takes the other takes too;
unlike the server, the port must be 1-65535 (port 0 can be listened on, not connected to).
Host names are refused: an address is checked before any connection or DNS lookup is tried.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from kvs.client.errors import InvalidAddress

__all__ = ["format_addr", "parse_addr"]

_PORT: Final = re.compile(r"[0-9]{1,5}")  # ASCII digits only (str.isdigit takes others too)


def parse_addr(text: str) -> tuple[str, int]:
    """``(host, port)`` from ``"127.0.0.1:4000"``, ``"[::1]:4000"`` (or bare ``"::1:4000"``).

    The host comes back without brackets, ready for ``socket.create_connection``. Raises
    :class:`~kvs.client.errors.InvalidAddress` (a ``ValueError``) with a one-line reason.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise InvalidAddress(f"invalid address {text!r}: expected IP:PORT, e.g. 127.0.0.1:4000")
    if _PORT.fullmatch(port_text) is None or not 1 <= int(port_text) <= 65535:
        raise InvalidAddress(f"invalid address {text!r}: the port must be a number 1-65535")
    bracketed = host.startswith("[") and host.endswith("]")
    bare = host[1:-1] if bracketed else host
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        raise InvalidAddress(
            f"invalid address {text!r}: {bare!r} is not an IPv4 or IPv6 address"
        ) from None
    if bracketed and ip.version != 6:
        raise InvalidAddress(f"invalid address {text!r}: only IPv6 addresses go in brackets")
    return bare, int(port_text)


def format_addr(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets: how addresses appear in messages."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
