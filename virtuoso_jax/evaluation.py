"""Held-out likelihood of whole songs: NLL per token, per note and bits per second of music.

Per-token loss does not compare across encodings (a note is 5 ids in the default token layout,
3 in the compact one, a line of characters in the char codec), so the figures that compare models
are per note and per second of music: bits per second = total NLL / ln 2 / total seconds (the
measure the Anticipatory Music Transformer reports on Lakh).

Whole songs, not first windows: a song of n ids is scored with windows of the model's context L
moved by `stride`; the first window scores all its targets, every later one only the targets no
window scored before, so every target is scored exactly once and each with at least L - stride
ids of context (except the first L targets of a song, which have all the context there is).

Token models split the NLL by field (time, instrument, pitch, duration, velocity; or the compact
layout's fields; `end` is the EOS target) and by the instrument of the note a token belongs to.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

import numpy as np

from virtuoso_jax import encoding
from virtuoso_jax.encoding import token_codec as tc

_FIELD_OF_KIND = {tc.K_DT: "time", tc.K_WAIT: "time", tc.K_INS: "instrument",
                  tc.K_PITCH: "pitch", tc.K_DUR: "duration", tc.K_VEL: "velocity",
                  tc.K_INS_PITCH: "instrument_pitch", tc.K_DUR_VEL: "duration_velocity",
                  tc.K_EOS: "end"}


def window_plan(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
  """Windows that score the targets 1..n-1 of an n-id song exactly once.

  Returns (start, first, last): the window's inputs are ids[start:start+context], and it scores
  the targets first..last (inclusive positions in the song).
  """
  if not 0 < stride <= context:
    raise ValueError(f"stride must be in 1..{context} (the context), got {stride}")
  if n < 2:
    return []
  plan = [(0, 1, min(context, n - 1))]
  while plan[-1][2] < n - 1:
    done = plan[-1][2]
    last = min(done + stride, n - 1)
    plan.append((max(0, last - context), done + 1, last))
  return plan


@dataclasses.dataclass
class SongScore:
  """One song's scored targets."""

  name: str
  nll: np.ndarray  # float64[n-1]: NLL (nats) of targets 1..n-1.
  targets: np.ndarray  # int32[n-1]: the target ids.
  notes: int
  seconds: float

  @property
  def total(self) -> float:
    return float(self.nll.sum())


def note_instruments(codec, ids: np.ndarray) -> np.ndarray:
  """int[len(ids)]: the instrument of the note each id belongs to (-1 outside notes)."""
  ids = np.asarray(ids, np.int64)
  out = np.full(len(ids), -1, np.int64)
  starts = list(codec.note_boundaries(ids)) + [len(ids)]
  ranges = codec.field_ranges()
  kinds = codec.kinds(ids)
  for a, b in zip(starts[:-1], starts[1:]):
    group = ids[a:b]
    k = kinds[a:b]
    if "instrument" in ranges:
      hit = group[k == tc.K_INS]
      inst = hit[0] - ranges["instrument"][0] if len(hit) else -1
    else:
      hit = group[k == tc.K_INS_PITCH]
      inst = (hit[0] - ranges["instrument_pitch"][0]) // 128 if len(hit) else -1
    # A group ends at its last note field; EOS after it stays -1.
    out[a:b] = np.where((k == tc.K_EOS) | (k == tc.K_PAD), -1, inst)
  return out


class Scorer:
  """Scores songs with a trained model (a `sample.Run`), in batches of windows."""

  def __init__(self, run, *, stride: int | None = None, batch_size: int = 8):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from flax import nnx  # pylint: disable=g-import-not-at-top

    self.run = run
    self.context = run.context
    self.stride = stride or max(1, self.context // 2)
    if not 0 < self.stride <= self.context:
      raise ValueError(f"--stride must be in 1..{self.context} (the model's context), got "
                       f"{self.stride}")
    self.batch_size = batch_size
    graphdef, state = nnx.split(run.model)

    def nll(state, tokens):
      model = nnx.merge(graphdef, state)
      logits = model(tokens[:, :-1], deterministic=True).astype(jnp.float32)
      logp = jax.nn.log_softmax(logits, axis=-1)
      return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]

    self._state = state
    self._nll = jax.jit(nll)

  def score(self, songs: Iterable[tuple[str, np.ndarray, int, float]],
            progress=None) -> list[SongScore]:
    """songs: (name, ids, number of notes, seconds). Returns one SongScore per song with n >= 2."""
    pad = self.run.codec.pad_id if hasattr(self.run.codec, "pad_id") else 0
    out, queue = [], []  # queue: (song index, window) pending in the next batch.
    songs = [s for s in songs if len(s[1]) >= 2]
    results = [np.zeros(len(ids) - 1, np.float64) for _, ids, _, _ in songs]

    def flush():
      tokens = np.full((self.batch_size, self.context + 1), pad, np.int32)
      for row, (i, (start, _, _)) in enumerate(queue):
        piece = songs[i][1][start:start + self.context + 1]
        tokens[row, :len(piece)] = piece
      nll = np.asarray(self._nll(self._state, tokens), np.float64)
      for row, (i, (start, first, last)) in enumerate(queue):
        # Target at song position p is output column p - start - 1.
        results[i][first - 1:last] = nll[row, first - start - 1:last - start]
      queue.clear()

    total = sum(len(window_plan(len(ids), self.context, self.stride)) for _, ids, _, _ in songs)
    done = 0
    for i, (_, ids, _, _) in enumerate(songs):
      for w in window_plan(len(ids), self.context, self.stride):
        queue.append((i, w))
        if len(queue) == self.batch_size:
          flush()
          done += self.batch_size
          if progress:
            progress(done, total)
    if queue:
      done += len(queue)
      flush()
      if progress:
        progress(done, total)
    for (name, ids, notes, seconds), nll in zip(songs, results):
      out.append(SongScore(name, nll, np.asarray(ids[1:], np.int32), int(notes), float(seconds)))
    return out


