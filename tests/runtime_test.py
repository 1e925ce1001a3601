"""Importing virtuoso_jax changes nothing in a process; the binaries' set-up (runtime) does what
they need on a CPU host, and nothing on an accelerator host or behind its switch."""

import json
import os
import subprocess
import sys

_PROBE = r"""
import json, logging, os, sys
before = os.environ.get("XLA_FLAGS")
for name in sys.argv[1].split(","):
  __import__(name)
from virtuoso_jax import host_memory
if sys.argv[2] == "binary":
  from virtuoso_jax import runtime
  runtime.configure_binary()
print(json.dumps({"xla_flags_before": before, "xla_flags": os.environ.get("XLA_FLAGS"),
                  "malloc_kept": host_memory.heap_in_use() is not None,
                  "absl_filters": len(logging.getLogger("absl").filters)}))
"""

# The library modules (the binaries define absl flags at import, one binary per process).
LIBRARY = ("virtuoso_jax,virtuoso_jax.encoding,virtuoso_jax.train,virtuoso_jax.trainer,"
           "virtuoso_jax.sampling,virtuoso_jax.checkpointing,virtuoso_jax.inference,"
           "virtuoso_jax.composition,virtuoso_jax.dataset,virtuoso_jax.run_dir")


def _probe(modules, mode, **env):
  full = {k: v for k, v in os.environ.items()
          if k not in ("XLA_FLAGS", "VIRTUOSO_CPU_TUNING", "JAX_PLATFORMS")}
  full.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", **env)
  out = subprocess.run([sys.executable, "-c", _PROBE, modules, mode], env=full, check=True,
                       capture_output=True, text=True, timeout=300)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_library_leaves_the_process_alone():
  got = _probe(LIBRARY, "import")
  assert got["xla_flags"] == got["xla_flags_before"] == "--xla_force_host_platform_device_count=2"
  assert not got["malloc_kept"] and got["absl_filters"] == 0
  assert _probe("virtuoso_jax.encoding", "import")["xla_flags"] == got["xla_flags"]


def test_binaries_tune_a_cpu_process_and_nothing_else():
  cpu = _probe("virtuoso_jax", "binary", JAX_PLATFORMS="cpu")
  assert cpu["xla_flags"] == ("--xla_force_host_platform_device_count=2 "
                              "--xla_cpu_copy_insertion_use_region_analysis=true")
  assert cpu["malloc_kept"]
  for env in ({"JAX_PLATFORMS": "tpu"}, {"JAX_PLATFORMS": "cuda"},
              {"JAX_PLATFORMS": "cpu", "VIRTUOSO_CPU_TUNING": "0"}):
    other = _probe("virtuoso_jax", "binary", **env)
    assert other["xla_flags"] == "--xla_force_host_platform_device_count=2", env
    assert not other["malloc_kept"], env
