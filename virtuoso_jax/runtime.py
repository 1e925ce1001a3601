"""Process settings the virtuoso_jax binaries apply to their own process, before JAX starts.

Importing the library changes nothing in a process (no XLA flags, no malloc settings, no logger
filters); the binaries (`main`, `sample`, `compose`, `evaluate`, the benchmarks) call
`configure_binary()` first thing. On a CPU-only host it

- adds `--xla_cpu_copy_insertion_use_region_analysis=true` to $XLA_FLAGS (an option already
  there wins): without it XLA on CPU copies every layer's KV cache several times per sampled
  token inside the sampler's while-loop (docs/benchmarks.md);
- makes glibc's malloc keep freed memory (`host_memory.keep_freed_memory`): XLA's per-step
  temporaries are then reused instead of page-faulted back in every step (docs/benchmarks.md).

On a GPU/TPU host neither applies. VIRTUOSO_CPU_TUNING=0 leaves the process alone
(VIRTUOSO_KEEP_HOST_MEMORY=0 keeps only malloc alone). Pure Python: no jax import.
"""

from __future__ import annotations

import glob
import logging
import os

from virtuoso_jax import host_memory

SWITCH = "VIRTUOSO_CPU_TUNING"
XLA_CPU_FLAGS = {"--xla_cpu_copy_insertion_use_region_analysis": "true"}


def platform_before_jax() -> str:
  """"cpu", "gpu" or "tpu", without starting JAX: $JAX_PLATFORMS's first entry if set, else
  "tpu" or "gpu" where the host has such devices (/dev/accel*, /dev/vfio/* of TPU VMs;
  /dev/nvidia*), else "cpu"."""
  requested = os.environ.get("JAX_PLATFORMS", "").split(",")[0].strip().lower()
  if requested:
    return {"cuda": "gpu", "rocm": "gpu"}.get(requested, requested)
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
    return "tpu"
  if glob.glob("/dev/nvidia[0-9]*"):
    return "gpu"
  return "cpu"


def add_xla_flags(flags: dict[str, str]) -> list[str]:
  """Adds `flags` to $XLA_FLAGS, except those the variable names already; returns the added."""
  current = os.environ.get("XLA_FLAGS", "")
  extra = [f"{k}={v}" for k, v in flags.items() if k not in current]
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([current] + extra).strip()
  return extra


def configure_binary() -> dict[str, object]:
  """The binaries' process settings (see the module doc); returns what was applied."""
  if os.environ.get(SWITCH, "1") == "0" or platform_before_jax() != "cpu":
    return {}
  return {"xla_flags": add_xla_flags(XLA_CPU_FLAGS),
          "keep_freed_memory": host_memory.keep_freed_memory()}


class OrbaxNoticeFilter(logging.Filter):
  """Drops Orbax warnings about how this module uses it on purpose: a read-only manager for
  sampling (three lines per restore), a preemption save without eval metrics, and the
  traceback Orbax logs for a failed background save (this module raises it as one line).
  Installed on the absl logger by quiet_library_logs (the binaries), never on import."""

  EXPECTED = ("Given directory is read only", "CheckpointManagerOptions.read_only=True",
              "Requested `tracked_metric`; did not provide metrics")
  FAILED_SAVE = ("[wait_until_finished] Save Finalize thread", "in background save thread")

  def filter(self, record: logging.LogRecord) -> bool:
    msg = record.getMessage()
    if msg.startswith(self.EXPECTED):
      return False
    return not (record.levelno >= logging.ERROR and any(s in msg for s in self.FAILED_SAVE))


def quiet_library_logs() -> None:
  """The binaries' log hygiene: absl (and so Orbax, grain, TFDS) at WARNING, without the Orbax
  notices about uses virtuoso_jax makes on purpose (OrbaxNoticeFilter). No jax import."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  absl = logging.getLogger("absl")
  if not any(isinstance(f, OrbaxNoticeFilter) for f in absl.filters):
    absl.addFilter(OrbaxNoticeFilter())
