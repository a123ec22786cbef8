"""The wire protocol of ``kvs-server``: RESP2/RESP3 parsing and encoding, sans-I/O.

See :mod:`kvs.protocol.resp` for the accepted wire format, the limits and the error texts.
"""

from __future__ import annotations

from kvs.protocol.resp import (
    EMPTY_ARRAY,
    EMPTY_BULK,
    OK,
    PONG,
    QUEUED,
    RESP2,
    RESP3,
    UNAUTHENTICATED_MAX_ARGS,
    UNAUTHENTICATED_MAX_BULK_LEN,
    ProtocolError,
    ReplyEncoder,
    RespParser,
    encode_command,
)

__all__ = [
    "EMPTY_ARRAY",
    "EMPTY_BULK",
    "OK",
    "PONG",
    "QUEUED",
    "RESP2",
    "RESP3",
    "UNAUTHENTICATED_MAX_ARGS",
    "UNAUTHENTICATED_MAX_BULK_LEN",
    "ProtocolError",
    "ReplyEncoder",
    "RespParser",
    "encode_command",
]
