"""Symbolic-music statistics: per-piece features, set-against-set comparison, copying check.

Numpy only (no jax), so it runs anywhere `Notes` exist: on generated samples, on a test split, on
any folder of MIDI. The features follow MusPy and Yang & Lerch 2018 ("On the evaluation of
generative models in music"): each feature is computed per piece, and two sets of pieces are
compared per feature by their means, spreads, relative difference and the overlapped area (OA)
of the two distributions (Gaussian kernel density estimates; 1 = identical, 0 = disjoint).

Times are in seconds (`Notes` grid units times `grid_ms`). Drum notes (instrument 128) count for
density, instruments and drum share only; pitch features use pitched notes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from virtuoso_jax.encoding.notes import DRUMS, Notes

# Scale degrees (semitones above the tonic) of the major and natural minor scales.
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
# Krumhansl-Kessler key profiles (major, minor), for key estimation.
_KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
_PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

# Groove consistency: onsets are placed on 16 slots of a 4-beat bar, the beat being the most
# common inter-onset interval of at least this many seconds (the notes carry no tempo map).
_MIN_BEAT_S = 0.1
_SLOTS_PER_BAR = 16

# The features, in report order, with what each one measures.
FEATURES: Mapping[str, str] = {
    "pitch_class_entropy": "entropy of the pitch-class histogram (bits)",
    "pitch_range": "highest minus lowest pitch (semitones)",
    "pitch_mean": "mean pitch (MIDI number)",
    "polyphony": "mean number of pitched notes sounding, over time with at least one",
    "note_density": "notes per second",
    "ioi": "mean inter-onset interval between distinct onsets (s)",
    "duration": "mean note duration (s)",
    "velocity_mean": "mean velocity",
    "velocity_std": "velocity standard deviation",
    "silence_share": "share of the piece's time with no note sounding",
    "scale_consistency": "largest share of pitched notes inside one major or minor scale",
    "groove_consistency": "1 - mean Hamming distance of neighbouring bars' onset patterns",
    "top_voice_step": "mean |interval| of the highest sounding pitch from onset to onset",
    "bottom_voice_step": "mean |interval| of the lowest sounding pitch from onset to onset",
    "num_instruments": "number of distinct instruments (drums count as one)",
    "drum_share": "share of notes that are drums",
}


def _pitched(notes: Notes) -> np.ndarray:
  return np.asarray(notes.instrument) != DRUMS


def _entropy_bits(counts: np.ndarray) -> float:
  total = counts.sum()
  if total <= 0:
    return float("nan")
  p = counts[counts > 0] / total
  return float(-(p * np.log2(p)).sum())


def pitch_class_histogram(notes: Notes, *, weight_by_duration: bool = False) -> np.ndarray:
  """Counts (or total durations) of the 12 pitch classes over pitched notes."""
  m = _pitched(notes)
  pcs = np.asarray(notes.pitch)[m] % 12
  w = np.asarray(notes.duration, np.float64)[m] if weight_by_duration else None
  return np.bincount(pcs, weights=w, minlength=12).astype(np.float64)


def _sounding_profile(onset: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(segment lengths, notes sounding in each segment) between consecutive note boundaries."""
  times = np.concatenate([onset, end])
  delta = np.concatenate([np.ones_like(onset), -np.ones_like(end)])
  order = np.lexsort((delta, times))  # At equal times, ends (-1) before onsets (+1).
  times, delta = times[order], delta[order]
  active = np.cumsum(delta)[:-1]
  return np.diff(times).astype(np.float64), active


def seam(notes: Notes, at: int, half: int) -> tuple[float, float]:
  """(share of the window [at - half, at + half) with no note sounding, mean number of notes
  sounding over the window) for `notes` in grid units: what an edit at `at` (an infilled span's
  start or end) does to the music around it, to set against the source's own window (a gap the
  source did not have, a pile-up of notes it did not have)."""
  lo, hi = at - half, at + half
  on = np.asarray(notes.onset, np.int64)
  end = on + np.asarray(notes.duration, np.int64)
  inside = (on < hi) & (end > lo)
  if not inside.any():
    return 1.0, 0.0
  lengths, active = _sounding_profile(np.maximum(on[inside], lo), np.minimum(end[inside], hi))
  width = hi - lo
  return float(1.0 - lengths[active > 0].sum() / width), float((lengths * active).sum() / width)


def _voice_steps(onset: np.ndarray, end: np.ndarray, pitch: np.ndarray, highest: bool) -> float:
  """Mean |interval| of the top (or bottom) line: at each distinct onset, the highest (lowest)
  pitch among the notes sounding then (held notes included), and its steps where it changes
  onset."""
  times = np.unique(onset)
  if len(times) < 2:
    return float("nan")
  order = np.argsort(onset, kind="stable")
  on, off, p = onset[order], end[order], pitch[order]
  line = np.empty(len(times), np.int64)
  fill = -1 if highest else 1 << 20
  for a in range(0, len(times), 256):  # Chunks keep the [onsets x notes] mask small.
    t = times[a:a + 256]
    hi = np.searchsorted(on, t[-1], side="right")  # Notes starting by the chunk's last onset.
    sounding = (on[None, :hi] <= t[:, None]) & (off[None, :hi] > t[:, None])
    vals = np.where(sounding, p[None, :hi], fill)
    line[a:a + 256] = vals.max(1) if highest else vals.min(1)
  return float(np.mean(np.abs(np.diff(line))))


