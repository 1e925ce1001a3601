"""Metric writers (JSONL + TensorBoard via tensorboardX, process 0 only), peaks, progress.

`<workdir>/metrics.jsonl`: one JSON object per logged step, e.g.
  {"step": 100, "train/loss": 2.31, "perf/step_time_s": 0.21, "perf/tokens_per_s": 19500.0,
   "perf/mfu": 0.41, "train/learning_rate": 0.001}
and, at eval steps, "eval/loss", "eval/accuracy", "eval/perplexity", "eval/nll_per_note",
"eval/unigram_nll_per_note", "eval/bits_per_second" (NLL in bits over the seconds of music the
scored targets span; compares char and token models), "eval/seconds". `<workdir>/tensorboard/` holds the same scalars as event files
(no TensorFlow needed: `tensorboard --logdir <workdir>/tensorboard`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from typing import Any, Mapping

from virtuoso_jax import paths

log = logging.getLogger(__name__)

# Dense peak FLOP/s per chip at bf16 (vendor figures, without sparsity); matched by substring
# of `device.device_kind` (lower case), first match wins.
PEAK_FLOPS_BY_DEVICE_KIND = (
    ("h200", 989e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("l40s", 362e12),
    ("l4", 121e12),
    ("a10", 125e12),
    ("v100", 125e12),
    ("tpu v6", 918e12),
    ("tpu v5p", 459e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5", 459e12),
    ("tpu v4", 275e12),
    ("tpu v3", 123e12),
    ("tpu v2", 45e12),
)


def measure_matmul_peak(size: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
  """Best-of-`repeats` FLOP/s of one jitted [size, size] matmul on the default device, now.

  The one matmul-peak measurement of the codebase (benchmarks.common calls it too).
  """
  import jax  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * size**3 / best


STABLE_PEAK_STATISTIC = "median over 5 rounds of each round's best of 2 square matmuls"


def measure_stable_peak(size: int = 2048, rounds: int = 5, repeats: int = 2,
                        dtype: str = "float32", pause_s: float = 0.05) -> float:
  """A matmul peak for a shared, noisy machine: the median over `rounds` (spread in time) of
  each round's best-of-`repeats`. Noise only ever slows a matmul, so each round's best is
  near the peak unless a neighbour held the cores the whole round; the median drops those."""
  values = []
  for _ in range(rounds):
    values.append(measure_matmul_peak(size, repeats, dtype))
    time.sleep(pause_s)
  values.sort()
  return values[len(values) // 2]


def cache_dir() -> str:
  """`$VIRTUOSO_CACHE_DIR`, else `$XDG_CACHE_HOME/virtuoso_jax`, else `~/.cache/virtuoso_jax`."""
  if os.environ.get("VIRTUOSO_CACHE_DIR"):
    return os.environ["VIRTUOSO_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "virtuoso_jax")


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown cpu"


def _usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def machine_key(device) -> str:
  """What a cached peak is valid for: the CPU model and usable cores (CPU), else the device
  kind; plus the dtype measured."""
  if device.platform == "cpu":
    return f"cpu|{_cpu_model()}|{_usable_cores()} cores|float32"
  return f"{device.platform}|{device.device_kind}|bfloat16"


def cached_peak(key: str, measure, path: str | None = None) -> tuple[float, str, bool]:
  """(peak, the cache file, whether it was read from the cache): `measure()` runs once per key
  and machine; later runs read the stored value."""
  path = path or os.path.join(cache_dir(), "peak_flops.json")
  table = {}
  try:
    table = paths.read_json(path)
  except (OSError, ValueError):
    table = {}
  entry = table.get(key)
  if isinstance(entry, dict) and float(entry.get("flops_per_s", 0)) > 0:
    return float(entry["flops_per_s"]), path, True
  value = float(measure())
  table[key] = {"flops_per_s": value, "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
                "statistic": STABLE_PEAK_STATISTIC}
  try:
    paths.write_json(path, table, indent=2, sort_keys=True)
  except OSError as e:
    log.warning("Could not cache the measured peak in %s (%s); it is measured again next run.",
                path, e)
  return value, path, False


def table_peak(device_kind: str) -> float | None:
  """The spec-sheet dense bf16 peak FLOP/s of one chip of `device_kind`, or None."""
  kind = device_kind.lower()
  for key, peak in PEAK_FLOPS_BY_DEVICE_KIND:
    if key in kind:
      return peak
  return None


def peak_flops_per_s(devices=None, *, override: float = 0.0) -> tuple[float, str]:
  """(peak FLOP/s of all `devices` together, where it comes from): the MFU denominator.

  Stable from run to run: `override` (config.perf.peak_flops) if > 0; GPU/TPU: the per-chip
  spec-sheet table times the device count; CPU (and an unknown accelerator): a matmul peak
  measured once per machine with a robust statistic (`measure_stable_peak`) and cached in
  `cache_dir()/peak_flops.json` (the simulated CPU devices share one machine, so it is the
  machine's total).
  """
  if override and override > 0:
    return float(override), "config perf.peak_flops"
  import jax  # pylint: disable=g-import-not-at-top
  devices = devices if devices is not None else jax.devices()
  d0 = devices[0]
  n = len(devices)
  if d0.platform != "cpu":
    per_chip = table_peak(d0.device_kind)
    if per_chip is not None:
      return per_chip * n, (f"spec-sheet dense bf16 peak of {d0.device_kind!r}, "
                            f"{per_chip / 1e12:g} TFLOP/s x {n} device(s)")
  key = machine_key(d0)
  if d0.platform == "cpu":
    value, path, hit = cached_peak(key, measure_stable_peak)
    total, what = value, f"float32 matmul peak of this machine ({key.split('|', 1)[1]})"
  else:
    value, path, hit = cached_peak(
        key, lambda: measure_stable_peak(size=8192, dtype="bfloat16"))
    total, what = value * n, f"bf16 matmul peak of unknown device kind {d0.device_kind!r} x {n}"
  how = "cached in" if hit else "measured now, cached in"
  return total, f"{what}, {how} {path}; override with --config.perf.peak_flops"


class MetricWriter:
  """Appends metrics to `<workdir>/metrics.jsonl` and TensorBoard; a no-op on processes > 0.
  The workdir may be remote (`gs://...`, see virtuoso_jax.paths).

  `resume_step`: the step training (re)starts from. Rows of later steps, written by a run that
  went further than the checkpoint it is resumed from (kill -9, a corrupt latest checkpoint),
  are dropped from metrics.jsonl and purged from TensorBoard, so every step has one row.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True,
               resume_step: int | None = None):
    self.enabled = enabled
    self._tb = None
    self._log = None
    if not enabled:
      return
    paths.makedirs(workdir)
    self.path = paths.join(workdir, "metrics.jsonl")
    if resume_step is not None:
      self._drop_rows_after(resume_step)
    self._log = paths.LineLog(self.path)
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      logdir = paths.join(workdir, "tensorboard")
      if paths.is_remote(logdir):
        _route_tensorboard_through_paths(logdir)
      purge = None if resume_step is None else resume_step + 1
      self._tb = SummaryWriter(logdir, purge_step=purge)

  def _drop_rows_after(self, step: int) -> None:
    if not paths.exists(self.path):
      return
    lines = paths.read_text(self.path).splitlines(keepends=True)
    kept = []
    for line in lines:
      try:
        row_step = json.loads(line)["step"]
      except (ValueError, KeyError, TypeError):  # A torn last line of a killed run.
        continue
      if row_step <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) == len(lines):
      return
    log.info("metrics.jsonl: dropping %d row(s) after step %d (training resumes there)",
             len(lines) - len(kept), step)
    paths.write_text(self.path, "".join(kept))

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _to_float(v) for k, v in scalars.items()})
    self._log.append(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and v is not None and math.isfinite(v):
          self._tb.add_scalar(k, v, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._log is not None:
      self._log.close()
      self._log = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _to_float(v: Any) -> float | None:
  try:
    f = float(v)
  except (TypeError, ValueError):
    return None
  return f  # NaN/inf are kept (json writes NaN/Infinity) so a diverged step stays visible.


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All rows of `<workdir>/metrics.jsonl` (for tests and tools)."""
  text = paths.read_text(paths.join(workdir, "metrics.jsonl"))
  return [json.loads(line) for line in text.splitlines() if line.strip()]


class _PathsEventFile:
  """A TensorBoard event file at a remote path, written through virtuoso_jax.paths: objects
  cannot be appended to, so the file's bytes are kept and uploaded whole on each flush."""

  def __init__(self, path: str):
    self.path = path
    self._data = bytearray()

  def write(self, data: bytes) -> None:
    self._data += data

  def flush(self) -> None:
    paths.write_bytes(self.path, bytes(self._data))

  def close(self) -> None:
    self.flush()


class _PathsEventFileFactory:
  """tensorboardX's writer-factory protocol (`open`, `directory_check`) over paths."""

  def open(self, path: str) -> _PathsEventFile:
    return _PathsEventFile(path)

  def directory_check(self, path: str) -> None:
    paths.makedirs(path)


def _route_tensorboard_through_paths(logdir: str) -> None:
  """Makes tensorboardX write event files under `logdir`'s scheme (gs, s3, ...) through
  virtuoso_jax.paths, the client every other file of the run uses, instead of its own
  google-cloud-storage / boto3 writers. Called when a writer for a remote logdir is made, so
  importing this module changes nothing."""
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  record_writer.register_writer_factory(logdir.split("://", 1)[0], _PathsEventFileFactory())


class Progress:
  """Console progress: step, loss, tokens/s, MFU and ETA."""

  def __init__(self, total_steps: int, start_step: int):
    self.total = total_steps
    self.start_step = start_step
    self.t0 = time.perf_counter()

  def line(self, step: int, scalars: Mapping[str, Any]) -> str:
    done = step - self.start_step
    elapsed = time.perf_counter() - self.t0
    eta = elapsed / max(done, 1) * (self.total - step)
    parts = [f"step {step}/{self.total}"]
    if "train/loss" in scalars:
      parts.append(f"loss {float(scalars['train/loss']):.4f}")
    if "perf/tokens_per_s" in scalars:
      parts.append(f"{float(scalars['perf/tokens_per_s']):,.0f} tok/s")
    if scalars.get("perf/mfu") is not None:
      parts.append(f"MFU {100 * float(scalars['perf/mfu']):.1f}%")
    if "perf/input_wait_frac" in scalars:
      parts.append(f"input wait {100 * float(scalars['perf/input_wait_frac']):.0f}%")
    parts.append(f"ETA {_hms(eta)}")
    return " | ".join(parts)

  def log(self, step: int, scalars: Mapping[str, Any]) -> None:
    log.info("%s", self.line(step, scalars))


def _hms(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}"
