"""The order compaction copies records in (docs/format.md section 13, step 2)."""

from __future__ import annotations

import random

from kvs.log import compaction


def test_records_are_copied_in_file_then_offset_order() -> None:
    rng = random.Random(5)
    # Records of three files, spread over several MiB of each, in index (random) order.
    snapshot = [
        (b"k%d" % i, file_id << 64 | offset << 32 | offset + 40)
        for i, (file_id, offset) in enumerate(
            (rng.choice((1, 4, 9)), rng.randrange(32, 8 << 20)) for _ in range(20_000)
        )
    ]
    expected = sorted(snapshot, key=lambda entry: entry[1])
    ordered = list(compaction._in_file_order(snapshot))
    assert ordered == expected
    assert snapshot == []  # emptied, so that entries are freed as they are copied
