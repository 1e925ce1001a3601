"""Benchmarks (one JSON line per figure). Shared helpers: `benchmarks.common`."""
