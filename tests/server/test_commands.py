"""Redis commands through redis-py, RESP2 and RESP3, against one shared kvs-server process."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
import redis

from .helpers import ServerProcess, call, recv_until, resp, send

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)


def raw_call(r: redis.Redis, *args: str) -> Any:
    """Send one command and return the reply as parsed, without redis-py's callbacks."""
    conn: Any = r.connection_pool.get_connection()
    try:
        send(conn, *args)
        return conn.read_response()
    finally:
        r.connection_pool.release(conn)


def b(value: object) -> object:
    """Normalise str/bytes replies (RESP3 status replies may come back as str)."""
    return value.decode() if isinstance(value, bytes) else value


# -- connection -----------------------------------------------------------------------------


def test_ping_echo(r: redis.Redis) -> None:
    assert r.ping() is True
    assert raw_call(r, "PING", "hi") == b"hi"  # (redis-py's ping() turns replies into a bool)
    assert r.echo(b"hello \x00 world") == b"hello \x00 world"
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'ping'"):
        call(r, "PING", "a", "b")


def test_hello_reports_the_protocol(r: redis.Redis, protocol: int) -> None:
    reply = call(r, "HELLO")
    info = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
    info = {b(k): v for k, v in info.items()}
    assert info["proto"] == protocol
    assert b(info["server"]) == "redis"
    assert b(info["mode"]) == "standalone"
    assert isinstance(info["id"], int)
    with pytest.raises(redis.ResponseError, match="unsupported protocol version"):
        call(r, "HELLO", 4)


