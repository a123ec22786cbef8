"""When written records are fsynced: the ``always``, ``everysec`` and ``no`` policies.

Every write is in the operating system (the page cache) before ``set`` returns, whatever the
policy, so a killed process loses nothing acknowledged. The policy only decides when the data
reaches the disk, i.e. what a power cut can take:

``always``
    ``set`` returns after an ``fdatasync`` that covers its record. Writers that arrive while a
    sync is running wait for the next one, which covers all of them (group commit): one fsync
    per *group* of concurrent writes rather than per write.
``everysec``
    A background thread syncs once a second when anything is unsynced. A power cut loses at
    most about the last second of writes.
``no``
    kvs never syncs on its own (the kernel writes back within ~30 s on Linux); ``close`` and
    file rotation still sync.

Positions are logical byte counts that only grow across data files (see
``LogStore._sync_active``); ``synced`` is the highest position known to be on disk.

A failed fsync is never retried silently: the error is handed to ``on_failure``, which turns
the store read-only, and every waiter not yet covered gets the error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kvs.errors import ReadOnlyError


class Durability:
    def __init__(
        self,
        policy: str,
        sync: Callable[[], int],
        on_failure: Callable[[BaseException], None],
        interval: float = 1.0,
    ) -> None:
        self.policy = policy
        self._sync = sync
        self._on_failure = on_failure
        self._interval = interval
        self._cond = threading.Condition(threading.Lock())
        self._syncing = False
        self._synced = 0
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if policy == "everysec":
            self._thread = threading.Thread(
                target=self._every_second, name="kvs-everysec-sync", daemon=True
            )
            self._thread.start()

    @property
    def synced(self) -> int:
        return self._synced

    def mark_synced(self, position: int) -> None:
        """Note that everything up to ``position`` is durable (e.g. after a rotation)."""
        with self._cond:
            if position > self._synced:
                self._synced = position
                self._cond.notify_all()

    def wait(self, position: int) -> None:
        """Return once ``position`` is durable, syncing (as the group's leader) if needed."""
        with self._cond:
            while self._synced < position:
                if self._error is not None:
                    raise ReadOnlyError(
                        f"fsync failed; the write was not made durable: {self._error}"
                    ) from self._error
                if not self._syncing:
                    self._syncing = True
                    break
                self._cond.wait()
            else:
                return
        self._lead_sync()
        with self._cond:
            if self._synced < position:
                raise ReadOnlyError(
                    f"fsync failed; the write was not made durable: {self._error}"
                ) from self._error

    def sync_now(self) -> None:
        """Sync whatever is written, now (used by ``close`` and the everysec thread)."""
        with self._cond:
            while self._syncing:
                self._cond.wait()
            self._syncing = True
        self._lead_sync()

    def _lead_sync(self) -> None:
        covered = None
        error: BaseException | None = None
        try:
            covered = self._sync()
        except BaseException as exc:  # handed to the store, and to every waiter
            error = exc
        with self._cond:
            self._syncing = False
            if covered is not None and covered > self._synced:
                self._synced = covered
            if error is not None:
                self._error = error
            self._cond.notify_all()
        if error is not None:
            self._on_failure(error)

    def _every_second(self) -> None:
        while not self._stop.wait(self._interval):
            if self._error is not None:
                return
            try:
                self.sync_now()
            except BaseException:  # already reported through on_failure
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
