"""The ``kvs-server`` command.

    kvs-server [--addr IP:PORT] [--engine NAME] [--dir PATH] [--sync POLICY]
               [--requirepass PASSWORD | --config FILE] [--protected-mode yes|no]
               [--maxclients N] [--proto-max-bulk-len BYTES]
               [--client-query-buffer-limit BYTES] [--handshake-timeout SECONDS] [-V]

Listens on ``127.0.0.1:4000`` unless ``--addr`` says otherwise (``[::1]:4000`` for IPv6); keeps
its data in the current directory unless ``--dir``. Logs go to stderr. The engine a directory
was first served with is recorded in ``kvs.engine`` as soon as its store is open, before
anything is served (a directory without the file belongs to the engine whose files it holds:
``kvs.cli.kvs.directory_engine``); starting it later with another engine is an error.
Binding to an address other than loopback without a password is refused unless
``--protected-mode no`` says that is intended.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from kvs import __version__, engines
from kvs.cli._args import UsageParser, positive_int
from kvs.cli.kvs import directory_engine
from kvs.errors import KvsError, StoreLockedError
from kvs.log import filenames
from kvs.protocol.resp import split_args
from kvs.server.app import KvsServer, Limits, is_loopback, new_event_loop, run
from kvs.store import KvStore

#: What kvs-server passes the log engine: compaction starts once the stale bytes pass 64 MiB
#: and the live bytes, the way Redis starts an AOF rewrite (auto-aof-rewrite-min-size 64mb,
#: auto-aof-rewrite-percentage 100). The engine's own floor (8 MiB) suits an embedded store;
#: under redis-benchmark's overwrite-heavy SETs (100,000 keys, -P 16, -d 100) a server with
#: it used 5.8 CPU µs per SET, with this 3.5, ~30 % of its CPU having gone to compaction.
LOG_ENGINE_OPTIONS: dict[str, int | float] = {
    "compaction_min_stale_bytes": 64 * 1024 * 1024,
    "compaction_stale_ratio": 1.0,
}
#: Engines whose "path" is a server's URL, not a data directory: not for kvs-server.
NETWORK_ENGINES = frozenset({"redis"})
#: The engines --engine offers: the registry's (``kvs.engines.available()``) but those.
ENGINES = tuple(name for name in engines.available() if name not in NETWORK_ENGINES)
log = logging.getLogger("kvs.server")


def parse_addr(text: str) -> tuple[str, int]:
    """``IP:PORT`` (``[v6]:PORT`` or a bare v6 address with a port after the last colon)."""
    import ipaddress

    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: expected IP:PORT")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid address {text!r}: {bare!r} is not an IPv4 or IPv6 address"
        ) from None
    return bare, int(port_text)


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="kvs-server", description="Serve a kvs store over the Redis protocol."
    )
    parser.add_argument("-V", "--version", action="version", version=f"kvs-server {__version__}")
    parser.add_argument("--addr", type=parse_addr, default=("127.0.0.1", 4000), metavar="IP:PORT")
    parser.add_argument("--engine", choices=ENGINES, default=None, help="storage engine")
    parser.add_argument("--dir", default=None, metavar="PATH", help="data directory (default: .)")
    parser.add_argument(
        "--sync", choices=("always", "everysec", "no"), default="everysec", help="fsync policy"
    )
    parser.add_argument("--requirepass", default=None, metavar="PASSWORD")
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a redis.conf-style file; its one setting: requirepass",
    )
    parser.add_argument("--protected-mode", choices=("yes", "no"), default="yes")
    parser.add_argument("--maxclients", type=positive_int, default=10_000, metavar="N")
    defaults = Limits()
    parser.add_argument(
        "--proto-max-bulk-len",
        type=memory_size,
        default=defaults.max_bulk_len,
        metavar="BYTES",
        help="largest bulk string a client may send (default 512mb)",
    )
    parser.add_argument(
        "--client-query-buffer-limit",
        type=memory_size,
        default=defaults.max_query_buffer,
        metavar="BYTES",
        help="most unprocessed input held for one client (default 1gb)",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=seconds,
        default=defaults.handshake_timeout,
        metavar="SECONDS",
        help="a new client must complete its first command this fast (default 10; 0: no limit)",
    )
    return parser


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text!r}")
    return value


# Redis's memory units (redis.conf): k = 1000, kb = 1024, and so on.
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}


def memory_size(text: str) -> int:
    """A size as redis.conf writes them: ``1048576``, ``512mb``, ``1gb``, ``100k``."""
    lowered = text.strip().lower()
    digits = lowered.rstrip("kmgb")
    unit = lowered[len(digits) :]
    if not digits.isdigit() or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (examples: 1048576, 512mb)")
    value = int(digits) * _UNITS[unit]
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, not {text!r}")
    return value


def _read_config(path: str) -> dict[str, str]:
    """The settings of a redis.conf-style file: each line is split into words as Redis does
    (``requirepass "two words"``), names in any case; only ``requirepass`` is known."""
    settings: dict[str, str] = {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            words = split_args(line)
            where = f"{path}:{number}"
            if words is None:
                raise KvsError(f"{where}: unbalanced quotes")
            name = words[0].decode("utf-8", "replace").lower()
            if name != "requirepass":
                raise KvsError(f"{where}: unknown setting {name!r}")
            if len(words) != 2:
                raise KvsError(f"{where}: requirepass takes one argument (quote a password "
                               "that holds spaces)")  # fmt: skip
            try:
                settings[name] = words[1].decode("utf-8")
            except UnicodeDecodeError:
                raise KvsError(f"{where}: the password is not UTF-8") from None
    return settings


def _claim_engine(directory: str, requested: str | None) -> tuple[str, bool]:
    """The engine to serve ``directory`` with, and whether ``kvs.engine`` must be written
    (``_record_engine``, once the store opened, before anything is served)."""
    marker = filenames.engine_file(directory)
    try:
        with open(marker, encoding="utf-8") as f:
            recorded: str | None = f.read().strip()
        inferred = False
    except FileNotFoundError:
        # No marker (a directory the kvs command made): the engine is the one whose files
        # are there, if any, so that it is not served by another engine and marked as such.
        recorded = directory_engine(directory)
        inferred = recorded is not None
    if recorded is not None and recorded not in ENGINES:
        # Data of an engine this build does not have: never open it with another one.
        raise KvsError(
            f"{directory} holds data of the {recorded!r} engine (recorded in {marker}), which "
            f"this kvs-server does not have (engines: {', '.join(ENGINES)})"
        )
    where = "its files" if inferred else f"recorded in {marker}"
    engine = requested or recorded or "kvs"
    if recorded is not None and recorded != engine:
        raise KvsError(
            f"{directory} holds data of the {recorded!r} engine ({where}); it cannot be served "
            f"with {engine!r} (start with --engine {recorded})"
        )
    return engine, recorded is None or inferred


def _record_engine(directory: str, engine: str) -> None:
    """Write ``kvs.engine``: the directory belongs to ``engine`` from now on."""
    marker = filenames.engine_file(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    temp = marker + ".tmp"
    with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(engine + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, marker)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # the choice must survive a SIGKILL a moment from now
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s kvs-server %(levelname)s: %(message)s", level=logging.INFO
    )
    host, port = args.addr
    directory = os.path.abspath(args.dir or os.getcwd())
    try:
        password = args.requirepass
        if args.config:
            password = _read_config(args.config).get("requirepass", password)
        if not is_loopback(host) and not password and args.protected_mode == "yes":
            print(
                f"kvs-server: refusing to listen on {host} without a password: anyone who "
                "can reach it could read and change every key. Set --requirepass, or pass "
                "--protected-mode no if this network is trusted.",
                file=sys.stderr,
            )
            return 1
        engine, unrecorded = _claim_engine(directory, args.engine)
        # Under sync=always the server fsyncs once per event-loop turn for all clients
        # (group commit), so the store itself only has to hand writes to the OS.
        # Other engines get "always" itself: their sync() is then cheap or a no-op.
        store_sync = "no" if args.sync == "always" and engine == "kvs" else args.sync
        options = LOG_ENGINE_OPTIONS if engine == "kvs" else {}
        store = KvStore.open(directory, engine=engine, sync=store_sync, **options)
        if unrecorded:
            # Only once the engine opened the directory: a failed start claims nothing.
            try:
                _record_engine(directory, engine)
            except BaseException:
                store.close()
                raise
    except StoreLockedError as error:
        print(f"kvs-server: {error}", file=sys.stderr)
        return 3
    except (KvsError, OSError) as error:
        print(f"kvs-server: {error}", file=sys.stderr)
        return 1
    server = KvsServer(
        store,
        host=host,
        port=port,
        engine=engine,
        sync=args.sync,
        directory=directory,
        password=password.encode() if password else None,
        limits=Limits(
            max_clients=args.maxclients,
            max_bulk_len=args.proto_max_bulk_len,
            max_query_buffer=args.client_query_buffer_limit,
            handshake_timeout=args.handshake_timeout,
        ),
    )
    log.info("kvs-server %s", __version__)
    log.info("storage engine: %s, sync: %s, data: %s", engine, args.sync, directory)

    def ready(srv: KvsServer) -> None:
        bound_host, bound_port = srv.address
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        log.info("listening on %s:%d", shown, bound_port)

    loop = new_event_loop()
    try:
        loop.run_until_complete(run(server, ready))
    except OSError as error:
        store.close()
        print(f"kvs-server: cannot listen on {host}:{port}: {error.strerror}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    log.info("kvs-server stopped; data synced and closed")
    return 0


if __name__ == "__main__":  # pragma: no cover
    asyncio.set_event_loop_policy(None)
    sys.exit(main())
