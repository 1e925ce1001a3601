"""Shared benchmark helpers: JSON-line output, timing, this machine's matmul peak, peak RSS.

  from benchmarks import common
  common.emit("train_step_time", 1.23, "s", model="rga.py:original")
  peak = common.matmul_peak_flops()          # FLOP/s of the best jitted fp32 GEMM, measured now
  bw = common.stream_bandwidth()             # bytes/s a jitted GEMV streams from memory, now
  t = common.time_fn(step, *args, repeats=5) # best wall time of a blocking call

Run this file to print the matmul peak: `python -m benchmarks.common`.
On a shared machine the peak and the figure it normalises must be measured back to back in the
same process (as `model_bench.py` does), and best-of-n is the honest least-noisy estimate.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from virtuoso_jax import metrics


def emit(name: str, value: float, unit: str, **extra: Any) -> dict:
  """Prints one JSON line {"name", "value", "unit", ...extra} to stdout and returns it."""
  record = {"name": name, "value": value, "unit": unit, **extra}
  print(json.dumps(record), flush=True)
  return record


def block(x):
  """Blocks until every array in the pytree `x` is ready."""
  return jax.block_until_ready(x)


def time_fn(fn: Callable, *args, repeats: int = 5, warmup: int = 1) -> list[float]:
  """Wall times (seconds) of `repeats` calls of `fn(*args)`, after `warmup` untimed calls."""
  for _ in range(warmup):
    block(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    block(fn(*args))
    times.append(time.perf_counter() - t0)
  return times


def matmul_peak_flops(sizes=(1024, 2048), repeats: int = 5, dtype=jnp.float32) -> float:
  """This machine's achievable matmul rate (FLOP/s), measured now: best over square GEMMs of
  `sizes` (`virtuoso_jax.metrics.measure_matmul_peak`, the library's one peak measurement;
  training's MFU denominator is its cached or spec-sheet peak instead)."""
  return max(metrics.measure_matmul_peak(n, repeats, jnp.dtype(dtype).name) for n in sizes)


def stream_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
  """This machine's memory bandwidth (bytes/s) as a jitted program streams it, measured now.

  A matrix-vector product over an fp32 matrix of `nbytes` (default 256 MiB, more than any CPU
  cache): the access pattern of batch-1 decoding, where every weight and cached key/value is
  read once per token. Best of `repeats`.
  """
  cols = 4096
  w = jax.random.normal(jax.random.key(0), (max(1, nbytes // (4 * cols)), cols), jnp.float32)
  x = jnp.ones((w.shape[0],), jnp.float32)
  t = min(time_fn(jax.jit(lambda x, w: x @ w), x, w, repeats=repeats))
  return w.size * 4 / t


def peak_rss_bytes() -> int:
  """Peak resident set size of this process so far (bytes).

  Linux: VmHWM of /proc/self/status, the high-water mark of this process's own address space.
  Not ru_maxrss: Linux carries a parent's maxrss over fork + exec, so a worker subprocess
  started by a big parent would report the parent's peak (seen: 4.3 GiB for a 512-token
  attention point). Elsewhere ru_maxrss (KiB on Linux, bytes on macOS).
  """
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss if sys.platform == "darwin" else rss * 1024


def run_worker(module: str, args: list[str], timeout: float):
  """Runs `python -m <module> <args>` from the repository root and relays its JSON lines.

  One subprocess per measured point: an OOM or a timeout kills only that point, and a point's
  memory figures are its own (a process keeps its freed heap, see virtuoso_jax.host_memory).
  Returns (json_lines, None) or (None, reason).
  """
  cmd = [sys.executable, "-m", module] + list(args)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root)
  except subprocess.TimeoutExpired:
    return None, f"timeout after {timeout}s"
  lines = [l for l in res.stdout.splitlines() if l.startswith("{")]
  for l in lines:
    print(l, flush=True)
  if res.returncode != 0:
    why = "killed (out of memory?)" if res.returncode in (-9, 137) else f"exit {res.returncode}"
    return None, f"{why}: {res.stderr.strip().splitlines()[-1:]}"
  return lines, None


if __name__ == "__main__":
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_binary()  # What the binaries set on a CPU host, before JAX starts.
  emit("matmul_peak", matmul_peak_flops() / 1e9, "GFLOP/s", dtype="float32",
       backend=jax.default_backend())
