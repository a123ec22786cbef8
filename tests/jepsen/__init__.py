"""Jepsen-lite tests of kvs-server (RELIABILITY.md D6)."""
