"""Memory pre-flight: will a compiled program fit in the memory this process can use?

XLA knows a compiled program's memory before it runs (`compiled.memory_analysis()`: its
arguments, outputs, the outputs that alias donated arguments, and temporaries, per device).
Its arguments (parameters, optimizer state, a batch) are already live when the check runs; what
the program must still find is its temporaries and its non-aliased outputs (`Footprint.new`).
That is compared with what is free: on GPU/TPU each device's `bytes_limit - bytes_in_use`; on
CPU the host's available RAM (`MemAvailable`, plus heap this process freed and keeps, see
host_memory), shared by every simulated CPU device of the process.

The train loop (train.Trainer.compile), evaluation and sampling call `check`; a program that
cannot fit is refused with `OutOfMemoryError` before it runs, with settings that would fit,
each found by compiling it (`suggest`), never extrapolated.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterable, Optional, Sequence

import jax

from virtuoso_jax import config_lib
from virtuoso_jax import host_memory

log = logging.getLogger(__name__)

# The share of the free memory a program may plan to fill: the rest is for what XLA's estimate
# does not see (the input pipeline's prefetched batches, Python, allocator fragmentation).
USABLE_FRACTION = 0.9
MIB = 1 << 20


class OutOfMemoryError(config_lib.ConfigError):
  """A compiled program cannot fit in the memory available; the message says what would."""


@dataclasses.dataclass(frozen=True)
class Footprint:
  """A compiled program's memory, bytes per device (from XLA's memory analysis)."""
  argument: int
  output: int
  alias: int
  temp: int

  @property
  def total(self) -> int:
    """Everything the program touches: arguments, new outputs and temporaries."""
    return self.argument + self.output - self.alias + self.temp

  @property
  def new(self) -> int:
    """What it allocates beyond its (already live) arguments."""
    return self.temp + max(0, self.output - self.alias)


def footprint(compiled) -> Optional[Footprint]:
  """The Footprint of a `jax.stages.Compiled`, or None where the backend gives no analysis."""
  try:
    mem = compiled.memory_analysis()
  except (NotImplementedError, AttributeError, RuntimeError):
    return None
  if mem is None:
    return None
  get = lambda f: int(getattr(mem, f, 0) or 0)
  return Footprint(get("argument_size_in_bytes"), get("output_size_in_bytes"),
                   get("alias_size_in_bytes"), get("temp_size_in_bytes"))


@dataclasses.dataclass(frozen=True)
class Budget:
  """Free memory for one program: `bytes` shared by `sharing` devices (on CPU the simulated
  devices of a process share the host's RAM; an accelerator has its own)."""
  bytes: int
  sharing: int
  where: str
  platform: str

  def needed(self, fp: Footprint) -> int:
    return fp.new * self.sharing

  def fits(self, fp: Footprint) -> bool:
    return self.needed(fp) <= USABLE_FRACTION * self.bytes


def _mem_available() -> Optional[int]:
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    return None
  return None


def budget(devices: Optional[Sequence[jax.Device]] = None, *, limit_mib: int = 0,
           limit_name: str = "memory limit") -> Optional[Budget]:
  """The free memory of this process's devices among `devices` (default: all local devices),
  at most `limit_mib` MiB when > 0 (the user's cap, named `limit_name` in messages), or None
  where it cannot be known (then nothing is refused)."""
  b = _free(devices)
  if b is None or not limit_mib:
    return b
  return dataclasses.replace(b, bytes=min(b.bytes, limit_mib * MIB), where=f"({limit_name})")


def _free(devices: Optional[Sequence[jax.Device]]) -> Optional[Budget]:
  devices = [d for d in (devices or jax.local_devices()) if d.process_index == jax.process_index()]
  if not devices:
    return None
  platform = devices[0].platform
  if platform == "cpu":
    available = _mem_available()
    if available is None:
      return None
    kept = host_memory.free_kept_bytes() or 0
    return Budget(available + kept, len(devices),
                  "host RAM available (MemAvailable"
                  + (f" + {kept / MIB:,.0f} MiB freed and kept by this process)" if kept else ")"),
                  platform)
  free = []
  for d in devices:
    stats = d.memory_stats() or {}
    if "bytes_limit" not in stats:
      return None
    free.append(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
  return Budget(min(free), 1, f"free memory of one {devices[0].device_kind}", platform)


def describe(fp: Footprint, b: Optional[Budget]) -> str:
  """'<needed> MiB needed (...) of <usable> MiB usable (...)': the estimate against `b`."""
  if b is None:
    return f"{fp.total / MIB:,.1f} MiB per device (free memory unknown)"
  per = (f"{fp.total / MIB:,.1f} MiB per device with its arguments, {b.sharing} devices"
         if b.sharing > 1 else f"{fp.total / MIB:,.1f} MiB with its arguments")
  return (f"{b.needed(fp) / MIB:,.1f} MiB needed ({per}) of {USABLE_FRACTION * b.bytes / MIB:,.1f} "
          f"MiB usable ({USABLE_FRACTION:.0%} of {b.bytes / MIB:,.1f} MiB {b.where})")


@dataclasses.dataclass(frozen=True)
class Option:
  """A setting to try: `flags` as the user would pass them, `compile` returning the compiled
  program under that setting (ValueError/TypeError where it does not apply), a `label` saying
  what it means, and its `cost` (the gradient accumulation it needs: a later group's option
  costing no less than a suggestion already found is not tried)."""
  flags: str
  compile: Callable[[], object]
  label: str = ""
  cost: int = 1


def _fits(option: Option, b: Optional[Budget]) -> Optional[int]:
  """The bytes `option`'s compiled program needs if it fits `b`, else None (also where it does
  not apply or the backend gives no estimate)."""
  log.info("Pre-flight: trying %s", option.flags)
  try:
    fp = footprint(option.compile())
  except (ValueError, TypeError) as e:
    log.info("Pre-flight: %s does not apply (%s)", option.flags, e)
    return None
  if fp is None or (b is not None and not b.fits(fp)):
    return None
  return b.needed(fp) if b is not None else fp.total


def first_fit(group: Sequence[Option], b: Optional[Budget]) -> Optional[tuple[int, int]]:
  """(index, bytes needed) of the first option of `group` that fits `b`, or None. The group is
  one kind of setting ordered from least to most change, with memory falling along it (more
  accumulation, a shorter context), and the first fit is usually near its start: options
  0, 1, 3, 7, ... are tried until one fits (the last one always is), then the first fit is
  bisected since the last that did not: about 2 log2(index + 1) + 1 compiles, not len(group)."""
  if not group:
    return None
  last_miss, probe, found = -1, 0, None
  while found is None:
    need = _fits(group[probe], b)
    if need is not None:
      found = (probe, need)
    elif probe == len(group) - 1:
      return None
    else:
      last_miss, probe = probe, min(2 * probe + 1, len(group) - 1)
  lo, hi = last_miss + 1, found[0]
  while lo < hi:  # The first fit lies in group[lo:hi + 1]; group[hi] fits.
    mid = (lo + hi) // 2
    need = _fits(group[mid], b)
    if need is None:
      lo = mid + 1
    else:
      found, hi = (mid, need), mid
  return found


def suggest(groups: Iterable[Sequence[Option]], b: Optional[Budget], limit: int = 3) -> list[str]:
  """From each group of options (see first_fit) the first that fits `b`, as
  '<flags> (<label>): <needed> MiB', up to `limit` in all. Options costing no less than a
  suggestion already found are not tried."""
  out, best = [], None
  for group in groups:
    group = [o for o in group if best is None or o.cost < best]
    found = first_fit(group, b)
    if found is not None:
      option = group[found[0]]
      label = f" ({option.label})" if option.label else ""
      out.append(f"{option.flags}{label}: {found[1] / MIB:,.1f} MiB")
      best = option.cost if best is None else min(best, option.cost)
    if len(out) >= limit:
      break
  return out


def check(what: str, fp: Optional[Footprint], b: Optional[Budget], *, mode: str,
          options: Callable[[], Iterable[Sequence[Option]]] = tuple, override: str = "",
          note: str = "") -> None:
  """Logs `what`'s estimate; if it cannot fit `b`, raises OutOfMemoryError (mode "refuse")
  naming the estimate, the free memory and settings that would fit (`options()`: groups of
  Options, compiled one by one; none are tried when it fits), or logs a warning (mode "warn").
  `override` is the flag that runs it anyway; `note` is added to the message. Mode "off" only
  logs."""
  if fp is None:
    log.info("Pre-flight for %s: no memory analysis on this backend; not checked.", what)
    return
  log.info("%s memory estimate: %s", what[:1].upper() + what[1:], describe(fp, b))
  if b is None or b.fits(fp) or mode == "off":
    return
  if mode == "warn":
    log.warning("Pre-flight: %s may not fit (%s); running anyway (memory check 'warn').",
                what, describe(fp, b))
    return
  groups = [] if note else [list(g) for g in options()]  # A config for another machine class.
  found = suggest(groups, b)
  tried = [o.flags for g in groups for o in g]
  hint = ("Settings that fit (each compiled and its memory measured): " + "; or ".join(found) + "."
          if found else "No setting tried fits (" + ", ".join(tried) + ")." if tried else "")
  raise OutOfMemoryError(" ".join(x for x in (
      f"{what} cannot fit in memory: {describe(fp, b)}. Nothing was run.", note, hint,
      f"To run it anyway: {override}." if override else "") if x))
