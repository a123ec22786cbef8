"""A crash in the middle of a write leaves a torn record at the end of the newest data file.

For every byte offset from the start of the third-to-last record (a batch is among the last
three) to the end of the data, the newest file is cut there and the store opened: it must keep
every complete record, drop the partial one (a batch all or nothing), warn once, remove the torn
bytes from the file, and take new writes that survive another reopen.

Two shapes of file are tested: a cleanly closed store (the file ends at its last record, so the
cut makes it shorter) and a store copied while still open, as a crash leaves it (the file keeps
its preallocated, zero-filled tail, so the bytes after the cut are zeros).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kvs import CorruptionError, KvsError

from .helpers import (
    Expected,
    Rec,
    apply,
    assert_contents,
    copy_dir,
    data_files,
    kvs_warnings,
    open_store,
    parse_records,
    read,
    write,
)

OPTIONS = {"max_file_size": 4096}

Op = tuple[str, bytes, str | bytes | None]


def workload() -> list[list[Op]]:
    """The records to write, one list of operations per record (a batch has several)."""
    records: list[list[Op]] = []
    for i in range(60):
        records.append([("set", f"k{i:02d}".encode(), f"value-{i}-" + "v" * (40 + i * 13 % 170))])
    for i in range(0, 60, 7):
        records.append([("set", f"k{i:02d}".encode(), bytes([i]) * (20 + i))])
    for i in range(3, 60, 11):
        records.append([("rm", f"k{i:02d}".encode(), None)])
    # The last three: an overwrite, a batch (new key, overwrite, remove), a new key.
    records.append([("set", b"k01", "overwritten")])
    records.append(
        [("set", b"batch-new", b"N" * 40), ("set", b"k02", "from-batch"), ("rm", b"k04", None)]
    )
    records.append([("set", b"last", "the last record")])
    return records


def write_records(store: object, records: list[list[Op]]) -> None:
    from kvs import KvStore

    assert isinstance(store, KvStore)
    for ops in records:
        if len(ops) > 1:
            with store.batch() as batch:
                for op, key, value in ops:
                    if op == "set":
                        assert value is not None
                        batch.set(key, value)
                    else:
                        batch.remove(key)
        elif ops[0][0] == "set":
            value = ops[0][2]
            assert value is not None
            store.set(ops[0][1], value)
        else:
            store.remove(ops[0][1])


def expected_after(records: list[list[Op]], count: int) -> Expected:
    expected: Expected = {}
    for ops in records[:count]:
        expected = apply(expected, ops)
    return expected


def last_three(path: str, records: list[list[Op]]) -> list[Rec]:
    """The top-level records of the newest data file; checks the last three are ours."""
    recs = parse_records(read(path))
    tail = recs[-3:]
    assert [r.is_batch for r in tail] == [False, True, False]
    assert tail[1].key_len == 3  # the batch's member count
    assert tail[2].size == 21 + len(b"last") + len(b"the last record")
    return recs


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same records, as a cleanly closed store and as a crash (an open store's copy)."""
    root = tmp_path_factory.mktemp("torn")
    records = workload()
    store = open_store(root / "live", **OPTIONS)
    try:
        write_records(store, records)
        copy_dir(root / "live", root / "unclean")
    finally:
        store.close()
    os.remove(root / "unclean" / "kvs.lock")
    assert len(data_files(root / "live")) >= 3
    return {"clean": root / "live", "unclean": root / "unclean"}


