"""The writer process of ``test_kill9``: writes to a store until it is killed.

    python kill9_writer.py DIR OPTIONS_JSON SEED ROUND COMPACT_WEIGHT

Prints ``READY`` once the store is open, then for every call ``BEGIN <n> <op as JSON>`` before
it and ``ACK <n>`` after it returns, flushing each line. Values are not printed: they are a
function of (key, tag, length, is_str), see ``value_for``, so the parent can rebuild them.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from typing import Any

MAX_OPS = 200_000
MAX_SECONDS = 60.0


def value_for(key: str, tag: str, length: int, is_str: bool) -> str | bytes:
    seed = hashlib.sha256(f"{key}|{tag}".encode()).digest()
    data = random.Random(seed).randbytes(length)
    return data.hex()[:length] if is_str else data


def value_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.02:
        return rng.randint(40_000, 150_000)  # larger than a data file
    if roll < 0.15:
        return rng.randint(1000, 6000)
    return rng.randint(0, 300)


def main() -> None:
    directory, options_json, seed, round_no, compact_weight = sys.argv[1:6]
    from kvs import KvStore

    options: dict[str, Any] = json.loads(options_json)
    rng = random.Random(int(seed))
    store = KvStore.open(directory, **options)
    live: list[str] = [k if isinstance(k, str) else k.decode() for k in store.scan()]
    live_set = set(live)
    print("READY", flush=True)
    weights = {"set": 35, "overwrite": 25, "rm": 10, "update": 10, "batch": 10}
    weights["compact"] = int(compact_weight)
    kinds, cum = list(weights), list(weights.values())
    counter = 0
    started = time.monotonic()

    def new_key() -> str:
        nonlocal counter
        counter += 1
        return f"r{round_no}k{counter}"

    def pick_live() -> str | None:
        while live:
            index = rng.randrange(len(live))
            key = live[index]
            if key in live_set:
                return key
            live[index] = live[-1]
            live.pop()
        return None

    for n in range(MAX_OPS):
        if time.monotonic() - started > MAX_SECONDS:
            break
        kind = rng.choices(kinds, cum)[0]
        tag = f"{round_no}.{n}"
        op: dict[str, Any]
        if kind in ("set", "overwrite"):
            key = new_key() if kind == "set" else pick_live()
            if key is None:
                continue
            op = {
                "op": "set",
                "key": key,
                "tag": tag,
                "len": value_size(rng),
                "str": rng.random() < 0.5,
            }
        elif kind == "rm":
            key = pick_live()
            if key is None:
                continue
            op = {"op": "rm", "key": key}
        elif kind == "update":
            chosen = [
                new_key() if rng.random() < 0.6 else pick_live() for _ in range(rng.randint(1, 8))
            ]
            keys = {key for key in chosen if key is not None}
            op = {"op": "update", "items": [[k, tag, value_size(rng)] for k in sorted(keys)]}
        elif kind == "batch":
            items: list[list[Any]] = []
            used: set[str] = set()
            for _ in range(rng.randint(1, 6)):
                if rng.random() < 0.3:
                    key = pick_live()
                    if key is not None and key not in used:
                        used.add(key)
                        items.append(["rm", key])
                    continue
                key = new_key() if rng.random() < 0.6 else pick_live()
                if key is None or key in used:
                    continue
                used.add(key)
                items.append(["set", key, tag, value_size(rng), rng.random() < 0.5])
            if not items:
                continue
            op = {"op": "batch", "items": items}
        else:
            op = {"op": "compact"}

        print(f"BEGIN {n} {json.dumps(op)}", flush=True)
        if op["op"] == "set":
            store.set(op["key"], value_for(op["key"], tag, op["len"], op["str"]))
            if op["key"] not in live_set:
                live_set.add(op["key"])
                live.append(op["key"])
        elif op["op"] == "rm":
            store.remove(op["key"])
            live_set.discard(op["key"])
        elif op["op"] == "update":
            pairs = {}
            for key, vtag, length in op["items"]:
                value = value_for(key, vtag, length, False)
                assert isinstance(value, bytes)
                pairs[key.encode()] = value
            store.update(pairs)  # the bulk path
            for key, _, _ in op["items"]:
                if key not in live_set:
                    live_set.add(key)
                    live.append(key)
        elif op["op"] == "batch":
            with store.batch() as batch:
                for item in op["items"]:
                    if item[0] == "rm":
                        batch.remove(item[1])
                    else:
                        batch.set(item[1], value_for(item[1], item[2], item[3], item[4]))
            for item in op["items"]:
                if item[0] == "rm":
                    live_set.discard(item[1])
                elif item[1] not in live_set:
                    live_set.add(item[1])
                    live.append(item[1])
        else:
            store.compact()
        print(f"ACK {n}", flush=True)
    store.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
