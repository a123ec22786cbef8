"""Tests of kvs.client (the Python client and its reply parser) and the kvs-client command."""
