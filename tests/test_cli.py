"""Every row of the ``kvs`` command's contract (README, "The kvs command")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import kvs
from kvs import KvStore

_SCRIPT = Path(sys.executable).parent / "kvs"
KVS = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "kvs.cli.kvs"]


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "KVS_DIR"}
    full_env.update(env or {})
    return subprocess.run(
        [*KVS, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=full_env
    )


def assert_clean_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip(), "an error must say what went wrong on stderr"


def test_set_prints_nothing_and_get_prints_the_value(tmp_path: Path) -> None:
    result = run("set", "key1", "value1", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    result = run("get", "key1", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "value1\n")


def test_get_of_an_absent_key_prints_key_not_found_and_exits_0(tmp_path: Path) -> None:
    result = run("get", "key1", cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, "Key not found")


def test_rm_of_a_present_key_prints_nothing(tmp_path: Path) -> None:
    run("set", "key1", "value1", cwd=tmp_path)
    result = run("rm", "key1", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "")
    assert run("get", "key1", cwd=tmp_path).stdout.strip() == "Key not found"


def test_rm_of_an_absent_key_prints_key_not_found_and_fails(tmp_path: Path) -> None:
    result = run("rm", "key1", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.strip() == "Key not found"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(tmp_path: Path, flag: str) -> None:
    result = run(flag, cwd=tmp_path)
    assert result.returncode == 0
    assert kvs.__version__ in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["get"],
        ["get", "extra", "field"],
        ["set"],
        ["set", "missing_field"],
        ["set", "extra", "extra", "field"],
        ["rm"],
        ["rm", "extra", "field"],
        ["unknown", "subcommand"],
        ["get", "key", "--unknown-flag"],
        ["--unknown-flag", "get", "key"],
    ],
)
def test_bad_invocations_print_usage_on_stderr(tmp_path: Path, args: list[str]) -> None:
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [], "a usage error must not create a store"


def test_library_and_command_share_one_format(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path)) as store:
        store.set("from-lib", "lib value")
        store.set(b"binary", b"\x00\x01")
    assert run("get", "from-lib", cwd=tmp_path).stdout == "lib value\n"
    assert run("set", "from-cli", "cli value", cwd=tmp_path).returncode == 0
    with KvStore.open(str(tmp_path)) as store:
        assert store.get("from-cli") == "cli value"


def test_binary_values_are_written_raw(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path)) as store:
        store.set(b"bin", b"\xff\x00raw")
    result = subprocess.run([*KVS, "get", "bin"], cwd=tmp_path, capture_output=True, timeout=60)
    assert result.stdout == b"\xff\x00raw\n"


def test_arguments_that_are_not_utf8_are_stored_as_the_bytes_given(tmp_path: Path) -> None:
    """Such arguments used to end in a UnicodeEncodeError traceback and exit 1, the status of
    "Key not found". They are kept as the raw bytes the shell passed, as kvs-client does."""

    def run_raw(*args: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*map(os.fsencode, KVS), *args], cwd=tmp_path, capture_output=True, timeout=60
        )

    assert run_raw(b"set", b"\xff", b"caf\xe9").returncode == 0
    got = run_raw(b"get", b"\xff")
    assert (got.returncode, got.stdout, got.stderr) == (0, b"caf\xe9\n", b"")
    with KvStore.open(str(tmp_path)) as store:
        assert store.get(b"\xff") == b"caf\xe9"
    removed = run_raw(b"rm", b"\xff")
    assert (removed.returncode, removed.stdout, removed.stderr) == (0, b"", b"")
    assert run_raw(b"get", b"\xff").stdout == b"Key not found\n"
    assert run_raw(b"set", "clé".encode(), "été".encode()).returncode == 0
    with KvStore.open(str(tmp_path)) as store:
        assert store.get("clé") == "été"  # valid UTF-8 stays str


def test_a_str_value_prints_as_utf8_whatever_stdouts_encoding(tmp_path: Path) -> None:
    assert run("set", "k", "caf\u00e9 \u2603", cwd=tmp_path).returncode == 0
    result = subprocess.run(
        [*KVS, "get", "k"],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "caf\u00e9 \u2603\n".encode(),
        b"",
    )


def test_the_memory_engine_is_refused_by_a_one_shot_command(tmp_path: Path) -> None:
    """It would report success and keep nothing."""
    result = run("--engine", "memory", "set", "k", "v", cwd=tmp_path)
    assert_clean_error(result)
    assert result.returncode == 2 and "memory engine keeps nothing" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_redis_url_as_dir_means_the_redis_engine(tmp_path: Path) -> None:
    """It used to create a local directory named ``redis:/...`` and store the data there."""
    result = run("--dir", "redis://127.0.0.1:1/0", "set", "k", "v", cwd=tmp_path)
    assert_clean_error(result)
    assert list(tmp_path.iterdir()) == []


def test_a_store_of_another_engine_is_refused_by_the_library_too(tmp_path: Path) -> None:
    """``KvStore.open(dir)`` (engine kvs) on a sqlite store showed it empty and wrote kvs
    files beside it, after which the sqlite engine refused the directory."""
    from kvs import KvsError

    with KvStore.open(str(tmp_path), engine="sqlite") as store:
        store.set("k", "v")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(KvsError, match="holds data of the 'sqlite' engine"):
        KvStore.open(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    with KvStore.open(str(tmp_path), engine="sqlite") as store:
        assert store.get("k") == "v"


def test_dir_option_and_kvs_dir_variable_choose_the_store(tmp_path: Path) -> None:
    store_a, store_b = tmp_path / "a", tmp_path / "b"
    assert run("--dir", str(store_a), "set", "k", "in a", cwd=tmp_path).returncode == 0
    assert run("set", "k", "in b", "--dir", str(store_b), cwd=tmp_path).returncode == 0
    assert run("get", "k", cwd=tmp_path, env={"KVS_DIR": str(store_a)}).stdout == "in a\n"
    assert run("get", "k", "--dir", str(store_b), cwd=tmp_path).stdout == "in b\n"
    assert not list(tmp_path.glob("kvs*")), "nothing is written to the cwd when --dir is given"


def test_a_locked_store_is_one_clear_line(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path)):
        result = run("set", "k", "v", cwd=tmp_path)
    assert_clean_error(result)
    assert result.returncode == 3
    assert f"process {os.getpid()}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_corrupt_store_is_one_clear_line(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path), max_file_size=4096) as store:
        for i in range(200):
            store.set(f"k{i}", "v" * 50)
    sealed = sorted(tmp_path.glob("kvs-*.data"))[0]
    for hint in tmp_path.glob("kvs-*.hint"):
        hint.unlink()
    data = bytearray(sealed.read_bytes())
    data[100] ^= 0xFF
    sealed.write_bytes(bytes(data))
    result = run("get", "k1", cwd=tmp_path)
    assert_clean_error(result)
    assert result.returncode == 4
    assert sealed.name in result.stderr and "offset" in result.stderr


def test_an_unwritable_directory_is_one_clear_line(tmp_path: Path) -> None:
    target = tmp_path / "file-not-dir"
    target.write_text("x")
    result = run("--dir", str(target), "set", "k", "v", cwd=tmp_path)
    assert_clean_error(result)
    assert str(target) in result.stderr


def test_check_reports_and_fixes_only_when_asked(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path), max_file_size=4096) as store:
        for i in range(200):
            store.set(f"k{i}", "v" * 50)
    clean = run("check", cwd=tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 problems" in clean.stdout
    sealed = sorted(tmp_path.glob("kvs-*.data"))[0]
    data = bytearray(sealed.read_bytes())
    data[200] ^= 0x01
    sealed.write_bytes(bytes(data))
    damaged = bytes(data)
    report = run("check", cwd=tmp_path)
    assert report.returncode == 1
    assert sealed.name in report.stdout and "corruption" in report.stdout
    assert sealed.read_bytes() == damaged, "check without --fix changes nothing"
    refused = run("check", "--fix", cwd=tmp_path)  # no terminal, no --yes: refuses
    assert refused.returncode != 0 and sealed.read_bytes() == damaged
    fixed = run("check", "--fix", "--yes", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert list(tmp_path.glob(f"{sealed.name}.corrupt-*")), "a backup is kept"
    assert run("check", cwd=tmp_path).returncode == 0
    assert run("get", "k199", cwd=tmp_path).stdout == "v" * 50 + "\n"


def test_compact_command(tmp_path: Path) -> None:
    for i in range(5):
        run("set", "k", str(i), cwd=tmp_path)
    result = run("compact", cwd=tmp_path)
    assert result.returncode == 0 and "compacted" in result.stdout
    assert run("get", "k", cwd=tmp_path).stdout == "4\n"
