"""MIDI <-> `Notes`, and note-seq `NoteSequence` interchange.

The only module that touches symusic, mido and note-seq (each imported where it is used).

Parsing: symusic (C++, numpy column views) is the fast path. A file symusic rejects is retried
with mido(clip=True), which tolerates e.g. out-of-range data bytes; `midi_to_notes(...,
return_info=True)` says which parser read the file. Both paths produce the same intermediate
(per-track tick columns), so tempo maps, sustain, quantization and limits are shared code.

Writing (`notes_to_midi`): a `symusic.Score` built from the note columns (one `Note.from_numpy`
per track) and serialised by symusic; notes of one pitch that overlap on one instrument go to an
extra track, so every pairing rule reads them back exactly.

Semantics: tempo map honoured (500000 us/quarter before the first tempo event); note-on with
velocity 0 is a note-off; note-offs close the earliest open note of that pitch (FIFO) within a
MIDI track; program state is per MIDI track and channel (as symusic and pretty_midi do); channel
10 is drums (instrument 128); notes never closed are dropped. Onsets and note ends are rounded to
the grid (half up); a note shorter than one grid unit becomes one unit.

Hostile input: every input ends as `Notes` or `MidiError` (with a non-empty `reason`), in time and
memory that scale with the file's size, never with what its bytes claim (chunk lengths, delta
times, note counts). The limits (see `midi_to_notes`): `EncodingConfig.max_file_bytes` (checked
before reading a path), `max_tracks` (declared and actual track chunks), `max_notes`,
`max_seconds` (after the tempo map), and the fixed `MAX_TICK` (absolute tick positions must fit
int32: symusic stores ticks as int32) and `MAX_FALLBACK_BYTES` (the mido fallback, ~70 bytes of
memory and ~2.5 s per MB of input, is only tried on files up to this size, and only when a cheap
pre-scan of the chunk structure shows it can succeed).
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
from typing import Any, Union

import numpy as np

from virtuoso_jax import paths
from virtuoso_jax.encoding.notes import DRUMS, EncodingConfig, Notes, instrument_name

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]
_DEFAULT_CONFIG = EncodingConfig()
DEFAULT_MSPQ = 500_000  # Microseconds per quarter before the first tempo event (MIDI standard).
WRITE_TPQ = 500  # notes_to_midi: 500 ticks per quarter at 120 bpm = 1 tick per millisecond.
MAX_TICK = 2**31 - 1  # Absolute tick positions past this are refused (symusic's ticks are int32).
MAX_FALLBACK_BYTES = 1024 * 1024  # Largest file the mido fallback is tried on.
_INT32_MAX = 2**31 - 1
# Exceptions symusic raises for a file it cannot parse (its C++ errors arrive as RuntimeError).
_SYMUSIC_ERRORS = (RuntimeError, ValueError, IndexError, OverflowError)
# Exceptions mido raises for a file it cannot parse.
_MIDO_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, OverflowError,
                struct.error)


MIDI_ERROR_KINDS = ("unreadable", "unsupported", "over_limit", "no_notes")


class MidiError(ValueError):
  """Unreadable or absurd MIDI input. The message names the source and the reason.

  `kind` (machine-readable): "unreadable" (damaged, truncated, not MIDI), "unsupported" (SMF
  format 2, SMPTE division), "over_limit" (a stated limit: max_file_bytes, max_tracks, max_notes,
  max_seconds, MAX_TICK; the reason names it as `NAME=value` or `MAX_TICK`), "no_notes".
  """

  def __init__(self, source: str, reason: str, kind: str = "unreadable"):
    self.source = source
    self.reason = reason
    self.kind = kind
    super().__init__(f"{source}: {reason}")


@dataclasses.dataclass
class MidiInfo:
  """What `midi_to_notes(..., return_info=True)` learned about a file."""

  source: str
  parser: str  # "symusic" or "mido" (the tolerant fallback).
  recovered: bool  # True when symusic rejected the file and mido(clip=True) read it.
  recover_reason: str  # symusic's complaint when recovered, else "".
  smf_format: int
  num_tracks: int
  ticks_per_quarter: int
  num_notes: int
  seconds: float
  pedal_extended: int  # Notes lengthened by the sustain pedal.
  short_notes: int  # Notes shorter than one grid unit, set to one unit.


@dataclasses.dataclass
class _Track:
  start: np.ndarray  # int64 ticks
  end: np.ndarray
  pitch: np.ndarray
  velocity: np.ndarray
  instrument: int
  pedal_start: np.ndarray  # int64 ticks, sorted
  pedal_end: np.ndarray


@dataclasses.dataclass
class _Parsed:
  tpq: int
  tempo_ticks: np.ndarray
  tempo_mspq: np.ndarray
  tracks: list[_Track]
  num_notes: int  # Notes seen (a parser may stop early once over max_notes).


# --------------------------------------------------------------------------- reading


def _why(e: BaseException) -> str:
  """An exception's message, or its type where it has none (mido's EOFError() on a file cut
  mid-track has an empty message)."""
  text = str(e).strip()
  return text if text else f"{type(e).__name__} (the file ends early or is damaged)"


def _why_typed(e: BaseException, expected: tuple[type[BaseException], ...]) -> str:
  """`_why(e)`, prefixed with the exception's type unless it is one of `expected`."""
  if isinstance(e, expected):
    return _why(e)
  return f"{type(e).__name__}: {_why(e)}"