def test_auth_without_a_password_configured(r: redis.Redis) -> None:
    # redis-py raises AuthenticationError for this text (as with a real Redis).
    with pytest.raises(redis.exceptions.AuthenticationError, match="without any password"):
        call(r, "AUTH", "secret")
    # As in Redis, the default user has no password then ("nopass"): any password works for
    # it, not for other users.
    assert call(r, "AUTH", "default", "anything") in (True, b"OK", "OK")
    with pytest.raises(
        redis.exceptions.AuthenticationError, match="invalid username-password pair"
    ):
        call(r, "AUTH", "bob", "anything")
    port = r.connection_pool.connection_kwargs["port"]
    with redis.Redis(port=port, protocol=3, password="whatever") as client:  # HELLO 3 AUTH
        assert client.ping() is True
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(resp("HELLO", "3", "AUTH", "default", "x") + resp("AUTH", "bob", "x"))
        reply = recv_until(sock, b"user is disabled.\r\n")
        assert reply.startswith(b"%7\r\n") and reply.endswith(
            b"\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        )


def test_quit_closes_then_client_reconnects(r: redis.Redis) -> None:
    assert call(r, "QUIT") in (True, b"OK", "OK")
    assert r.ping() is True  # redis-py reconnects


def test_select(r: redis.Redis) -> None:
    assert call(r, "SELECT", 0) in (True, b"OK", "OK")
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        call(r, "SELECT", 1)
    with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
        call(r, "SELECT", "x")


def test_client_name_and_id(r: redis.Redis) -> None:
    assert r.client_getname() is None
    assert r.client_setname("worker-1") is True
    assert b(r.client_getname()) == "worker-1"
    assert isinstance(r.client_id(), int)
    with pytest.raises(redis.ResponseError, match="cannot contain spaces"):
        r.client_setname("a b")
    with pytest.raises(redis.ResponseError, match="unknown subcommand"):
        call(r, "CLIENT", "NOSUCH")


def test_config_get(r: redis.Redis, shared_server: ServerProcess) -> None:
    config = {b(k): b(v) for k, v in r.config_get("*").items()}
    assert config["port"] == str(shared_server.port)
    assert config["bind"] == "127.0.0.1"
    assert config["databases"] == "1"
    assert config["appendfsync"] == "everysec"
    assert {b(k) for k in r.config_get("max*")} == {"maxclients"}
    with pytest.raises(redis.ResponseError, match="not supported"):
        r.config_set("maxclients", 5)


def test_info(r: redis.Redis) -> None:
    r.set("a", "1")
    info = r.info()
    assert info["redis_version"] == "7.0.0"
    assert info["connected_clients"] >= 1
    assert info["db0"]["keys"] == 1
    server = r.info("server")
    assert "redis_version" in server and "connected_clients" not in server


def test_command(r: redis.Redis) -> None:
    table = r.command()
    assert table["get"]["arity"] == 2
    assert table["set"]["arity"] == -3
    assert table["get"]["first_key_pos"] == 1
    assert r.command_count() == len(table)
    assert {"get", "set", "scan", "multi", "exec", "hello"} <= set(table)
    raw = raw_call(r, "COMMAND", "INFO", "get", "nosuch")
    assert len(raw) == 2 and raw[1] is None
    assert raw[0][0] == b"get" and raw[0][1] == 2
    assert not raw_call(r, "COMMAND", "DOCS")


def test_unknown_command_and_arity_errors(r: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError) as error:
        call(r, "NOSUCH", "x", "y")
    assert str(error.value) == "unknown command 'NOSUCH', with args beginning with: 'x' 'y' "
    with pytest.raises(redis.ResponseError) as error:
        call(r, "GET")
    assert str(error.value) == "wrong number of arguments for 'get' command"
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'set' command"):
        call(r, "SET", "k")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'mset' command"):
        call(r, "MSET", "a", "1", "b")


# -- strings --------------------------------------------------------------------------------


def test_get_set_basic(r: redis.Redis) -> None:
    assert r.get("missing") is None
    assert r.set("k", "v") is True
    assert r.get("k") == b"v"
    assert r.set("k", "w") is True
    assert r.get("k") == b"w"
    assert r.set("empty", b"") is True
    assert r.get("empty") == b""


def test_set_nx_xx_get(r: redis.Redis) -> None:
    assert r.set("k", "1", xx=True) is None
    assert r.get("k") is None
    assert r.set("k", "1", nx=True) is True
    assert r.set("k", "2", nx=True) is None
    assert r.get("k") == b"1"
    assert r.set("k", "3", xx=True) is True
    assert r.get("k") == b"3"
    assert r.set("k", "4", get=True) == b"3"
    assert r.set("new", "x", get=True) is None
    assert r.set("k", "5", nx=True, get=True) == b"4"  # NX failed: old value, no change
    assert r.get("k") == b"4"
    with pytest.raises(redis.ResponseError, match="syntax error"):
        call(r, "SET", "k", "v", "NX", "XX")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        call(r, "SET", "k", "v", "BOGUS")


def test_set_expiry_options(r: redis.Redis) -> None:
    assert r.set("ex", "v", ex=100) is True
    assert 99 <= r.ttl("ex") <= 100
    assert r.set("px", "v", px=100_000) is True
    assert 99_000 <= r.pttl("px") <= 100_000
    now = int(time.time())
    assert r.set("exat", "v", exat=now + 200) is True
    assert 198 <= r.ttl("exat") <= 200
    assert r.set("pxat", "v", pxat=(now + 300) * 1000) is True
    assert 298_000 <= r.pttl("pxat") <= 300_000
    # KEEPTTL keeps the TTL; a plain SET clears it.
    assert r.set("ex", "w", keepttl=True) is True
    assert 99 <= r.ttl("ex") <= 100
    assert r.get("ex") == b"w"
    assert r.set("ex", "x") is True
    assert r.ttl("ex") == -1
    # An absolute time in the past deletes the key.
    assert r.set("gone", "v") is True
    assert r.set("gone", "v", exat=now - 10) is True
    assert r.get("gone") is None


def test_set_expiry_errors(r: redis.Redis) -> None:
    for args in (("EX", "0"), ("PX", "-5"), ("EX", "-1")):
        with pytest.raises(redis.ResponseError, match="invalid expire time in 'set' command"):
            call(r, "SET", "k", "v", *args)
    with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
        call(r, "SET", "k", "v", "EX", "ten")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        call(r, "SET", "k", "v", "EX", "10", "PX", "10")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        call(r, "SET", "k", "v", "EX", "10", "KEEPTTL")
    # Times whose milliseconds overflow a signed 64-bit integer: Redis's error, not a crash.
    for args in (
        ("EX", str(INT64_MAX)),
        ("EXAT", str(INT64_MAX)),
        ("PX", str(INT64_MAX)),
        ("EX", str(INT64_MAX // 1000 + 1)),
    ):
        with pytest.raises(redis.ResponseError, match="invalid expire time in 'set' command"):
            call(r, "SET", "k", "v", *args)
    assert r.get("k") is None
    # The largest absolute time is still valid (as in Redis).
    assert call(r, "SET", "k", "v", "PXAT", str(INT64_MAX)) in (True, b"OK", "OK")
    assert r.ttl("k") > 10**15
    assert r.ping() is True


def test_expired_key_vanishes(r: redis.Redis) -> None:
    r.set("short", "v", px=50)
    time.sleep(0.15)
    assert r.get("short") is None
    assert r.exists("short") == 0
    assert r.ttl("short") == -2


def test_getdel(r: redis.Redis) -> None:
    r.set("k", "v")
    assert r.getdel("k") == b"v"
    assert r.getdel("k") is None
    assert r.exists("k") == 0


def test_mget_mset(r: redis.Redis) -> None:
    assert r.mset({"a": "1", "b": "2", "c": b"\x00\xff"}) is True
    assert r.mget("a", "b", "missing", "c") == [b"1", b"2", None, b"\x00\xff"]


def test_del_unlink_exists(r: redis.Redis) -> None:
    r.mset({"a": "1", "b": "2", "c": "3"})
    assert r.exists("a", "b", "a", "nope") == 3
    assert r.delete("a", "nope", "a") == 1
    assert r.unlink("b", "c") == 2
    assert r.exists("a", "b", "c") == 0
    assert r.delete("a") == 0


def test_expire_family(r: redis.Redis) -> None:
    assert r.expire("missing", 10) is False
    assert r.ttl("missing") == -2
    assert r.pttl("missing") == -2
    r.set("k", "v")
    assert r.ttl("k") == -1
    assert r.pttl("k") == -1
    assert r.expire("k", 100) is True
    assert 99 <= r.ttl("k") <= 100
    assert r.pexpire("k", 50_000) is True
    assert 49_000 <= r.pttl("k") <= 50_000
    assert r.persist("k") is True
    assert r.persist("k") is False
    assert r.ttl("k") == -1
    assert r.expire("k", 100, nx=True) is True
    assert r.expire("k", 200, nx=True) is False
    assert r.expire("k", 50, gt=True) is False
    assert r.expire("k", 500, gt=True) is True
    assert r.expireat("k", int(time.time()) + 1000) is True
    assert 990 <= r.ttl("k") <= 1000
    assert r.pexpireat("k", int(time.time() * 1000) + 2_000_000) is True
    assert 1990 <= r.ttl("k") <= 2000
    assert r.expire("k", -1) is True  # a time in the past deletes
    assert r.exists("k") == 0
    r.set("k", "v")
    assert r.expire("k", -(INT64_MAX // 1000)) is True  # the most negative Redis accepts
    assert r.exists("k") == 0


def test_expire_errors(r: redis.Redis) -> None:
    r.set("k", "v")
    with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
        call(r, "EXPIRE", "k", "soon")
    with pytest.raises(redis.ResponseError, match="Unsupported option"):
        call(r, "EXPIRE", "k", "10", "YY")
    # Redis checks the options before the number, as the messages show.
    with pytest.raises(redis.ResponseError, match="Unsupported option FOO"):
        call(r, "EXPIRE", "k", "soon", "FOO")
    with pytest.raises(redis.ResponseError, match=r"^GT and LT options at the same time"):
        call(r, "EXPIRE", "k", "10", "GT", "LT")
    with pytest.raises(redis.ResponseError, match=r"^NX and XX, GT or LT options"):
        call(r, "PEXPIRE", "k", str(INT64_MAX), "NX", "GT")
    for command, number in (
        ("EXPIRE", INT64_MAX),
        ("EXPIRE", INT64_MIN),
        ("PEXPIRE", INT64_MAX),
        ("EXPIREAT", INT64_MAX),
    ):
        with pytest.raises(redis.ResponseError) as error:
            call(r, command, "k", str(number))
        assert str(error.value) == f"invalid expire time in '{command.lower()}' command"
    assert r.get("k") == b"v"
    assert r.ttl("k") == -1


def test_type_strlen_append(r: redis.Redis) -> None:
    assert b(r.type("k")) == "none"
    assert r.strlen("k") == 0
    assert r.append("k", "abc") == 3
    assert r.append("k", b"\x00de") == 6
    assert r.get("k") == b"abc\x00de"
    assert r.strlen("k") == 6
    assert b(r.type("k")) == "string"


def test_append_keeps_ttl(r: redis.Redis) -> None:
    r.set("k", "a", ex=100)
    r.append("k", "b")
    assert 99 <= r.ttl("k") <= 100


def test_incr_decr(r: redis.Redis) -> None:
    assert r.incr("n") == 1
    assert r.incrby("n", 10) == 11
    assert r.decr("n") == 10
    assert r.decrby("n", 15) == -5
    assert r.get("n") == b"-5"
    assert r.incrby("n", -5) == -10
    r.set("t", "5", ex=100)
    assert r.incr("t") == 6
    assert 99 <= r.ttl("t") <= 100  # INCR keeps the TTL


@pytest.mark.parametrize("stored", ["abc", "1.5", " 1", "1 ", "+1", "01", "-0", "", "9" * 20])
def test_incr_of_a_non_integer(r: redis.Redis, stored: str) -> None:
    r.set("n", stored)
    with pytest.raises(redis.ResponseError) as error:
        r.incr("n")
    assert str(error.value) == "value is not an integer or out of range"
    assert r.get("n") == stored.encode()


def test_incr_overflow(r: redis.Redis) -> None:
    r.set("n", str(INT64_MAX))
    with pytest.raises(redis.ResponseError) as error:
        r.incr("n")
    assert str(error.value) == "increment or decrement would overflow"
    r.set("n", str(INT64_MIN))
    with pytest.raises(redis.ResponseError, match="increment or decrement would overflow"):
        r.decr("n")
    with pytest.raises(redis.ResponseError, match="increment or decrement would overflow"):
        r.decrby("n", 1)
    assert r.get("n") == str(INT64_MIN).encode()
    with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
        call(r, "INCRBY", "n", "x")
    with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
        call(r, "INCRBY", "n", str(INT64_MAX + 1))
    r.set("m", "0")
    with pytest.raises(redis.ResponseError) as error:
        r.decrby("m", INT64_MIN)
    assert str(error.value) == "decrement would overflow"


def test_binary_safe_keys_and_values(r: redis.Redis) -> None:
    every_byte = bytes(range(256))
    keys = [b"\x00", b"\r\n", b"k e y", every_byte, b"\xff" * 300]
    for i, key in enumerate(keys):
        value = every_byte * (i + 1) + b"\r\n$5\r\n*1\r\n"
        assert r.set(key, value) is True
        assert r.get(key) == value
    assert sorted(r.keys("*")) == sorted(keys)
    assert r.exists(*keys) == len(keys)
    big = bytes(range(256)) * 4096  # 1 MiB
    r.set(b"big\x00", big)
    assert r.get(b"big\x00") == big


# -- iteration ------------------------------------------------------------------------------


def test_scan_returns_every_key_exactly_once(r: redis.Redis) -> None:
    keys = {f"key:{i}".encode() for i in range(1000)}
    r.mset({k: b"v" for k in keys})
    for count in (None, 1, 7, 100, 5000):
        seen: list[bytes] = []
        cursor = 0
        calls = 0
        while True:
            cursor, batch = r.scan(cursor, count=count)
            seen.extend(batch)  # type: ignore[arg-type]
            calls += 1
            if cursor == 0:
                break
            assert calls < 5000
        assert len(seen) == len(keys), count
        assert set(seen) == keys
        if count and count < 1000:
            assert calls > 1


def test_scan_match_and_count(r: redis.Redis) -> None:
    r.mset({f"user:{i}": "u" for i in range(50)})
    r.mset({f"order:{i}": "o" for i in range(50)})
    users = set(r.scan_iter(match="user:*", count=10))
    assert users == {f"user:{i}".encode() for i in range(50)}
    assert set(r.scan_iter(match="user:1?")) == {f"user:1{i}".encode() for i in range(10)}
    assert list(r.scan_iter(match="nothing*")) == []
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.scan(0, count=0)
    # Cursors are read as Redis reads them (strtoul): a sign and leading zeros are taken,
    # -1 wraps around to 2**64 - 1; spaces, other characters and 2**64 are refused.
    for cursor in ("-1", "+0", "00", str(2**64 - 1)):
        next_cursor, _ = call(r, "SCAN", cursor)
        assert int(next_cursor) >= 0
    for bad in (str(2**64), " 0", "0x10", "1.0", ""):
        with pytest.raises(redis.ResponseError, match="invalid cursor"):
            call(r, "SCAN", bad)
    with pytest.raises(redis.ResponseError, match="syntax error"):
        call(r, "SCAN", "0", "BOGUS")


def test_keys_dbsize_flushdb(r: redis.Redis) -> None:
    assert r.dbsize() == 0
    assert r.keys() == []
    r.mset({"a1": "1", "a2": "2", "b1": "3", "a[x]": "4"})
    assert r.dbsize() == 4
    assert sorted(r.keys("a?")) == [b"a1", b"a2"]
    assert sorted(r.keys("a*")) == [b"a1", b"a2", b"a[x]"]
    assert sorted(r.keys("[ab]1")) == [b"a1", b"b1"]
    assert r.keys(r"a\[x\]") == [b"a[x]"]
    assert r.flushdb() is True
    assert r.dbsize() == 0
    assert r.keys("*") == []


# -- transactions ---------------------------------------------------------------------------


def test_multi_exec(r: redis.Redis) -> None:
    r.set("counter", "10")
    with r.pipeline(transaction=True) as pipe:
        pipe.set("a", "1")
        pipe.incr("counter")
        pipe.get("a")
        pipe.mget("a", "counter")
        pipe.delete("a")
        pipe.get("a")
        result = pipe.execute()
    assert result == [True, 11, b"1", [b"1", b"11"], 1, None]
    assert r.get("counter") == b"11"
    assert r.get("a") is None


def test_watch_fails_exec_after_another_clients_write(
    r: redis.Redis, shared_server: ServerProcess, protocol: int
) -> None:
    r.set("balance", "100")
    other = shared_server.client(protocol)
    try:
        with r.pipeline() as pipe:
            pipe.watch("balance")
            balance = int(pipe.get("balance") or 0)
            other.set("balance", "0")  # lands between the read and the EXEC
            pipe.multi()
            pipe.set("balance", balance - 30)
            with pytest.raises(redis.WatchError):
                pipe.execute()
    finally:
        other.close()
    assert r.get("balance") == b"0"


def test_watch_gives_redis_py_transactions_no_lost_updates(
    r: redis.Redis, shared_server: ServerProcess, protocol: int
) -> None:
    """redis-py's transaction() helper (WATCH, read, MULTI, write, EXEC, retry on WatchError)
    from 4 threads at once: every increment is counted exactly once."""
    threads, rounds = 4, 25
    errors: list[BaseException] = []

    def increment(pipe: Any) -> None:
        value = int(pipe.get("counter") or 0)
        time.sleep(0.001)  # widen the window in which another thread may write
        pipe.multi()
        pipe.set("counter", value + 1)

    def worker() -> None:
        client = shared_server.client(protocol)
        try:
            for _ in range(rounds):
                client.transaction(increment, "counter")
        finally:
            client.close()

    def run_worker() -> None:
        try:
            worker()
        except BaseException as error:  # surfaced below, in the test's thread
            errors.append(error)

    pool = [threading.Thread(target=run_worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    assert r.get("counter") == str(threads * rounds).encode()


def test_watches_end_with_the_connection(inproc: Any) -> None:
    """A client that disconnects while watching leaves nothing behind, and once nobody
    watches, the commands run on the store itself again (no signalling layer)."""
    server = inproc()
    state = server.server.state
    client = server.client()
    try:
        client.execute_command("WATCH", "a", "b")
        assert set(state.watchers) == {b"a", b"b"}
        assert state.store is not state.plain_store
        client.execute_command("UNWATCH")
        assert state.watchers == {} and state.store is state.plain_store
        client.execute_command("WATCH", "a")
    finally:
        client.close()
    deadline = time.monotonic() + 10
    while state.watchers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state.watchers == {}
    assert state.store is state.plain_store


def test_multi_exec_error_inside_is_per_command(r: redis.Redis) -> None:
    r.set("s", "text")
    with r.pipeline(transaction=True) as pipe:
        pipe.set("x", "1")
        pipe.incr("s")
        pipe.set("y", "2")
        result = pipe.execute(raise_on_error=False)
    assert result[0] is True and result[2] is True
    assert isinstance(result[1], redis.ResponseError)
    assert r.mget("x", "y") == [b"1", b"2"]


def test_execabort_after_a_queued_error(r: redis.Redis) -> None:
    with r.pipeline(transaction=True) as pipe:
        pipe.set("x", "1")
        call(pipe, "GET")  # wrong number of arguments: rejected while queueing
        pipe.set("y", "2")
        with pytest.raises(redis.ResponseError) as error:
            pipe.execute()
    assert "wrong number of arguments" in str(error.value) or "EXECABORT" in str(error.value)
    assert r.exists("x", "y") == 0
    # The same at the protocol level: EXECABORT.
    conn: Any = r.connection_pool.get_connection()
    try:
        conn.send_packed_command(
            [resp("MULTI") + resp("SET", "x", "1") + resp("NOSUCH") + resp("EXEC")]
        )
        assert b(conn.read_response()) == "OK"
        assert b(conn.read_response()) == "QUEUED"
        with pytest.raises(redis.ResponseError, match="unknown command"):
            conn.read_response()
        with pytest.raises(redis.exceptions.ExecAbortError, match="Transaction discarded"):
            conn.read_response()
    finally:
        r.connection_pool.release(conn)
    assert r.exists("x") == 0


def test_discard(r: redis.Redis) -> None:
    conn: Any = r.connection_pool.get_connection()
    try:
        for command, reply in (("MULTI", "OK"), ("SET", "QUEUED"), ("DISCARD", "OK")):
            send(conn, command, *(["x", "1"] if command == "SET" else []))
            assert b(conn.read_response()) == reply
    finally:
        r.connection_pool.release(conn)
    assert r.get("x") is None
    with pytest.raises(redis.ResponseError, match="DISCARD without MULTI"):
        call(r, "DISCARD")
    with pytest.raises(redis.ResponseError, match="EXEC without MULTI"):
        call(r, "EXEC")


def test_nested_multi(r: redis.Redis) -> None:
    conn: Any = r.connection_pool.get_connection()
    try:
        send(conn, "MULTI")
        assert b(conn.read_response()) == "OK"
        send(conn, "MULTI")
        with pytest.raises(redis.ResponseError, match="MULTI calls can not be nested"):
            conn.read_response()
        send(conn, "DISCARD")
        assert b(conn.read_response()) == "OK"
    finally:
        r.connection_pool.release(conn)


def exchange(r: redis.Redis, *commands: tuple[str, ...]) -> list[Any]:
    """Send ``commands`` on one connection and return their replies in order, an error reply
    as the string ``"error: <message>"``."""
    conn: Any = r.connection_pool.get_connection()
    replies: list[Any] = []
    try:
        conn.send_packed_command([b"".join(resp(*command) for command in commands)])
        for _ in commands:
            try:
                replies.append(b(conn.read_response()))
            except redis.ResponseError as error:
                replies.append(f"error: {error}")
    finally:
        r.connection_pool.release(conn)
    return replies


def test_shutdown_inside_multi_is_refused_and_aborts_the_block(
    r: redis.Redis, shared_server: ServerProcess
) -> None:
    """It used to run at once, inside the block: any client could stop the server with a
    MULTI it then discarded."""
    replies = exchange(r, ("MULTI",), ("SET", "x", "1"), ("SHUTDOWN",), ("EXEC",))
    assert replies[:2] == ["OK", "QUEUED"]
    assert replies[2] == "error: Command not allowed inside a transaction"
    assert replies[3].startswith("error: Transaction discarded because of previous errors")
    assert shared_server.proc.poll() is None and r.ping() is True
    assert r.get("x") is None


def test_exec_with_arguments_ends_the_block(r: redis.Redis) -> None:
    """Redis answers EXECABORT and discards the block; kvs used to stay in it, so that the
    client and the server disagreed about what the next commands were."""
    replies = exchange(r, ("MULTI",), ("SET", "a", "1"), ("EXEC", "x"), ("GET", "a"))
    assert replies[2] == (
        "error: Transaction discarded because of: wrong number of arguments for 'exec' command"
    )
    assert replies[3] is None
    assert exchange(r, ("EXEC", "x"))[0].startswith("error: Transaction discarded because of")


def test_reads_of_the_whole_key_space_inside_multi_see_the_blocks_writes(r: redis.Redis) -> None:
    r.set("q", "1")
    replies = exchange(
        r,
        ("MULTI",),
        ("SET", "x", "1"),
        ("DBSIZE",),
        ("KEYS", "*"),
        ("SCAN", "0", "COUNT", "100"),
        ("DEL", "q"),
        ("DBSIZE",),
        ("FLUSHDB",),
        ("SET", "y", "2"),
        ("KEYS", "*"),
        ("EXEC",),
    )
    result = [b(item) for item in replies[-1]]
    assert result[0] == "OK"
    assert result[1] == 2  # q, and x of this block (kvs said 1)
    assert sorted(result[2]) == [b"q", b"x"]
    cursor, scanned = result[3]
    assert b(cursor) == "0" and sorted(scanned) == [b"q", b"x"]
    assert result[4:8] == [1, 1, "OK", "OK"]  # DEL q; DBSIZE; FLUSHDB; SET y
    assert result[8] == [b"y"]
    assert r.dbsize() == 1 and r.get("y") == b"2"


def test_bad_subcommands_are_refused_while_queueing(r: redis.Redis) -> None:
    """As in Redis 7, where each subcommand is a command: the block then aborts (kvs used to
    queue them, and EXEC ran the rest of the block)."""
    for bad, message in (
        (("CLIENT", "NOPE"), "unknown subcommand 'NOPE'. Try CLIENT HELP."),
        (("CLIENT", "SETNAME"), "wrong number of arguments for 'client|setname' command"),
        (("CONFIG", "GET"), "wrong number of arguments for 'config|get' command"),
        (("COMMAND", "COUNT", "x"), "wrong number of arguments for 'command|count' command"),
    ):
        replies = exchange(r, ("MULTI",), bad, ("SET", "b", "1"), ("EXEC",))
        assert replies[1] == f"error: {message}", bad
        assert replies[3].startswith("error: Transaction discarded"), bad
        assert r.get("b") is None
        assert exchange(r, bad) == [f"error: {message}"]


def test_auth_and_hello_are_queued_inside_multi(r: redis.Redis) -> None:
    replies = exchange(r, ("MULTI",), ("HELLO",), ("EXEC",))
    assert replies[1] == "QUEUED"
    assert isinstance(replies[2], list) and len(replies[2]) == 1


def test_client_names_are_printable_ascii_without_spaces(r: redis.Redis) -> None:
    """A name goes into CLIENT LIST as it is: a newline in it could forge a client's line."""
    for bad in ("a b", "a\tb", "a\x7fb", "caf\u00e9", "a\nid=999 name=forged"):
        with pytest.raises(redis.ResponseError, match="cannot contain spaces"):
            r.client_setname(bad)
        with pytest.raises(redis.ResponseError, match="cannot contain spaces"):
            call(r, "HELLO", "2", "SETNAME", bad)
    assert r.client_setname("!good~name") is True
    assert b(r.client_getname()) == "!good~name"
    listing = b(call(r, "CLIENT", "LIST"))
    assert isinstance(listing, str) and "forged" not in listing


def test_set_takes_the_same_expiry_option_twice_and_the_last_counts(r: redis.Redis) -> None:
    assert r.execute_command("SET", "k", "v", "EX", "100", "EX", "1000") is True
    assert 900 < r.ttl("k") <= 1000
    assert r.execute_command("SET", "k", "v", "PX", "abc", "PX", "5000") is True
    assert 0 < r.pttl("k") <= 5000
    assert r.execute_command("SET", "k", "v", "NX", "NX") is None
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", "k", "v", "EX", "10", "PX", "10")
    with pytest.raises(redis.ResponseError, match="syntax error"):  # options before numbers
        r.execute_command("SET", "k", "v", "EX", "abc", "FOO")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.execute_command("SET", "k", "v", "EX", "abc")


# -- pipelines ------------------------------------------------------------------------------


def test_pipeline_of_10000_commands(r: redis.Redis) -> None:
    with r.pipeline(transaction=False) as pipe:
        for i in range(5000):
            pipe.set(f"p:{i}", i)
        for i in range(5000):
            pipe.get(f"p:{i}")
        result = pipe.execute()
    assert result[:5000] == [True] * 5000
    assert result[5000:] == [str(i).encode() for i in range(5000)]
    assert r.dbsize() == 5000


def test_transaction_of_10000_commands(r: redis.Redis) -> None:
    with r.pipeline(transaction=True) as pipe:
        for _ in range(10_000):
            pipe.incr("n")
        result = pipe.execute()
    assert result == list(range(1, 10_001))
    assert r.get("n") == b"10000"
