"""Crash-safety tests: killed writers, torn and damaged files, faults injected in compaction."""