def _size(n: int) -> str:
  """A byte count for messages: '20 bytes', '3.5 KiB', '70.0 MiB'."""
  if n < 1024:
    return f"{n} bytes"
  if n < 1024 * 1024:
    return f"{n / 1024:.1f} KiB"
  return f"{n / (1024 * 1024):.1f} MiB"


def _limit(n: int) -> str:
  """A limit for messages: '64 MiB' when it is a whole number of MiB, else `_size`."""
  if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
    return f"{n // (1024 * 1024)} MiB"
  return _size(n)


def _too_big(name: str, size: int, limit: int) -> MidiError:
  return MidiError(name, f"file is {_size(size)}, over the {_limit(limit)} limit "
                   f"(max_file_bytes={limit})", kind="over_limit")


def _read_source(src: Source, config: EncodingConfig) -> tuple[bytes, str]:
  if isinstance(src, (bytes, bytearray, memoryview)):
    data = bytes(src)
    name = "<bytes>"
  elif isinstance(src, (str, os.PathLike)):
    name = os.fspath(src)
    try:
      size = paths.size(name)
    except OSError as e:
      raise MidiError(name, f"cannot read file: {e.strerror or e}") from e
    if size > config.max_file_bytes:
      raise _too_big(name, size, config.max_file_bytes)
    try:
      data = paths.read_bytes(name)
    except OSError as e:
      raise MidiError(name, f"cannot read file: {e.strerror or e}") from e
  else:
    raise TypeError(f"midi_to_notes: src must be a path or bytes, got {type(src).__name__}")
  if len(data) > config.max_file_bytes:
    raise _too_big(name, len(data), config.max_file_bytes)
  return data, name


def _check_header(data: bytes, name: str, config: EncodingConfig) -> tuple[int, int]:
  """Validates the SMF header chunk; returns (format, declared track count)."""
  if not data:
    raise MidiError(name, "empty file")
  if len(data) < 14 or data[:4] != b"MThd":
    raise MidiError(name, "not a standard MIDI file (no MThd header)")
  length, fmt, ntrks, division = struct.unpack(">IHHH", data[4:14])
  if length < 6:
    raise MidiError(name, f"MThd header length {length} < 6")
  if fmt == 2:
    raise MidiError(name, "SMF format 2 (independent sequences) is not supported",
                    kind="unsupported")
  if fmt > 2:
    raise MidiError(name, f"unknown SMF format {fmt}", kind="unsupported")
  if division & 0x8000:
    raise MidiError(name, "SMPTE time division is not supported (only ticks per quarter)",
                    kind="unsupported")
  if division == 0:
    raise MidiError(name, "ticks per quarter is 0")
  if ntrks > config.max_tracks:
    raise MidiError(name, f"file declares {ntrks} tracks, over the limit max_tracks="
                    f"{config.max_tracks}", kind="over_limit")
  if len(data) < 14 + 8:
    raise MidiError(name, "truncated: no track chunk after the header")
  return fmt, ntrks


