"""Benchmarks (one JSON line per figure). Shared helpers: `benchmarks.common`."""

# Imported first so that its process set-up (XLA flags, host-memory reuse) precedes JAX, as it
# does for `python -m virtuoso_jax.main`: the figures measure what users run.
import virtuoso_jax  # noqa: F401  pylint: disable=unused-import
