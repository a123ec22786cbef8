"""``kvs check`` and its repair (kvs.log.check): every damaged span is reported, a repair cuts
out only the damage, and the lock is held from the check to the repair."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvs import KvStore, StoreLockedError
from kvs.log import check


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _store_with_a_remove_after_a_victim(directory: Path) -> Path:
    """``secret`` set in one file, removed in a later one right after ``victim``; returns the
    file that holds ``victim`` and the remove."""
    with KvStore.open(str(directory), max_file_size=4096, sync="no") as store:
        store.set("secret", "old-password")
        for i in range(40):
            store.set(f"pad{i}", "x" * 50)
        store.set("victim", "v" * 50)
        store.remove("secret")
        for i in range(80):
            store.set(f"more{i}", "y" * 50)
    for path in sorted(directory.glob("kvs-*.data")):
        data = path.read_bytes()
        at = data.find(b"victim")
        if at > 0 and b"secret" in data[at:]:
            return path
    raise AssertionError("no file holds victim followed by the remove of secret")


def test_repair_cuts_out_the_damage_and_keeps_the_valid_records_after_it(
    tmp_path: Path,
) -> None:
    """Cutting a sealed file at the damage used to drop every record after it, among them the
    remove of ``secret``: the repair brought a removed key (an old password) back."""
    damaged = _store_with_a_remove_after_a_victim(tmp_path)
    _flip(damaged, damaged.read_bytes().find(b"victim") + 10)
    report = check.check(str(tmp_path))
    corruption = [p for p in report.problems if p.kind == "corruption"]
    assert len(corruption) == 1 and corruption[0].end is not None
    done = check.repair(str(tmp_path), report)
    assert any("cut the damaged bytes" in line for line in done), done
    assert list(tmp_path.glob(f"{damaged.name}.corrupt-*")), "a backup is kept"
    assert check.check(str(tmp_path)).problems == []
    with KvStore.open(str(tmp_path)) as store:
        assert store.get("secret") is None, "the remove after the damage was kept"
        assert store.get("victim") is None  # the damaged record itself is lost
        assert store.get("pad39") == "x" * 50
        assert store.get("more79") == "y" * 50


def test_every_damaged_span_of_a_sealed_file_is_reported_and_cut_out(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path), max_file_size=4096, sync="no") as store:
        for i in range(100):  # about 3.4 kB: the first file
            store.set(f"k{i:03d}", f"value-{i:03d}")
        for i in range(200):  # later files
            store.set(f"later{i:03d}", "z" * 30)
    sealed = min(tmp_path.glob("kvs-*.data"))
    raw = sealed.read_bytes()
    assert b"k099" in raw and b"later" not in raw[: raw.find(b"k099")]
    for key in (b"k010", b"k050", b"k090"):
        _flip(sealed, raw.find(key) + 6)  # inside the value
    report = check.check(str(tmp_path))
    spans = [p for p in report.problems if p.kind == "corruption"]
    assert [p.path for p in spans] == [str(sealed)] * 3, report.problems
    check.repair(str(tmp_path), report)
    assert check.check(str(tmp_path)).problems == []
    with KvStore.open(str(tmp_path)) as store:
        left = sorted(key for key in store.scan("k"))
        assert left == [f"k{i:03d}" for i in range(100) if i not in (10, 50, 90)]
        assert store.get("k099") == "value-099"
        assert len(store) == 297


def test_a_damaged_record_whose_value_holds_a_record_image_adds_no_record(
    tmp_path: Path,
) -> None:
    """The damaged record's own length is used to step over it when it leads to a valid
    record: the image of a record inside its value must not come back as a record."""
    from kvs.log import record

    image = record.encode_record(0, b"phantom", b"never set")
    with KvStore.open(str(tmp_path), max_file_size=4096, sync="no") as store:
        store.set(b"blob", b"\xff" * 10 + image + b"\xff" * 10)
        store.set("after", "kept")
        for i in range(200):
            store.set(f"later{i:03d}", "z" * 30)
    sealed = min(tmp_path.glob("kvs-*.data"))
    _flip(sealed, sealed.read_bytes().find(b"blob") + 6)  # in the value, before the image
    report = check.check(str(tmp_path))
    check.repair(str(tmp_path), report)
    with KvStore.open(str(tmp_path)) as store:
        assert store.get("phantom") is None
        assert store.get("blob") is None
        assert store.get("after") == "kept"


def test_repair_refuses_a_report_the_store_has_moved_past(tmp_path: Path) -> None:
    """Another process may open the store between the check and the repair (the lock was
    let go): a cut at the old offsets could then drop writes made since."""
    with KvStore.open(str(tmp_path), sync="no") as store:
        store.set("a", "1")
    newest = max(tmp_path.glob("kvs-*.data"))
    newest.write_bytes(newest.read_bytes() + b"\x07garbage")  # a torn tail
    report = check.check(str(tmp_path))
    assert [p.kind for p in report.problems] == ["torn-tail"]
    with KvStore.open(str(tmp_path), sync="no") as store:  # opening cuts the tail, writes on
        store.set("written-since", "2")
    with pytest.raises(check.StaleReportError, match="run 'kvs check' again"):
        check.repair(str(tmp_path), report)
    with KvStore.open(str(tmp_path)) as store:
        assert store.get("written-since") == "2"


def test_the_lock_is_held_from_the_check_to_the_repair(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path), sync="no") as store:
        store.set("a", "1")
    with check.StoreCheck(str(tmp_path)) as store_check:
        report = store_check.check()
        with pytest.raises(StoreLockedError):
            KvStore.open(str(tmp_path))
        assert store_check.repair(report) == []
    with KvStore.open(str(tmp_path)) as store:
        assert store.get("a") == "1"
