"""When written records are fsynced: the ``always``, ``everysec`` and ``no`` policies.

Every write is in the operating system (the page cache) before ``set`` returns, whatever the
policy, so a killed process loses nothing acknowledged. The policy only decides when the data
reaches the disk, i.e. what a power cut can take:

``always``
    ``set`` returns after an ``fdatasync`` that covers its record. While one sync runs,
    arriving writers queue up, and the next sync covers all of them (group commit): one fsync
    per *group* of concurrent writes rather than per write.
``everysec``
    A background thread syncs once a second when anything is unsynced, and also after every
    few MiB written. A power cut loses at most about the last second of writes.
``no``
    kvs never syncs on its own (the kernel writes back within ~30 s on Linux); ``close`` and
    file rotation still sync.

Positions are logical byte counts that only grow across data files (see
``LogStore._sync_active``); ``synced`` is the highest position known to be on disk.

A failed fsync is never retried silently: the error is handed to ``on_failure``, which turns
the store read-only, and every waiter not yet covered gets ``ReadOnlyError``.
"""

from __future__ import annotations

import os
import threading
import time
from _thread import LockType
from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable

from kvs.errors import ReadOnlyError, StoreClosedError

# A leader waits for the writers of the last group at most this fraction of the last sync's
# duration before it syncs without them.
_GATHER_FRACTION = 0.25


class Durability:
    """Thread safety: every method may be called from any thread; ``_lock`` guards the state.

    Invariant: ``_synced`` only grows, and only after a sync that covered it returned.

    Group commit (``always``) has no thread of its own: the first writer that finds no sync
    running becomes the *leader* and syncs for everyone; writers arriving meanwhile each block
    on a lock of their own (a *gate*). When the sync returns, the leader opens the gates of
    the writers it covered, and that of one writer it did not cover, who leads the next sync.

    Measured (8 writer threads against 1, real fdatasync, and a fake 2 ms one) against the
    earlier design, a flusher thread and a ``threading.Condition``: one thread 13-33% more
    durable writes/s (no hand-off to a flusher and back per write); 8 threads 11-38% more with
    a ~0.1 ms fsync, and about 1.9x more with a 2 ms fsync, where the gathering below makes
    each sync cover all 8 writers instead of alternating groups of about 4.
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
        self._idle = threading.Condition(self._lock)  # notified when a sync ends, and on stop
        self._syncing = False
        self._synced = 0
        self._writers_last_sync = 0  # the leader and the writers waiting when its sync ended
        self._last_sync_seconds = 0.0
        self._gates: list[tuple[int, LockType]] = []  # (position, gate) of waiting writers
        self._error: BaseException | None = None
        self._stopping = False
        self._early = False  # sync_soon() was called
        self.error_delivered = False  # a waiter was told that a sync failed
        self._thread: threading.Thread | None = None
        if policy == "everysec":
            self._thread = threading.Thread(
                target=self._every_second, name="kvs-everysec-sync", daemon=True
            )
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
                self._open_gates()

    def wait(self, position: int) -> None:
        """Return once ``position`` is durable (policy ``always``): this thread syncs it, or
        waits for the sync another thread leads."""
        while True:
            with self._lock:
                if self._synced >= position:
                    return
                self._check_waitable()
                leader = not self._syncing
                if leader:
                    self._syncing = True
                else:
                    gate = _allocate_lock()
                    gate.acquire()
                    self._gates.append((position, gate))
            if leader:
                try:
                    self._gather_writers()
                except BaseException:  # interrupted (KeyboardInterrupt): let another lead
                    with self._lock:
                        self._syncing = False
                        self._idle.notify_all()
                        self._open_gates()
                    raise
                self._run_sync()
            else:
                try:
                    gate.acquire()  # opened when a sync covers position, when this thread is
                    # to lead the next sync, or on a failure or stop
                except BaseException:  # interrupted: leave, and pass on a lead handed to us
                    with self._lock:
                        if (position, gate) in self._gates:
                            self._gates.remove((position, gate))
                        self._open_gates()
                    raise

    def _gather_writers(self) -> None:
        """Before a leader syncs: the writers the last sync woke are runnable but may not have
        appended yet. Yield the CPU (and the GIL) until as many writers wait as took part in
        the last sync, or a quarter of that sync's duration has passed, so that this sync
        covers them too instead of leaving them for the next one. Without it, writers settle
        into two groups that take turns, each sync covering half of them."""
        target = self._writers_last_sync - 1  # this leader is one of them
        deadline = time.perf_counter() + self._last_sync_seconds * _GATHER_FRACTION
        while len(self._gates) < target and time.perf_counter() < deadline:
            os.sched_yield()  # releases the GIL; time.sleep(0) would take ~80 µs

    def _check_waitable(self) -> None:
        """Raise if the write can no longer be made durable. Requires ``_lock``."""
        if self._error is not None:
            self.error_delivered = True
            raise ReadOnlyError(
                f"fsync failed; the write was not made durable: {self._error}"
            ) from self._error
        if self._stopping:
            raise StoreClosedError("the store was closed before the write was synced")

    def _open_gates(self) -> None:
        """Wake the writers that are covered now (all of them after a failure or stop: they
        raise), and, if no sync is running, one writer not covered, to lead the next.
        Requires ``_lock``."""
        if not self._gates:
            return
        if self._error is not None or self._stopping:
            waiting = []
            woken = self._gates
        else:
            synced = self._synced
            waiting = [entry for entry in self._gates if entry[0] > synced]
            woken = [entry for entry in self._gates if entry[0] <= synced]
            if waiting and not self._syncing:
                woken.append(waiting.pop(0))
        self._gates = waiting
        for _, gate in woken:
            gate.release()

    def sync_now(self) -> None:
        """Sync whatever is written, now. Raises nothing: failures go to ``on_failure``."""
        with self._lock:
            while self._syncing:
                self._idle.wait()
            self._syncing = True
        self._run_sync()

    def _run_sync(self) -> None:
        """Sync, as the thread that set ``_syncing``; publish the result and wake writers."""
        covered = None
        error: BaseException | None = None
        try:
            try:
                started = time.perf_counter()
                covered = self._sync()
                self._last_sync_seconds = time.perf_counter() - started
            except Exception as exc:  # handed to the store, and to every waiter
                error = exc
            if error is not None:
                # The store turns read-only before any waiter wakes: a writer told its write
                # failed must not get its next write past the read-only check (found by the
                # soak).
                self._on_failure(error)
        finally:  # also when the leader is interrupted (KeyboardInterrupt): hand the lead on
            with self._lock:
                self._syncing = False
                if covered is not None and covered > self._synced:
                    self._synced = covered
                if error is not None:
                    self._error = error
                self._idle.notify_all()
                self._writers_last_sync = len(self._gates) + 1
                self._open_gates()

    def sync_soon(self) -> None:
        """Under ``everysec``: sync now rather than at the next tick (the store asks after
        every few MiB written, so that the sync a file rotation must make is short)."""
        with self._lock:
            self._early = True
            self._idle.notify_all()

    def _every_second(self) -> None:
        while True:
            with self._lock:
                self._idle.wait_for(lambda: self._stopping or self._early, timeout=self._interval)
                self._early = False
                if self._stopping or self._error is not None:
                    return
            self.sync_now()

    def stop(self) -> None:
        """Stop the background thread (after its current sync). Waiters not yet covered get
        ``StoreClosedError``; call ``sync_now`` first to cover them."""
        with self._lock:
            self._stopping = True
            self._idle.notify_all()
            self._open_gates()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