def summarize(scores: Sequence[SongScore], codec=None) -> dict[str, Any]:
  """Totals over songs: NLL per token and per note, bits per token / note / second; for token
  codecs also by field and by instrument (NLL share and bits per note of that instrument)."""
  nll = sum(s.total for s in scores)
  tokens = sum(len(s.nll) for s in scores)
  notes = sum(s.notes for s in scores)
  seconds = sum(s.seconds for s in scores)
  out: dict[str, Any] = {
      "songs": len(scores), "tokens": tokens, "notes": notes, "seconds": seconds,
      "nll_per_token": nll / max(tokens, 1), "nll_per_note": nll / max(notes, 1),
      "bits_per_note": nll / math.log(2) / max(notes, 1),
      "bits_per_second": nll / math.log(2) / seconds if seconds > 0 else float("nan")}
  if codec is not None and hasattr(codec, "kinds"):
    by_field: dict[str, float] = {}
    by_inst: dict[int, list[float]] = {}
    for s in scores:
      kinds = codec.kinds(s.targets)
      for kind, field in _FIELD_OF_KIND.items():
        m = kinds == kind
        if m.any():
          by_field[field] = by_field.get(field, 0.0) + float(s.nll[m].sum())
      # Instruments over the full id sequence (BOS at 0), then the targets' part.
      insts = note_instruments(codec, np.concatenate([[codec.bos_id], s.targets]))[1:]
      pitch_kind = tc.K_PITCH if "pitch" in codec.field_ranges() else tc.K_INS_PITCH
      for inst in np.unique(insts[insts >= 0]):
        m = insts == inst
        acc = by_inst.setdefault(int(inst), [0.0, 0.0])
        acc[0] += float(s.nll[m].sum())
        acc[1] += float(np.sum(kinds[m] == pitch_kind))
    out["bits_per_note_by_field"] = {f: v / math.log(2) / max(notes, 1)
                                     for f, v in sorted(by_field.items())}
    out["by_instrument"] = {
        encoding.instrument_name(i): {"instrument": i, "notes": int(n),
                                      "bits_per_note": v / math.log(2) / max(n, 1)}
        for i, (v, n) in sorted(by_inst.items())}
  return out


def per_song(scores: Sequence[SongScore]) -> list[dict[str, Any]]:
  return [{"name": s.name, "tokens": len(s.nll), "notes": s.notes, "seconds": s.seconds,
           "nll_per_token": s.total / max(len(s.nll), 1),
           "nll_per_note": s.total / max(s.notes, 1),
           "bits_per_second": s.total / math.log(2) / s.seconds if s.seconds > 0 else float("nan")}
          for s in scores]


def ids_to_notes(codec, ids) -> encoding.Notes:
  """A song's ids -> Notes, for either codec (char ids are read back as text)."""
  if hasattr(codec, "ids_to_text"):
    return codec.decode(codec.ids_to_text(ids))
  return codec.decode(ids)


def target_seconds(codec, ids) -> np.ndarray:
  """float64[len(ids) - 1]: seconds of music each target (ids[1:]) accounts for.

  A target advances the clock as `codec.time_advance` says; the last target also carries the
  song's tail (from the last onset to the end of the last note). So the whole vector sums to
  `song_seconds` of the decoded song, and any tiling of a song's targets (the trainer's eval
  windows, the scorer's strided windows) splits its seconds exactly.
  """
  ids = np.asarray(ids, np.int64).reshape(-1)
  unit = codec.config.seconds_per_unit
  out = codec.time_advance(ids)[1:].astype(np.float64) * unit
  if len(out):
    notes = ids_to_notes(codec, ids)
    out[-1] += max(0.0, song_seconds(notes, codec.config.grid_ms) - float(out.sum()))
  return out


def song_seconds(notes: encoding.Notes, grid_ms: int) -> float:
  """A song's length: from 0 to the end of its last note."""
  if not len(notes):
    return 0.0
  return float(np.max(np.asarray(notes.onset, np.int64) + notes.duration)) * grid_ms / 1000.0