def _scan_chunks(data: bytes, name: str, ntrks: int, config: EncodingConfig) -> str:
  """Walks the chunk headers (no event parsing: O(chunks), each at least 8 bytes).

  Raises MidiError when the file holds more MTrk chunks than `config.max_tracks` (whatever the
  header declares) or more than `max_tracks + 1024` chunks in all. Returns "" when the mido
  fallback can read the declared tracks' chunk structure, else why it cannot: mido reads `ntrks`
  chunks in sequence, each must be an MTrk that ends inside the file (a track whose length runs
  past the end can only end in EOFError, after parsing everything up to it).
  """
  n = len(data)
  hlen = int.from_bytes(data[4:8], "big")
  pos = 8 + hlen
  blocker = "" if pos <= n else f"the header chunk declares {hlen} bytes, only {n - 8} remain"
  k = tracks = 0
  while pos + 8 <= n:
    tag = data[pos:pos + 4]
    size = int.from_bytes(data[pos + 4:pos + 8], "big")
    end = pos + 8 + size
    if k < ntrks and not blocker:
      if tag != b"MTrk":
        blocker = f"chunk {k + 1} at byte {pos} is {tag!r}, not MTrk"
      elif end > n:
        blocker = (f"track chunk {k + 1} at byte {pos} declares {size} bytes, only "
                   f"{n - pos - 8} remain")
    k += 1
    if tag == b"MTrk":
      tracks += 1
      if tracks > config.max_tracks:
        raise MidiError(name, f"file holds more than {config.max_tracks} track chunks, over the "
                        f"limit max_tracks={config.max_tracks}", kind="over_limit")
    if k > config.max_tracks + 1024:
      raise MidiError(name, f"file holds more than {config.max_tracks + 1024} chunks "
                      f"(max_tracks={config.max_tracks} plus 1024 others)", kind="over_limit")
    if end > n:
      break
    pos = end
  if not blocker and k < ntrks:
    blocker = f"the header declares {ntrks} tracks, the file holds {k} chunks"
  return blocker


def _pedal_intervals(times, values, last_tick: int) -> tuple[np.ndarray, np.ndarray]:
  """Sustain intervals [start, end) from CC64 events (down when value >= 64, as note-seq);
  a pedal still down at the end is released at `last_tick`. (symusic's own `pedals` are not used:
  0.6.0 can report a pedal starting at tick 0.)"""
  times = np.asarray(times, np.int64)
  order = np.argsort(times, kind="stable")
  times = times[order]
  down = np.asarray(values, np.int64)[order] >= 64
  prev = np.concatenate([[False], down[:-1]])
  start = times[down & ~prev]
  end = times[~down & prev]
  if len(end) < len(start):
    end = np.append(end, max(int(last_tick), int(start[-1])))
  return start, end


class _TickWrap(Exception):
  """An absolute tick position past MAX_TICK (symusic's int32 ticks wrapped negative)."""


_TICK_REASON = (f"absolute tick positions pass {MAX_TICK} (2^31 - 1, the limit MAX_TICK; absurd "
                "delta times)")


def _parse_symusic(data: bytes, config: EncodingConfig) -> _Parsed:
  import symusic  # pylint: disable=g-import-not-at-top

  return _symusic_columns(symusic.Score.from_midi(data), config)


def _symusic_columns(score, config: EncodingConfig) -> _Parsed:
  """Note columns of a parsed `symusic.Score`. Raises `_TickWrap` on a wrapped tick."""
  tempos = score.tempos.numpy()
  if len(tempos["time"]) and tempos["time"].min() < 0:
    raise _TickWrap()
  tracks = []
  total = 0
  for tr in score.tracks:
    cols = tr.notes.numpy()
    n = len(cols["time"])
    if n == 0:
      continue
    total += n
    if total > config.max_notes:
      break
    # symusic's ticks are int32: a negative time or duration means the absolute tick wrapped.
    if cols["time"].min() < 0 or cols["duration"].min() < 0:
      raise _TickWrap()
    start = cols["time"].astype(np.int64)
    end = start + cols["duration"].astype(np.int64)
    if end.max() > MAX_TICK:
      raise _TickWrap()
    ps = pe = np.zeros(0, np.int64)
    if config.sustain_pedal and not tr.is_drum and len(tr.controls):
      cc = tr.controls.numpy()
      if cc["time"].min() < 0:
        raise _TickWrap()
      is64 = cc["number"] == 64
      if is64.any():
        ps, pe = _pedal_intervals(cc["time"][is64], cc["value"][is64], end.max())
    tracks.append(_Track(
        start=start, end=end,
        pitch=cols["pitch"].astype(np.int64), velocity=cols["velocity"].astype(np.int64),
        instrument=DRUMS if tr.is_drum else int(tr.program), pedal_start=ps, pedal_end=pe))
  return _Parsed(int(score.ticks_per_quarter), tempos["time"].astype(np.int64),
                 tempos["mspq"].astype(np.int64), tracks, total)


