"""Helpers that only the tests use; what the benchmarks share is in ``testbed``."""
