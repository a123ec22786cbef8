"""``kvs-server``: the store over the network, speaking the Redis protocol (RESP2/RESP3)."""

from kvs.server.app import KvsServer, Limits
from kvs.server.commands import COMMANDS, ServerState, Session, execute

__all__ = ["COMMANDS", "KvsServer", "Limits", "ServerState", "Session", "execute"]