def _groove(onset_s: np.ndarray) -> float:
  times = np.unique(onset_s)
  if len(times) < 3:
    return float("nan")
  ioi = np.diff(times)
  ioi = ioi[ioi >= _MIN_BEAT_S]
  if len(ioi) == 0:
    return float("nan")
  # The beat: the most common IOI, on a 10 ms histogram.
  values, counts = np.unique(np.round(ioi, 2), return_counts=True)
  beat = float(values[np.argmax(counts)])
  bar = 4 * beat
  rel = times - times[0]
  bar_index = np.floor(rel / bar + 1e-9).astype(np.int64)
  slot = np.minimum(np.round((rel - bar_index * bar) / bar * _SLOTS_PER_BAR).astype(np.int64),
                    _SLOTS_PER_BAR - 1)
  n_bars = int(bar_index.max()) + 1
  if n_bars < 2:
    return float("nan")
  grid = np.zeros((n_bars, _SLOTS_PER_BAR), bool)
  grid[bar_index, slot] = True
  return float(1.0 - np.mean(grid[1:] != grid[:-1]))


def piece_features(notes: Notes, grid_ms: int) -> dict[str, float]:
  """The `FEATURES` of one piece; NaN where a feature is undefined (e.g. no pitched notes)."""
  sec = grid_ms / 1000.0
  n = len(notes)
  out = {k: float("nan") for k in FEATURES}
  if n == 0:
    return out
  onset = np.asarray(notes.onset, np.int64)
  end = onset + np.asarray(notes.duration, np.int64)
  span = (int(end.max()) - int(onset.min())) * sec
  instruments = np.asarray(notes.instrument)
  vel = np.asarray(notes.velocity, np.float64)
  out["note_density"] = n / span if span > 0 else float("nan")
  distinct = np.unique(onset)
  out["ioi"] = float(np.mean(np.diff(distinct)) * sec) if len(distinct) > 1 else float("nan")
  out["duration"] = float(np.mean(end - onset) * sec)
  out["velocity_mean"] = float(vel.mean())
  out["velocity_std"] = float(vel.std())
  seg, active = _sounding_profile(onset, end)
  if span > 0:
    out["silence_share"] = float(seg[active == 0].sum() * sec / span)
  out["num_instruments"] = float(len(np.unique(instruments)))
  out["drum_share"] = float(np.mean(instruments == DRUMS))
  out["groove_consistency"] = _groove(onset * sec)

  m = _pitched(notes)
  if not m.any():
    return out
  p_on, p_end = onset[m], end[m]
  pitch = np.asarray(notes.pitch, np.int64)[m]
  counts = pitch_class_histogram(notes)
  out["pitch_class_entropy"] = _entropy_bits(counts)
  out["pitch_range"] = float(pitch.max() - pitch.min())
  out["pitch_mean"] = float(pitch.mean())
  seg, active = _sounding_profile(p_on, p_end)
  sounding = active > 0
  if seg[sounding].sum() > 0:
    out["polyphony"] = float((seg * active)[sounding].sum() / seg[sounding].sum())
  best = 0.0
  for tonic in range(12):
    for scale in (_MAJOR, _MINOR):
      pcs = [(tonic + d) % 12 for d in scale]
      best = max(best, counts[pcs].sum() / counts.sum())
  out["scale_consistency"] = float(best)
  out["top_voice_step"] = _voice_steps(p_on, p_end, pitch, highest=True)
  out["bottom_voice_step"] = _voice_steps(p_on, p_end, pitch, highest=False)
  return out


# ------------------------------------------------------------------ keys


@dataclasses.dataclass(frozen=True)
class Key:
  tonic: int  # Pitch class 0..11.
  mode: str  # "major" or "minor".
  correlation: float  # Pearson correlation with the key's profile.

  def __str__(self) -> str:
    return f"{_PITCH_NAMES[self.tonic]} {self.mode}"


def estimate_key(notes: Notes) -> Key | None:
  """Krumhansl-Schmuckler: the key whose profile best correlates with the duration-weighted
  pitch-class histogram. None without pitched notes or with a flat histogram."""
  hist = pitch_class_histogram(notes, weight_by_duration=True)
  if hist.sum() <= 0 or np.allclose(hist, hist[0]):
    return None
  best = None
  for mode, profile in (("major", _KK_MAJOR), ("minor", _KK_MINOR)):
    for tonic in range(12):
      r = float(np.corrcoef(hist, np.roll(profile, tonic))[0, 1])
      if best is None or r > best.correlation:
        best = Key(tonic, mode, r)
  return best


