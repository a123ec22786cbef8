"""The errors of :mod:`kvs.client`, all under :class:`kvs.KvsError`.

- :class:`ServerError`: the server answered with an error reply (wrong password, bad command).
  The connection is still in step and usable.
- :class:`ConnectionFailed`: no connection could be made (nothing listening, unreachable).
  :class:`ConnectionLost`, its subclass: the connection broke or timed out during a command;
  the client closes it, since what the server did with the command is unknown.
- :class:`InvalidAddress`: an ``IP:PORT`` that does not parse (also a ``ValueError``).
- :class:`~kvs.client.replies.ReplyProtocolError`: the server sent bytes that are not RESP.

Both connection errors are also ``ConnectionError`` (an ``OSError``), so code that already
handles socket errors handles them too.
"""

from __future__ import annotations

from kvs.client.replies import ErrorReply
from kvs.errors import KvsError

__all__ = ["ConnectionFailed", "ConnectionLost", "InvalidAddress", "ServerError"]


class ServerError(KvsError):
    """An error reply: ``message`` is the server's text, e.g. ``ERR unknown command 'x'...``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def code(self) -> str:
        """The first word of the message: ``ERR``, ``WRONGPASS``, ``NOAUTH``, ``WRONGTYPE``."""
        return self.message.split(" ", 1)[0]

    @classmethod
    def from_reply(cls, reply: ErrorReply) -> ServerError:
        return cls(reply.message)


class ConnectionFailed(KvsError, ConnectionError):
    """No connection to ``address`` could be made; ``reason`` says why."""

    _template = "cannot connect to {address}: {reason}"

    def __init__(self, address: str, reason: str) -> None:
        # OSError's own __init__ takes (errno, strerror); give it just the message.
        super().__init__(self._template.format(address=address, reason=reason))
        self.address = address
        self.reason = reason

    def __str__(self) -> str:
        return self._template.format(address=self.address, reason=self.reason)


class ConnectionLost(ConnectionFailed):
    """The connection to ``address`` broke, timed out, or was closed, during or before a command."""

    _template = "connection to {address} lost: {reason}"


class InvalidAddress(KvsError, ValueError):
    """A server address that is not ``IPv4:PORT`` or ``[IPv6]:PORT``."""
