"""kvs: a persistent key-value store with a Bitcask-style log engine.

from kvs import KvStore
with KvStore.open("data") as store:
    store["greeting"] = "hello"
    store.get("greeting")  # 'hello'
"""

from kvs.errors import (
    CorruptionError,
    FormatError,
    KeyNotFound,
    KvsError,
    LimitError,
    NotSupportedError,
    ReadOnlyError,
    StorageError,
    StoreClosedError,
    StoreLockedError,
)
from kvs.store import KvStore, WriteBatch

__version__ = "0.1.0"

__all__ = [
    "CorruptionError",
    "FormatError",
    "KeyNotFound",
    "KvStore",
    "KvsError",
    "LimitError",
    "NotSupportedError",
    "ReadOnlyError",
    "StorageError",
    "StoreClosedError",
    "StoreLockedError",
    "WriteBatch",
    "__version__",
]
