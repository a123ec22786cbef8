"""Sync policies and group commit, with a fake fsync so the tests control time."""

from __future__ import annotations

import threading
import time

import pytest

from kvs import ReadOnlyError, StoreClosedError
from kvs.log.durability import Durability


class FakeDisk:
    def __init__(self, delay: float = 0.0) -> None:
        self.written = 0
        self.syncs = 0
        self.delay = delay
        self.fail: OSError | None = None

    def sync(self) -> int:
        target = self.written
        time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        self.syncs += 1
        return target


def test_always_returns_only_after_a_sync_covering_the_write() -> None:
    disk = FakeDisk()
    durability = Durability("always", disk.sync, lambda error: None)
    disk.written = 100
    durability.wait(100)
    assert durability.synced >= 100 and disk.syncs >= 1
    durability.stop()


def run_writers(disk: FakeDisk, writers: int, writes_each: int) -> Durability:
    """``writers`` threads each append ``writes_each`` times under sync="always", each write
    waiting for its sync; returns the stopped Durability."""
    durability = Durability("always", disk.sync, lambda error: None)
    lock = threading.Lock()

    def writer() -> None:
        for _ in range(writes_each):
            with lock:
                disk.written += 1
                position = disk.written
            durability.wait(position)

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    durability.stop()
    return durability


def test_concurrent_writers_share_fsyncs() -> None:
    disk = FakeDisk(delay=0.02)
    durability = run_writers(disk, 8, 5)
    assert durability.synced == 40
    assert disk.syncs < 40 / 2, f"{disk.syncs} syncs for 40 writes: no grouping"


def test_a_sync_gathers_the_writers_of_the_last_one() -> None:
    """With a slow disk, the writers that one sync woke are gathered into the next: groups do
    not settle into halves that take turns (the flusher-thread design covered about 4 of 8)."""
    disk = FakeDisk(delay=0.05)
    rounds = 6
    durability = run_writers(disk, 8, rounds)
    assert durability.synced == 8 * rounds
    # The first sync may start before all 8 arrive; after that each covers all 8 (a loaded
    # machine can miss a gathering deadline now and then: 3 syncs of slack).
    assert disk.syncs <= rounds + 4, f"{disk.syncs} syncs for {8 * rounds} writes"


def test_always_starts_no_thread_of_its_own() -> None:
    before = set(threading.enumerate())
    durability = Durability("always", FakeDisk().sync, lambda error: None)
    assert set(threading.enumerate()) == before
    durability.stop()


def test_an_interrupted_leader_hands_the_next_sync_to_a_waiter() -> None:
    """KeyboardInterrupt during the leader's fsync reaches the leader's caller; it is not a
    failed fsync (the store stays writable) and the writer waiting behind it still gets its
    write synced."""
    entered = threading.Event()
    release = threading.Event()
    calls = 0

    def sync() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            release.wait(5)
            raise KeyboardInterrupt
        return 200

    failures: list[BaseException] = []
    durability = Durability("always", sync, failures.append)
    outcome: list[BaseException | None] = []

    def leader() -> None:
        try:
            durability.wait(100)
            outcome.append(None)
        except BaseException as error:  # the interrupt is what is checked
            outcome.append(error)

    first = threading.Thread(target=leader)
    first.start()
    assert entered.wait(5)
    second = threading.Thread(target=durability.wait, args=(200,))
    second.start()
    deadline = time.monotonic() + 5
    while not durability._gates and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()
    first.join(5)
    second.join(5)
    assert not second.is_alive() and durability.synced == 200
    assert len(outcome) == 1 and isinstance(outcome[0], KeyboardInterrupt)
    assert failures == [] and durability.error is None
    durability.stop()


def test_failed_fsync_is_reported_to_waiters_and_the_store() -> None:
    disk = FakeDisk()
    failures: list[BaseException] = []
    durability = Durability("always", disk.sync, failures.append)
    disk.fail = OSError(5, "Input/output error")
    disk.written = 10
    with pytest.raises(ReadOnlyError, match="fsync failed"):
        durability.wait(10)
    assert len(failures) == 1
    with pytest.raises(ReadOnlyError):
        durability.wait(20)  # never retried silently
    durability.stop()


def test_everysec_syncs_in_the_background() -> None:
    disk = FakeDisk()
    durability = Durability("everysec", disk.sync, lambda error: None, interval=0.05)
    disk.written = 7
    deadline = time.monotonic() + 5
    while durability.synced < 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert durability.synced == 7
    durability.stop()


def test_no_policy_never_syncs_by_itself() -> None:
    disk = FakeDisk()
    durability = Durability("no", disk.sync, lambda error: None)
    disk.written = 5
    time.sleep(0.1)
    assert disk.syncs == 0
    durability.sync_now()
    assert durability.synced == 5
    durability.stop()


def test_waiting_after_stop_is_refused() -> None:
    disk = FakeDisk()
    durability = Durability("always", disk.sync, lambda error: None)
    durability.stop()
    disk.written = 3
    with pytest.raises(StoreClosedError):
        durability.wait(3)


def test_everysec_syncs_at_once_when_asked() -> None:
    disk = FakeDisk()
    durability = Durability("everysec", disk.sync, lambda error: None, interval=60)
    disk.written = 9
    durability.sync_soon()
    deadline = time.monotonic() + 10
    while durability.synced < 9 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert durability.synced == 9, "sync_soon() waited for the next tick"
    durability.stop()


class Interrupted(BaseException):
    """Stands in for KeyboardInterrupt (a stray one must not end the test session)."""


def test_an_interrupted_waiter_does_not_strand_the_writers_behind_it() -> None:
    """The main thread waits behind a running sync and is interrupted by a signal; the sync
    then ends, and the lead it hands on must reach a writer that is still waiting (it used to
    go to the interrupted one's gate, leaving the other writer waiting for ever)."""
    import signal

    release = threading.Event()
    calls = 0
    written = 10

    def sync() -> int:
        nonlocal calls
        calls += 1
        target = written
        if calls == 1:
            release.wait(10)
        return target

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    durability = Durability("always", sync, lambda error: None)
    leader = threading.Thread(target=durability.wait, args=(10,), daemon=True)
    leader.start()
    deadline = time.monotonic() + 5
    while calls == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    written = 30
    other = threading.Thread(target=durability.wait, args=(30,), daemon=True)

    def start_other_then_interrupt_main() -> None:
        while len(durability._gates) < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        other.start()
        while len(durability._gates) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)  # the main thread is blocked on its gate by now
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        helper = threading.Thread(target=start_other_then_interrupt_main, daemon=True)
        helper.start()
        with pytest.raises(Interrupted):
            durability.wait(20)
        helper.join(5)
    finally:
        signal.signal(signal.SIGINT, previous)
    release.set()
    leader.join(5)
    other.join(5)
    assert not other.is_alive(), "the writer behind the interrupted one was never synced"
    assert durability.synced == 30
    durability.stop()
