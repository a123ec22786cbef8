"""When written records are fsynced: the ``always``, ``everysec`` and ``no`` policies.

Every write is in the operating system (the page cache) before ``set`` returns, whatever the
policy, so a killed process loses nothing acknowledged. The policy only decides when the data
reaches the disk, i.e. what a power cut can take:

``always``
    ``set`` returns after an ``fdatasync`` that covers its record. One flusher thread does the
    syncing: while it syncs, arriving writers queue up, and its next sync covers all of them
    (group commit): one fsync per *group* of concurrent writes rather than per write.
``everysec``
    A background thread syncs once a second when anything is unsynced. A power cut loses at
    most about the last second of writes.
``no``
    kvs never syncs on its own (the kernel writes back within ~30 s on Linux); ``close`` and
    file rotation still sync.

Positions are logical byte counts that only grow across data files (see
``LogStore._sync_active``); ``synced`` is the highest position known to be on disk.

A failed fsync is never retried silently: the error is handed to ``on_failure``, which turns
the store read-only, and every waiter not yet covered gets ``ReadOnlyError``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kvs.errors import ReadOnlyError, StoreClosedError


class Durability:
    """Thread safety: every method may be called from any thread; ``_lock`` guards the state.

    Invariant: ``_synced`` only grows, and only after a sync that covered it returned.
    """

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
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the flusher waits here for requests
        self._done = threading.Condition(self._lock)  # writers wait here for their sync
        self._syncing = False
        self._synced = 0
        self._requested = 0  # highest position a writer is waiting for
        self._error: BaseException | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        if policy == "always":
            self._thread = threading.Thread(
                target=self._flush_requests, name="kvs-group-commit", daemon=True
            )
        elif policy == "everysec":
            self._thread = threading.Thread(
                target=self._every_second, name="kvs-everysec-sync", daemon=True
            )
        if self._thread is not None:
            self._thread.start()

    @property
    def synced(self) -> int:
        return self._synced

    @property
    def error(self) -> BaseException | None:
        """The error of the last sync that failed, if any."""
        return self._error

    def mark_synced(self, position: int) -> None:
        """Note that everything up to ``position`` is durable (e.g. after a rotation)."""
        with self._lock:
            if position > self._synced:
                self._synced = position
                self._done.notify_all()

    def wait(self, position: int) -> None:
        """Return once ``position`` is durable (policy ``always``): the flusher syncs it."""
        with self._lock:
            if self._synced >= position:
                return
            if position > self._requested:
                self._requested = position
                self._work.notify()
            while self._synced < position:
                if self._error is not None:
                    raise ReadOnlyError(
                        f"fsync failed; the write was not made durable: {self._error}"
                    ) from self._error
                if self._stopping:
                    raise StoreClosedError("the store was closed before the write was synced")
                self._done.wait()

    def _flush_requests(self) -> None:
        # No waiting for stragglers before a sync: measured, any pause to let more writers
        # join cost more than it gained (writers that arrive during a sync join the next).
        while True:
            with self._lock:
                while self._requested <= self._synced and not self._stopping:
                    self._work.wait()
                if self._stopping or self._error is not None:
                    return
            self.sync_now()

    def sync_now(self) -> None:
        """Sync whatever is written, now. Raises nothing: failures go to ``on_failure``."""
        with self._lock:
            while self._syncing:
                self._done.wait()
            self._syncing = True
        covered = None
        error: BaseException | None = None
        try:
            covered = self._sync()
        except BaseException as exc:  # handed to the store, and to every waiter
            error = exc
        if error is not None:
            # The store turns read-only before any waiter wakes: a writer told its write failed
            # must not get its next write past the read-only check (found by the soak).
            self._on_failure(error)
        with self._lock:
            self._syncing = False
            if covered is not None and covered > self._synced:
                self._synced = covered
            if error is not None:
                self._error = error
            self._done.notify_all()

    def _every_second(self) -> None:
        while True:
            with self._lock:
                self._work.wait_for(lambda: self._stopping, timeout=self._interval)
                if self._stopping or self._error is not None:
                    return
            self.sync_now()

    def stop(self) -> None:
        """Stop the background thread (after its current sync). Waiters not yet covered get
        ``StoreClosedError``; call ``sync_now`` first to cover them."""
        with self._lock:
            self._stopping = True
            self._work.notify_all()
            self._done.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