def _parse_mido(data: bytes, config: EncodingConfig) -> _Parsed:
  """Tolerant parser (mido, clip=True); the same pairing rules as symusic."""
  import mido  # pylint: disable=g-import-not-at-top

  mf = mido.MidiFile(file=io.BytesIO(data), clip=True)
  return _mido_columns(mf, config)


def _mido_columns(mf, config: EncodingConfig) -> _Parsed:
  """Pairs the notes of a parsed `mido.MidiFile` (see `_parse_mido`). Raises `_TickWrap` on an
  absolute tick past MAX_TICK (mido reads delta times of any length into Python ints)."""
  import collections  # pylint: disable=g-import-not-at-top

  tempo_ticks, tempo_mspq, tracks = [], [], []
  total = 0
  for mtrack in mf.tracks:
    tick = 0
    program = [0] * 16
    open_notes = collections.defaultdict(collections.deque)
    groups = collections.defaultdict(lambda: ([], [], [], []))  # (ch, instrument) -> cols
    pedals = collections.defaultdict(lambda: ([], []))  # channel -> CC64 (ticks, values)
    for msg in mtrack:
      tick += msg.time
      if tick > MAX_TICK:
        raise _TickWrap()
      t = msg.type
      if t == "note_on" and msg.velocity > 0:
        open_notes[(msg.channel, msg.note)].append((tick, msg.velocity, program[msg.channel]))
      elif t == "note_off" or (t == "note_on" and msg.velocity == 0):
        q = open_notes.get((msg.channel, msg.note))
        if q:
          on, vel, prog = q.popleft()
          inst = DRUMS if msg.channel == 9 else prog
          g = groups[(msg.channel, inst)]
          g[0].append(on)
          g[1].append(tick)
          g[2].append(msg.note)
          g[3].append(vel)
          total += 1
          if total > config.max_notes:
            break
      elif t == "program_change":
        program[msg.channel] = msg.program
      elif t == "control_change" and msg.control == 64:
        pedals[msg.channel][0].append(tick)
        pedals[msg.channel][1].append(msg.value)
      elif t == "set_tempo":
        tempo_ticks.append(tick)
        tempo_mspq.append(msg.tempo)
    for (ch, inst), (on, off, pitch, vel) in sorted(groups.items()):
      if config.sustain_pedal and inst != DRUMS and pedals[ch][0]:
        ps, pe = _pedal_intervals(pedals[ch][0], pedals[ch][1], max(off))
      else:
        ps = pe = np.zeros(0, np.int64)
      tracks.append(_Track(np.asarray(on, np.int64), np.asarray(off, np.int64),
                           np.asarray(pitch, np.int64), np.asarray(vel, np.int64), inst, ps, pe))
    if total > config.max_notes:
      break
  return _Parsed(int(mf.ticks_per_beat), np.asarray(tempo_ticks, np.int64),
                 np.asarray(tempo_mspq, np.int64), tracks, total)


def _parse_mido_or_raise(data: bytes, config: EncodingConfig, name: str,
                         reason: str) -> _Parsed:
  """`_parse_mido`, every failure as a MidiError that also gives symusic's `reason`."""
  import mido  # pylint: disable=g-import-not-at-top

  try:
    mf = mido.MidiFile(file=io.BytesIO(data), clip=True)
  # Boundary: any exception from the third-party parser means "mido cannot read this file";
  # unexpected types are named in the reason.
  except Exception as e:  # pylint: disable=broad-except
    raise MidiError(name, f"unreadable MIDI: {reason} (tolerant parser: "
                    f"{_why_typed(e, _MIDO_ERRORS)})") from e
  try:
    return _mido_columns(mf, config)
  except _TickWrap:
    raise MidiError(name, _TICK_REASON + " (tolerant parser)", kind="over_limit") from None