def check_cut(
    base: Path,
    work: Path,
    cut: int,
    recs: list[Rec],
    records: list[list[Op]],
    clean: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    copy_dir(base, work)
    newest = data_files(work)[-1]
    data_end = recs[-1].end
    if clean:
        os.truncate(newest, cut)
    else:  # the record was being copied into the map when the process died
        with open(newest, "r+b") as f:
            f.seek(cut)
            f.write(bytes(data_end - cut))
    complete = [r for r in recs if r.end <= cut]
    boundary = complete[-1].end
    kept = len(records) - (len(recs) - len(complete))
    expected = expected_after(records, kept)

    caplog.clear()
    store = open_store(work, **OPTIONS)
    try:
        warnings = kvs_warnings(caplog)
        if clean and cut == boundary:
            assert warnings == [], f"cut {cut} at a record boundary: nothing is torn"
        else:
            assert len(warnings) == 1, f"cut {cut}: {[w.getMessage() for w in warnings]}"
            message = warnings[0].getMessage()
            assert newest in message and f"offset {boundary}" in message, message
        assert_contents(store, expected)
        # The torn bytes are physically gone (the active file's tail is zeros again).
        assert read(newest)[boundary:data_end] == bytes(data_end - boundary)
        store.set("after-reopen", b"new write")
        expected[b"after-reopen"] = b"new write"
    finally:
        store.close()
    assert os.path.getsize(newest) == boundary + 21 + len(b"after-reopen") + len(b"new write")
    caplog.clear()
    store = open_store(work, **OPTIONS)
    try:
        assert kvs_warnings(caplog) == []
        assert_contents(store, expected)
    finally:
        store.close()
    shutil.rmtree(work)


def check_cuts(
    stores: dict[str, Path],
    shape: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    cuts: range,
) -> None:
    records = workload()
    base = stores[shape]
    recs = last_three(data_files(base)[-1], records)
    for cut in cuts:
        try:
            check_cut(base, tmp_path / f"cut{cut}", cut, recs, records, shape == "clean", caplog)
        except (AssertionError, KvsError) as error:
            raise AssertionError(f"{shape} store cut at offset {cut}: {error!r}") from None


def tail_offsets(stores: dict[str, Path]) -> tuple[Rec, Rec, Rec]:
    recs = last_three(data_files(stores["clean"])[-1], workload())
    assert recs[-1].end - recs[-3].offset < 400  # the loops below stay small
    return recs[-3], recs[-2], recs[-1]


@pytest.mark.parametrize("shape", ["clean", "unclean"])
def test_truncated_trailing_record_is_ignored(
    stores: dict[str, Path], shape: str, tmp_path: Path, kvs_log: pytest.LogCaptureFixture
) -> None:
    """Cut anywhere from the start of the third-to-last record to EOF; the second-to-last
    record is a batch (its complete members belong to it: not records after the damage)."""
    third, _, last = tail_offsets(stores)
    check_cuts(stores, shape, tmp_path, kvs_log, range(third.offset, last.end + 1))


def test_half_written_batch_is_dropped_whole(
    stores: dict[str, Path], tmp_path: Path, kvs_log: pytest.LogCaptureFixture
) -> None:
    records = workload()
    work = Path(copy_dir(stores["clean"], tmp_path / "store"))
    newest = data_files(work)[-1]
    recs = last_three(newest, records)
    batch = recs[-2]
    # Everything but the batch's own CRC: every member is complete and valid.
    write(newest, read(newest)[: batch.end - 4])
    store = open_store(work, **OPTIONS)
    try:
        assert len(kvs_warnings(kvs_log)) == 1
        assert store.get("batch-new") is None
        assert store.get("k02") != "from-batch"
        assert store.get("k04") is not None
        assert store.get("last") is None
        assert_contents(store, expected_after(records, len(records) - 2))
    finally:
        store.close()


def test_batch_torn_with_its_body_copied_out_of_order_is_dropped_whole(
    stores: dict[str, Path], tmp_path: Path, kvs_log: pytest.LogCaptureFixture
) -> None:
    """The state a killed ``memcpy`` of a batch's body can leave: the header (copied on its own,
    first) complete, the start of the body still zero, a complete member in the middle (a large
    copy need not run front to back), the rest not written. The header's own checksum makes
    its extent trustworthy, so the member inside it is not taken for a later record."""
    records = workload()
    work = Path(copy_dir(stores["unclean"], tmp_path / "store"))
    newest = data_files(work)[-1]
    recs = last_three(newest, records)
    batch = recs[-2]
    second_member = batch.offset + 17 + 21 + len(b"batch-new") + 40
    second_end = second_member + 21 + len(b"k02") + len(b"from-batch")
    data = bytearray(read(newest))
    data[batch.offset + 17 : batch.offset + 40] = bytes(23)
    data[second_end : recs[-1].end] = bytes(recs[-1].end - second_end)
    write(newest, bytes(data))
    store = open_store(work, **OPTIONS)
    try:
        assert len(kvs_warnings(kvs_log)) == 1
        assert_contents(store, expected_after(records, len(records) - 2))
    finally:
        store.close()
    assert os.path.getsize(newest) == batch.offset


def test_batch_without_a_valid_header_and_valid_members_after_is_corruption(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    """The engine copies a batch's header before its body, so a crash cannot leave members
    behind a missing header: valid members there mean damage, and recovery must not guess."""
    records = workload()
    work = Path(copy_dir(stores["unclean"], tmp_path / "store"))
    newest = data_files(work)[-1]
    batch = last_three(newest, records)[-2]
    data = bytearray(read(newest))
    data[batch.offset : batch.offset + 17] = bytes(17)
    write(newest, bytes(data))
    with pytest.raises(CorruptionError) as caught:
        open_store(work, **OPTIONS)
    assert caught.value.offset == batch.offset


def test_unclean_store_with_intact_records_opens_with_one_warning_and_loses_nothing(
    stores: dict[str, Path], tmp_path: Path, kvs_log: pytest.LogCaptureFixture
) -> None:
    records = workload()
    work = Path(copy_dir(stores["unclean"], tmp_path / "store"))
    newest = data_files(work)[-1]
    assert os.path.getsize(newest) == OPTIONS["max_file_size"]  # the preallocated tail
    store = open_store(work, **OPTIONS)
    try:
        assert len(kvs_warnings(kvs_log)) == 1
        assert_contents(store, expected_after(records, len(records)))
    finally:
        store.close()
    assert os.path.getsize(newest) == parse_records(read(newest))[-1].end


def test_torn_record_whose_value_embeds_a_record_is_refused_and_check_fix_recovers(
    tmp_path: Path,
) -> None:
    """A known limit, chosen on purpose: a torn last record whose value holds the bytes of a
    valid record (say, a kvs data file stored as a value) looks like damage followed by a
    record, so opening refuses with CorruptionError instead of guessing; trusting the torn
    record's own length to skip over its value could, were that length damaged, skip and cut
    real records. ``kvs check --fix`` (here ``repair``) then cuts the tail and the store opens."""
    from kvs.log import check, record

    embedded = record.encode_record(0, b"inner", b"looks like a record")
    path = tmp_path / "store"
    store = open_store(path, **OPTIONS)
    try:
        store.set("before", "kept")
        store.set(b"blob", b"\x00" * 10 + embedded + b"\xff" * 50)
    finally:
        store.close()
    newest = data_files(path)[-1]
    blob = parse_records(read(newest))[-1]
    os.truncate(newest, blob.end - 20)  # the embedded record is complete, the outer one is not
    with pytest.raises(CorruptionError) as caught:
        open_store(path, **OPTIONS)
    assert caught.value.offset == blob.offset
    report = check.check(str(path))
    assert [(p.kind, p.offset) for p in report.problems] == [("corruption", blob.offset)]
    check.repair(str(path), report)
    store = open_store(path, **OPTIONS)
    try:
        assert_contents(store, {b"before": "kept"})
    finally:
        store.close()
