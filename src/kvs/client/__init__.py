"""A blocking Python client of ``kvs-server``, and the RESP reply parser it is built on.

::

    from kvs.client import KvsClient

    with KvsClient.from_addr("127.0.0.1:4000") as client:
        client.set("greeting", "hello")
        client.get("greeting")              # b'hello'
        with client.pipeline() as p:
            p.set("a", "1")
            p.get("a")
            p.execute()                     # [None, b'1']

See :mod:`kvs.client.client` for the failure model, :mod:`kvs.client.replies` for how each
RESP2/RESP3 reply type maps to a Python value, :mod:`kvs.client.errors` for the errors.
"""

from __future__ import annotations

from kvs.client.address import format_addr, parse_addr
from kvs.client.client import Arg, KvsClient, Pipeline
from kvs.client.errors import ConnectionFailed, ConnectionLost, InvalidAddress, ServerError
from kvs.client.replies import (
    NEED_DATA,
    ErrorReply,
    NeedData,
    Push,
    Reply,
    ReplyParser,
    ReplyProtocolError,
    Verbatim,
)

__all__ = [
    "NEED_DATA",
    "Arg",
    "ConnectionFailed",
    "ConnectionLost",
    "ErrorReply",
    "InvalidAddress",
    "KvsClient",
    "NeedData",
    "Pipeline",
    "Push",
    "Reply",
    "ReplyParser",
    "ReplyProtocolError",
    "ServerError",
    "Verbatim",
    "format_addr",
    "parse_addr",
]