def _close_all_ends(tr: _Track) -> np.ndarray:
  """Note ends under "a note-off closes every open note of its pitch" (pretty_midi/note-seq's
  rule), rebuilt from FIFO-paired notes: a note ends at the first note-off of its pitch strictly
  after its onset. Identical to FIFO when notes of a pitch do not overlap; zero-length notes keep
  their length. (Notes FIFO left unterminated at the end of a track cannot be recovered.)"""
  end = tr.end
  if len(end) < 2:
    return end
  big = np.int64(1) << 40
  offs = np.sort(tr.pitch * big + end)
  j = np.searchsorted(offs, tr.pitch * big + tr.start, side="right")
  cand = offs[np.minimum(j, len(offs) - 1)]
  found = (j < len(offs)) & (cand // big == tr.pitch)
  first_off = np.where(found, cand - tr.pitch * big, end)
  return np.where(end > tr.start, np.minimum(end, first_off), end)


def _apply_sustain(tr: _Track) -> tuple[np.ndarray, int]:
  """New note ends: a note released while the pedal is down lasts until the pedal is released
  or the same pitch is struck again, whichever comes first (note-seq's rule)."""
  end = tr.end
  if not len(tr.pedal_start) or not len(end):
    return end, 0
  k = np.searchsorted(tr.pedal_start, end, side="right") - 1
  inside = (k >= 0) & (end < tr.pedal_end[np.maximum(k, 0)])
  if not inside.any():
    return end, 0
  new_end = np.where(inside, tr.pedal_end[np.maximum(k, 0)], end)
  # First onset of the same pitch at or after the original release.
  big = np.int64(1) << 40
  keys = np.sort(tr.pitch * big + tr.start)
  probe = tr.pitch * big + end
  j = np.searchsorted(keys, probe, side="left")
  has_next = j < len(keys)
  nxt = keys[np.minimum(j, len(keys) - 1)]
  same_pitch = has_next & (nxt // big == tr.pitch)
  restrike = np.where(same_pitch, nxt - tr.pitch * big, new_end)
  new_end = np.where(inside, np.maximum(end, np.minimum(new_end, restrike)), end)
  return new_end, int((new_end != end).sum())


def ticks_to_seconds(ticks: np.ndarray, tpq: int, tempo_ticks: np.ndarray,
                     tempo_mspq: np.ndarray) -> np.ndarray:
  """Tick times -> seconds (float64) through a tempo map (500000 us/quarter before the first)."""
  tempo_ticks = np.asarray(tempo_ticks, np.int64)
  tempo_mspq = np.asarray(tempo_mspq, np.int64)
  order = np.argsort(tempo_ticks, kind="stable")
  tt, tm = tempo_ticks[order], tempo_mspq[order]
  # The last tempo event at a tick wins.
  if len(tt):
    last = np.append(tt[1:] != tt[:-1], True)
    tt, tm = tt[last], tm[last]
  if not len(tt) or tt[0] != 0:
    tt = np.concatenate([[0], tt])
    tm = np.concatenate([[DEFAULT_MSPQ], tm])
  tm = np.maximum(tm, 1)
  seg_us = np.diff(tt).astype(np.float64) * tm[:-1] / tpq
  cum_us = np.concatenate([[0.0], np.cumsum(seg_us)])
  k = np.searchsorted(tt, ticks, side="right") - 1
  return (cum_us[k] + (ticks - tt[k]).astype(np.float64) * tm[k] / tpq) * 1e-6


def quantize_seconds(seconds: np.ndarray, grid_ms: int) -> np.ndarray:
  """Seconds -> grid units, rounding half up (after removing float noise below 1e-6 unit)."""
  x = np.asarray(seconds, np.float64) * (1000.0 / grid_ms)
  return np.floor(np.round(x, 6) + 0.5).astype(np.int64)


def _to_notes(parsed: _Parsed, config: EncodingConfig, name: str) -> tuple[Notes, int, int]:
  tracks = parsed.tracks
  if not tracks:
    return Notes.empty(), 0, 0
  n_total = sum(len(t.start) for t in tracks)
  if n_total > config.max_notes:
    raise MidiError(name, f"more than max_notes={config.max_notes} notes", kind="over_limit")
  ends, extended = [], 0
  for tr in tracks:
    tr.end = _close_all_ends(tr)
    if config.sustain_pedal and len(tr.pedal_start):
      e, n = _apply_sustain(tr)
      extended += n
    else:
      e = tr.end
    ends.append(e)
  start = np.concatenate([t.start for t in tracks])
  end = np.concatenate(ends)
  sec = ticks_to_seconds(np.concatenate([start, end]), parsed.tpq, parsed.tempo_ticks,
                         parsed.tempo_mspq)
  if len(sec) and not sec.max() <= config.max_seconds:  # `not <=`: NaN is refused too.
    raise MidiError(name, f"song lasts {sec.max():.0f} s, over the limit max_seconds="
                    f"{config.max_seconds:g} (absurd delta times?)", kind="over_limit")
  if len(sec) and sec.max() * (1000.0 / config.grid_ms) >= _INT32_MAX:
    raise MidiError(name, f"song lasts {sec.max():.0f} s: more than 2^31 - 1 grid units of "
                    f"{config.grid_ms} ms (raise grid_ms or lower max_seconds)", kind="over_limit")
  units = quantize_seconds(sec, config.grid_ms)
  onset, off = units[:n_total], units[n_total:]
  duration = off - onset
  short = int((duration < 1).sum())
  duration = np.maximum(duration, 1)
  pitch = np.concatenate([t.pitch for t in tracks])
  velocity = np.clip(np.concatenate([t.velocity for t in tracks]), 1, 127)
  instrument = np.concatenate([np.full(len(t.start), t.instrument, np.int64) for t in tracks])
  if pitch.min() < 0 or pitch.max() > 127:
    raise MidiError(name, f"note pitch outside 0..127 ({pitch.min()}..{pitch.max()})")
  notes = Notes(onset, duration, pitch, velocity, instrument)
  return notes[notes.order()], extended, short


def midi_to_notes(src: Source, config: EncodingConfig = _DEFAULT_CONFIG, *,
                  return_info: bool = False) -> Notes | tuple[Notes, MidiInfo]:
  """Reads a standard MIDI file into canonical `Notes`.

  Args:
    src: a path, a path-like or the file's bytes.
    config: grid, sustain option and limits.
    return_info: also return a `MidiInfo` (parser used, recovery, counts).

  Returns:
    `Notes`, or `(Notes, MidiInfo)` with `return_info=True`.

  Limits (each exceeded one is a `MidiError` whose reason names it):
    - `config.max_file_bytes` (default 64 MiB): checked on the file's size before it is read;
    - `config.max_tracks`: the declared track count and the MTrk chunks actually present
      (and `max_tracks + 1024` chunks of any kind);
    - `config.max_notes`: the parser stops counting once over it;
    - `config.max_seconds` (default 4 h): the last note end after the tempo map;
    - `MAX_TICK` = 2^31 - 1: absolute tick positions (symusic keeps ticks as int32; a wrap is
      detected, not read as a negative time);
    - `MAX_FALLBACK_BYTES` = 1 MiB: a file symusic rejects is retried with mido only up to this
      size, and only if the chunk structure lets mido finish (`_scan_chunks`).
    Time and memory are then linear in the file's size: symusic's C++ parser, numpy columns, and
    (bounded as above) mido.

  Raises:
    MidiError: unreadable, truncated, empty, format 2, over a limit, or no notes (unless
      `config.allow_empty`). The message names the source and the reason. Nothing else is
      raised for any input bytes (TypeError for a `src` that is neither a path nor bytes).
  """
  data, name = _read_source(src, config)
  fmt, ntrks = _check_header(data, name, config)
  blocker = _scan_chunks(data, name, ntrks, config)
  parser, reason, score = "symusic", "", None
  import symusic  # pylint: disable=g-import-not-at-top
  try:
    score = symusic.Score.from_midi(data)
  # Boundary: any exception from the third-party parser means "symusic cannot read this file";
  # unexpected types are named in the reason.
  except Exception as e:  # pylint: disable=broad-except
    reason = _why_typed(e, _SYMUSIC_ERRORS).replace("MiniMidi: ", "").replace(
        ": iostream error", "")
    if not config.tolerant_fallback:
      raise MidiError(name, f"unreadable MIDI: {reason}") from e
    if blocker:
      raise MidiError(name, f"unreadable MIDI: {reason} (tolerant parser not tried: "
                      f"{blocker})") from e
    if len(data) > MAX_FALLBACK_BYTES:
      raise MidiError(name, f"unreadable MIDI: {reason} (tolerant parser not tried: the file is "
                      f"{_size(len(data))}, over its {_limit(MAX_FALLBACK_BYTES)} limit "
                      "MAX_FALLBACK_BYTES)") from e
    parsed = _parse_mido_or_raise(data, config, name, reason)
    parser = "mido"
  if score is not None:
    try:
      parsed = _symusic_columns(score, config)
    except _TickWrap:
      raise MidiError(name, _TICK_REASON, kind="over_limit") from None
    del score
  if parsed.tpq <= 0:
    raise MidiError(name, f"ticks per quarter is {parsed.tpq}")
  if parsed.num_notes > config.max_notes:
    raise MidiError(name, f"more than max_notes={config.max_notes} notes", kind="over_limit")
  notes, extended, short = _to_notes(parsed, config, name)
  if not len(notes) and not config.allow_empty:
    raise MidiError(name, "no notes" + (f" (tolerant parser used: {reason})" if reason else ""),
                    kind="no_notes")
  if return_info:
    info = MidiInfo(source=name, parser=parser, recovered=parser == "mido",
                    recover_reason=reason, smf_format=fmt, num_tracks=ntrks,
                    ticks_per_quarter=parsed.tpq, num_notes=len(notes),
                    seconds=notes.end * config.grid_ms / 1000.0, pedal_extended=extended,
                    short_notes=short)
    return notes, info
  return notes


# --------------------------------------------------------------------------- writing


def _voices(notes: Notes, idx: np.ndarray) -> np.ndarray:
  """Splits notes of one instrument into voices (tracks) so that, within a voice, notes of one pitch
  never overlap: every note-off pairing rule (FIFO, close-all) then reads them back exactly."""
  voice = np.full(len(idx), -1, np.int64)
  remaining = np.arange(len(idx))
  v = 0
  while len(remaining):
    sub = idx[remaining]
    on = notes.onset[sub].astype(np.int64)
    end = on + notes.duration[sub]
    pitch = notes.pitch[sub].astype(np.int64)
    order = np.lexsort((end, on, pitch))
    big = np.int64(1) << 40
    key_end = pitch[order] * big + end[order]
    prev_end = np.concatenate([[0], np.maximum.accumulate(key_end)[:-1]])
    # A note may join this voice only if it starts after every earlier note of its pitch ended.
    ok_sorted = pitch[order] * big + on[order] >= prev_end
    ok = np.empty(len(order), bool)
    ok[order] = ok_sorted
    voice[remaining[ok]] = v
    remaining = remaining[~ok]
    v += 1
  return voice


def _check_ticks(on: np.ndarray, off: np.ndarray) -> None:
  """Raises ValueError unless one track's note ticks fit a MIDI file: every delta time at most
  0x0FFFFFFF (the largest a 4-byte VLQ holds; symusic's writer silently truncates longer ones) and
  every tick within MAX_TICK (symusic keeps ticks as int32)."""
  ticks = np.unique(np.concatenate([[0], on, off]))
  delta = np.diff(ticks)
  if ticks[-1] > MAX_TICK or (len(delta) and delta.max() > 0x0FFFFFFF):
    raise ValueError(f"notes_to_midi: note ticks out of range (last tick {ticks[-1]}, largest "
                     f"delta {delta.max() if len(delta) else 0}; at most {MAX_TICK} and "
                     f"{0x0FFFFFFF})")


def _ascii(text: str) -> str:
  """`text` with every non-ASCII character as '?' (MIDI text events declare no encoding)."""
  return text.encode("ascii", "replace").decode("ascii")


def notes_to_midi(notes: Notes, path: str | os.PathLike | None = None, *,
                  config: EncodingConfig = _DEFAULT_CONFIG, name: str = "virtuoso_jax") -> bytes:
  """Writes notes as a standard MIDI file (format 1, serialised by symusic) and returns its bytes.

  A conductor track first (named `name`, one tempo event: 120 bpm at 500 ticks per quarter,
  1 tick = 1 ms, so integer grid units map to integer ticks), then one track per instrument (more
  tracks for an instrument only where its notes of one pitch overlap: see `_voices`), each named
  after its instrument, with a program change and the note velocities. Drums are on channel 10;
  symusic gives every other track the channel of its position among the tracks (1-9, 11-16,
  cycling; the conductor's position counts, so the first instrument is on channel 2). Past 15
  tracks channels are reused: each track's own program change is what parsers that keep program
  state per track (symusic, pretty_midi, this module's readers) read back exactly.

  Args:
    notes: the notes (any order).
    path: if given, the file is also written there.
    config: its `grid_ms` gives the time unit of `notes`.
    name: the conductor track's name.

  Returns:
    The SMF bytes; `midi_to_notes(notes_to_midi(n)) == n.canonical()`.

  Raises:
    ValueError: a note tick past MAX_TICK or a gap between events over 0x0FFFFFFF ticks.
  """
  import symusic  # pylint: disable=g-import-not-at-top

  notes = notes.canonical()
  unit = config.grid_ms  # ticks per grid unit (1 tick = 1 ms)
  score = symusic.Score(WRITE_TPQ)
  score.tempos.append(symusic.Tempo(0, mspq=DEFAULT_MSPQ))
  # symusic writes the score's tempo into its first track and gives every track a program change.
  # A first track without notes keeps the conductor separate and named; flagged as drums, its
  # program change goes to channel 10 (the standard kit, which every drum track selects too) and
  # leaves the melodic channels alone.
  score.tracks.append(symusic.Track(name=_ascii(name)[:100], program=0, is_drum=True))
  for inst in notes.instruments().tolist():
    idx = np.flatnonzero(notes.instrument == inst)
    voice = _voices(notes, idx)
    for v in range(int(voice.max()) + 1):
      sel = idx[voice == v]
      on = notes.onset[sel].astype(np.int64) * unit
      dur = notes.duration[sel].astype(np.int64) * unit
      _check_ticks(on, on + dur)
      score.tracks.append(symusic.Track(
          name=_ascii(instrument_name(inst)), program=0 if inst == DRUMS else inst,
          is_drum=inst == DRUMS,
          notes=symusic.Note.from_numpy(on.astype(np.int32), dur.astype(np.int32),
                                        notes.pitch[sel].astype(np.int8),
                                        notes.velocity[sel].astype(np.int8))))
  data = score.dumps_midi()
  if path is not None:
    paths.write_bytes(path, data)
  return data


# --------------------------------------------------------------------------- note-seq interchange


def notes_to_note_sequence(notes: Notes, config: EncodingConfig = _DEFAULT_CONFIG):
  """`Notes` -> note-seq `NoteSequence` (seconds; program and is_drum per note, one
  `instrument` index per distinct instrument, a 120 bpm tempo)."""
  from note_seq.protobuf import music_pb2  # pylint: disable=g-import-not-at-top

  ns = music_pb2.NoteSequence()
  ns.ticks_per_quarter = WRITE_TPQ
  ns.tempos.add(time=0.0, qpm=120.0)
  unit = config.grid_ms / 1000.0
  inst_index = {v: i for i, v in enumerate(notes.instruments().tolist())}
  for on, dur, p, vel, inst in notes.canonical().to_rows():
    ns.notes.add(start_time=on * unit, end_time=(on + dur) * unit, pitch=p, velocity=vel,
                 program=0 if inst == DRUMS else inst, is_drum=inst == DRUMS,
                 instrument=inst_index[inst])
  ns.total_time = notes.end * unit
  return ns


def note_sequence_to_notes(ns, config: EncodingConfig = _DEFAULT_CONFIG) -> Notes:
  """note-seq `NoteSequence` -> canonical `Notes`, quantized exactly as `midi_to_notes` does.

  Sustain is not applied here (note-seq keeps it as control changes; use
  `note_seq.apply_sustain_control_changes` first if wanted)."""
  n = len(ns.notes)
  if n == 0:
    return Notes.empty()
  cols = np.array([(x.start_time, x.end_time, x.pitch, x.velocity, DRUMS if x.is_drum
                    else x.program) for x in ns.notes], np.float64).reshape(n, 5)
  units = quantize_seconds(cols[:, :2].reshape(-1), config.grid_ms).reshape(n, 2)
  duration = np.maximum(units[:, 1] - units[:, 0], 1)
  velocity = np.clip(cols[:, 3].astype(np.int64), 1, 127)
  notes = Notes(units[:, 0], duration, cols[:, 2].astype(np.int64), velocity,
                cols[:, 4].astype(np.int64))
  return notes.canonical()


def describe(notes: Notes, config: EncodingConfig = _DEFAULT_CONFIG) -> dict[str, Any]:
  """A small summary: notes, instruments with GM names, seconds."""
  insts, counts = np.unique(notes.instrument, return_counts=True)
  return {
      "notes": len(notes),
      "seconds": notes.end * config.grid_ms / 1000.0,
      "instruments": [{"instrument": int(i), "name": instrument_name(int(i)), "notes": int(c)}
                      for i, c in zip(insts, counts)],
  }