def keys_agree(a: Key | None, b: Key | None) -> bool:
  """Same tonic and mode."""
  return a is not None and b is not None and (a.tonic, a.mode) == (b.tonic, b.mode)


# ------------------------------------------------------------------ comparing two sets


def overlapped_area(a: Sequence[float], b: Sequence[float]) -> float:
  """Overlapped area of the Gaussian-KDE densities of two samples (Scott's bandwidth).

  1.0 for identical samples, near 0 for disjoint ones; NaN when either sample has no finite value.
  """
  a = np.asarray([x for x in a if math.isfinite(x)], np.float64)
  b = np.asarray([x for x in b if math.isfinite(x)], np.float64)
  if len(a) == 0 or len(b) == 0:
    return float("nan")
  both = np.concatenate([a, b])
  # Scott's rule per sample, floored at a width both share, so that two constant samples of
  # one value overlap fully.
  floor = (both.std() or max(abs(both.mean()), 1.0) * 1e-3) * 0.05
  bw = [max(s.std() * len(s) ** (-1 / 5), floor) for s in (a, b)]
  lo, hi = both.min() - 6 * max(bw), both.max() + 6 * max(bw)
  # Integration points at most a tenth of the narrower bandwidth apart.
  xs = np.linspace(lo, hi, int(min(20_000, max(512, 10 * (hi - lo) / min(bw)))))

  def kde(s, h):
    z = (xs[:, None] - s[None, :]) / h
    return np.exp(-0.5 * z * z).sum(1) / (len(s) * h * math.sqrt(2 * math.pi))

  pa, pb = kde(a, bw[0]), kde(b, bw[1])
  return float(np.clip(np.trapezoid(np.minimum(pa, pb), xs), 0.0, 1.0))


def compare_sets(generated: Iterable[Mapping[str, float]],
                 reference: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
  """Per feature: both sets' mean and std, relative difference of the means, and OA."""
  gen, ref = list(generated), list(reference)
  out = {}
  for name in FEATURES:
    g = np.asarray([f[name] for f in gen if math.isfinite(f[name])], np.float64)
    r = np.asarray([f[name] for f in ref if math.isfinite(f[name])], np.float64)
    row = {"gen_mean": float(g.mean()) if len(g) else float("nan"),
           "gen_std": float(g.std()) if len(g) else float("nan"),
           "ref_mean": float(r.mean()) if len(r) else float("nan"),
           "ref_std": float(r.std()) if len(r) else float("nan"),
           "oa": overlapped_area(g, r)}
    denom = abs(row["ref_mean"])
    row["rel_diff"] = (abs(row["gen_mean"] - row["ref_mean"]) / denom
                       if denom > 0 else float("nan"))
    out[name] = row
  return out


# ------------------------------------------------------------------ copying


def pitch_sequence(notes: Notes) -> np.ndarray:
  """Pitched notes' pitches in canonical (onset, instrument, pitch-desc) order."""
  return np.asarray(notes.pitch, np.int64)[_pitched(notes)]


def interval_sequence(notes: Notes) -> np.ndarray:
  """Successive intervals of `pitch_sequence` (transposition invariant)."""
  return np.diff(pitch_sequence(notes))


def _ngram_keys(seq: np.ndarray, n: int) -> np.ndarray:
  """One int per n-gram (exact: values are packed base-512 into Python ints, hashed to bytes)."""
  if len(seq) < n:
    return np.empty(0, dtype=object)
  view = np.lib.stride_tricks.sliding_window_view(seq.astype(np.int16), n)
  return np.fromiter((row.tobytes() for row in view), dtype=object, count=len(view))


class CopyIndex:
  """The n-grams of a training set, for the copying check: `longest_match(seq)` is the longest
  run of `seq` that occurs verbatim in one training sequence, `shared(seq, n)` the share of
  `seq`'s n-grams that occur there."""

  def __init__(self, sequences: Iterable[np.ndarray]):
    self._seqs = [np.asarray(s, np.int64) for s in sequences]
    self._cache: dict[int, set] = {}

  def _set(self, n: int) -> set:
    if n not in self._cache:
      keys = set()
      for s in self._seqs:
        keys.update(_ngram_keys(s, n))
      self._cache[n] = keys
    return self._cache[n]

  def shared(self, seq: np.ndarray, n: int) -> float:
    grams = _ngram_keys(np.asarray(seq, np.int64), n)
    if len(grams) == 0:
      return float("nan")
    train = self._set(n)
    return float(np.mean([g in train for g in grams]))

  def longest_match(self, seq: np.ndarray) -> int:
    """Length of the longest run of `seq` found verbatim in the training sequences."""
    seq = np.asarray(seq, np.int64)

    def found(n):
      train = self._set(n)
      return any(g in train for g in _ngram_keys(seq, n))

    if len(seq) == 0 or not found(1):
      return 0
    lo, hi = 1, len(seq)  # found(lo) holds; find the largest such n (monotone in n).
    while lo < hi:
      mid = (lo + hi + 1) // 2
      if found(mid):
        lo = mid
      else:
        hi = mid - 1
    return lo
