"""Hostile MIDI (tests/midi_fuzz.py): every input ends as valid `Notes` or a `MidiError` with a
reason, in time and memory bounded by the file's size. Hermetic (seeds made with notes_to_midi),
fixed seeds."""

import collections
import json
import random
import subprocess
import sys
import time

from hypothesis import HealthCheck, given, settings, strategies as st
import pytest

import midi_fuzz
from virtuoso_jax.encoding import MidiError, Notes, midi_to_notes
from virtuoso_jax.encoding.midi_io import MIDI_ERROR_KINDS
from virtuoso_jax.encoding.notes import FIELDS

SEEDS = midi_fuzz.seed_midis(8, seed=0)


def _outcome(src) -> str:
  """'notes' or 'error'; fails the test on anything else."""
  try:
    notes = midi_to_notes(src)
  except MidiError as e:
    assert e.reason and e.reason.strip(), f"empty reason: {e!r}"
    assert e.kind in MIDI_ERROR_KINDS
    return "error"
  assert isinstance(notes, Notes)
  Notes(*(getattr(notes, f) for f in FIELDS))  # Re-validates every column.
  assert notes.is_canonical() and len(notes)
  return "notes"


def test_seeds_are_good():
  for data in SEEDS:
    assert _outcome(data) == "notes"


def test_hostile_corpus_ends_as_notes_or_midi_error():
  counts = collections.defaultdict(collections.Counter)
  slowest = 0.0
  for kind, data in midi_fuzz.iter_hostile(SEEDS, n=100 * len(midi_fuzz.KINDS), seed=1):
    t = time.perf_counter()
    counts[kind][_outcome(data)] += 1
    slowest = max(slowest, time.perf_counter() - t)
  assert set(counts) == set(midi_fuzz.KINDS)
  total = collections.Counter()
  for c in counts.values():
    total.update(c)
  assert total["notes"] > 100 and total["error"] > 500, dict(total)
  assert slowest < 5.0  # Each file is < 200 KB.


def test_make_hostile_corpus_writes_files(tmp_path):
  files = midi_fuzz.make_hostile_corpus(tmp_path / "c", SEEDS[:3], n=40, seed=2)
  assert len(files) == 40 and {k for _, k in files} == set(midi_fuzz.KINDS)
  for path, _ in files:
    assert path.exists()
    _outcome(path)
  again = midi_fuzz.make_hostile_corpus(tmp_path / "d", SEEDS[:3], n=40, seed=2)
  assert all(a.read_bytes() == b.read_bytes() for (a, _), (b, _) in zip(files, again))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed_index=st.integers(0, len(SEEDS) - 1),
       edits=st.lists(st.tuples(st.sampled_from(["set", "insert", "delete", "cut"]),
                                st.floats(0, 1), st.binary(min_size=1, max_size=8)),
                      min_size=1, max_size=6))
def test_mutated_files_property(seed_index, edits):
  data = bytearray(SEEDS[seed_index])
  for op, where, blob in edits:
    i = int(where * len(data))
    if op == "set":
      data[i:i + len(blob)] = blob
    elif op == "insert":
      data[i:i] = blob
    elif op == "delete":
      del data[i:i + len(blob)]
    else:
      del data[i:]
  _outcome(bytes(data))


# ----------------------------------------------------------------------------- big files

_MEASURE = """
import json, resource, sys, time
from virtuoso_jax.encoding import MidiError, midi_to_notes
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
try:
  out = {"notes": len(midi_to_notes(sys.argv[1]))}
except MidiError as e:
  out = {"error": e.reason}
out["seconds"] = time.perf_counter() - t
out["rss_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps(out))
"""


def _measure(path) -> dict:
  """midi_to_notes(path) in a fresh process: outcome, seconds, peak RSS growth (MB)."""
  proc = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True,
                        text=True, timeout=300, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("variant", [0, 1])
def test_12mb_malformed_file_fails_fast_and_small(tmp_path, variant):
  # Before: 20-30 s and ~870 MB in the mido fallback before failing.
  path = tmp_path / "m.mid"
  path.write_bytes(midi_fuzz.big_malformed(12 * 1024 * 1024, variant=variant))
  r = _measure(path)
  assert "error" in r and "tolerant parser not tried" in r["error"], r
  assert r["seconds"] < 5 and r["rss_growth_mb"] < 200, r


def test_file_over_64_mib_is_refused_without_reading(tmp_path):
  path = tmp_path / "o.mid"
  path.write_bytes(midi_fuzz.oversized(65 * 1024 * 1024 + 1, SEEDS[0]))
  r = _measure(path)
  assert r["error"].startswith("file is 65.0 MiB, over the 64 MiB limit"), r
  assert r["seconds"] < 1 and r["rss_growth_mb"] < 20, r
  with pytest.raises(MidiError, match="64 MiB limit"):
    midi_to_notes(path.read_bytes())


def test_two_million_notes(tmp_path):
  ok = tmp_path / "n.mid"
  ok.write_bytes(midi_fuzz.many_notes(2_000_000))
  r = _measure(ok)
  assert r.get("notes") == 2_000_000, r
  # ~13 MB file; loose bounds (numpy columns and a sort: seconds, a few hundred MB at most).
  assert r["seconds"] < 30 and r["rss_growth_mb"] < 1000, r
  over = tmp_path / "n1.mid"
  over.write_bytes(midi_fuzz.many_notes(2_000_001))
  with pytest.raises(MidiError, match="max_notes=2000000"):
    midi_to_notes(over)


def test_ten_thousand_empty_tracks():
  rng = random.Random(0)
  for _ in range(4):
    data = midi_fuzz.empty_tracks(SEEDS[1], rng, count=10_000)
    with pytest.raises(MidiError, match="max_tracks"):
      midi_to_notes(data)


def test_generators_are_deterministic():
  a = [d for _, d in midi_fuzz.iter_hostile(SEEDS, 48, seed=5)]
  b = [d for _, d in midi_fuzz.iter_hostile(midi_fuzz.seed_midis(8, seed=0), 48, seed=5)]
  assert a == b
