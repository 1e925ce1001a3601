"""Char codec ("Optimus TXT", MuseNet-like, human-readable), and the original's legacy files.

A song is a header line `SONG=<name>` followed by one line per note. A note line holds the fields
`STA DUR PTC [VEL] [INS]`, each one character `chr(value + 33)`: STA is the onset delta to the
previous note, DUR the duration (grid units), PTC the pitch, VEL the velocity 1..127, INS the
instrument 0..128 (128 = drums). Each line carries its own note (no one-note shift).

STA and DUR are capped at `char_max_value`, so every character is a valid, non-surrogate code
point and the vocabulary is fixed by the encoding. A longer gap is written as wait lines (a line of
one character: advance time by that value, no note), so it is exact and nothing after it shifts;
a longer duration is clipped and counted. Lines are split on '\\n' only (C1 characters such as
U+0085 are field values, never separators).

Vocabulary (`text_to_ids` / `ids_to_text`): PAD = 0, '\\n' = 1, code points 32 .. 33 +
char_max_value -> 2 .. vocab_size - 1.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from virtuoso_jax.encoding.notes import DRUMS, EncodingConfig, Notes

OFFSET = 33
NEWLINE = 10
_HEADER = "SONG="
_HEADER_CP = np.array([ord(c) for c in _HEADER], np.int64)
# The original's fixed output patches per MIDI channel ("MuseNet compatible", spec §1.11).
MUSENET_PATCHES = (0, 24, 32, 40, 42, 46, 56, 71, 73, 0, 0, 0, 0, 0, 0, 0)
LEGACY_HEADER_KEYS = (
    "SONG", "DATASET", "CREATED_ON", "CHARS_ENCODING_OFFSET", "TIME_DENOMINATOR", "TRANSFORM",
    "PERFECT_TIMINGS", "MUSENET_ENCODING", "TRANSPOSED_BY", "TRANSPOSED_AND_FLIPPED", "LEGEND",
    "TOTAL_SONGS_IN_DATASET")
_LEGACY_HEADER_RE = re.compile(r"^(%s)=" % "|".join(LEGACY_HEADER_KEYS))


def sanitize_name(name: str) -> str:
  """Song name for the header: printable ASCII without spaces or '=' (replaced by '_')."""
  name = re.sub(r"[^!-~]|=", "_", str(name))[:200]
  return name or "song"


def _codepoints(text: str) -> np.ndarray:
  return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), "<u4").astype(np.int64)


def _lines(cp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(start, length) of each '\\n'-separated line (a final line without '\\n' included)."""
  nl = np.flatnonzero(cp == NEWLINE)
  starts = np.concatenate([[0], nl + 1])
  ends = np.concatenate([nl, [len(cp)]])
  return starts, ends - starts


class CharCodec:
  """Notes <-> Optimus TXT, and TXT <-> ids (see the module docstring)."""

  pad_id = 0
  newline_id = 1

  def __init__(self, config: EncodingConfig = EncodingConfig()):
    self.config = config
    self.max_value = config.char_max_value
    self.fields = ("STA", "DUR", "PTC") + (("VEL",) if config.char_velocity else ()) + (
        ("INS",) if config.char_instrument else ())
    self.num_fields = len(self.fields)
    self.max_codepoint = OFFSET + self.max_value
    self.vocab_size = 2 + (self.max_codepoint - 32 + 1)
    self.legend = "-".join(self.fields)

  # ------------------------------------------------------------------ encode
  def encode(self, notes: Notes, name: str | None = "song", *, return_report: bool = False):
    """Notes -> TXT (`SONG=<name>` header unless `name` is None, one line per note).

    With `return_report=True` returns `(text, report)`: `duration_clipped`, `wait_lines`.
    """
    notes = notes.canonical()
    m = self.max_value
    delta = np.diff(notes.onset.astype(np.int64), prepend=0)
    n_wait = np.where(delta > m, (delta - 1) // m, 0)
    sta = delta - n_wait * m
    dur = np.minimum(notes.duration.astype(np.int64), m)
    cols = [sta, dur, notes.pitch]
    if self.config.char_velocity:
      cols.append(notes.velocity)
    if self.config.char_instrument:
      cols.append(notes.instrument)
    f = self.num_fields
    line = np.full((len(notes), f + 1), NEWLINE, np.int64)
    if len(notes):
      line[:, :f] = np.stack(cols, axis=1) + OFFSET
    size = 2 * n_wait + f + 1
    starts = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    body = np.full(int(size.sum()), NEWLINE, np.int64)
    # Wait lines: (chr(m + 33), '\n') pairs before the note line.
    if n_wait.sum():
      owner = np.repeat(np.arange(len(notes)), n_wait)
      k = np.arange(len(owner)) - np.repeat(np.cumsum(n_wait) - n_wait, n_wait)
      body[starts[owner] + 2 * k] = m + OFFSET
    if len(notes):
      body[(starts + 2 * n_wait)[:, None] + np.arange(f + 1)] = line
    text = body.astype("<u4").tobytes().decode("utf-32-le")
    if name is not None:
      text = f"{_HEADER}{sanitize_name(name)}\n" + text
    if return_report:
      return text, {"notes": len(notes),
                    "duration_clipped": int((notes.duration > m).sum()),
                    "wait_lines": int(n_wait.sum())}
    return text

  # ------------------------------------------------------------------ decode
  def _is_header(self, cp, starts, lengths) -> np.ndarray:
    h = len(_HEADER_CP)
    is_header = lengths > max(self.num_fields, h)
    padded = np.concatenate([cp, np.zeros(h, np.int64)])
    for j in range(h):
      is_header &= padded[starts + j] == _HEADER_CP[j]
    return is_header

  def song_name(self, text: str) -> str | None:
    """The name in the first `SONG=` header, or None."""
    for line in text.split("\n"):
      if line.startswith(_HEADER) and len(line) > max(self.num_fields, len(_HEADER)):
        return line[len(_HEADER):]
    return None

  def split_songs(self, text: str) -> list[tuple[str | None, str]]:
    """Splits a multi-song text at its `SONG=` headers: [(name, song text), ...]."""
    cp = _codepoints(text)
    starts, lengths = _lines(cp)
    heads = np.flatnonzero(self._is_header(cp, starts, lengths))
    head_set = set(heads.tolist())
    cuts = sorted(head_set | {0})
    out = []
    for a, b in zip(cuts, cuts[1:] + [len(starts)]):
      lo = int(starts[a])
      hi = int(starts[b]) if b < len(starts) else len(cp)
      chunk = text[lo:hi]  # str indices are code points, as in `cp`.
      if not chunk.strip("\n"):
        continue
      name = self.song_name(chunk) if a in head_set else None
      out.append((name, chunk))
    return out

  def decode(self, text: str, *, return_report: bool = False):
    """TXT -> canonical Notes of the first song in `text`. Never raises on any string.

    Malformed lines (wrong length, a value out of range) are skipped and counted; they do not
    advance time. With `return_report=True` returns `(notes, report)`.
    """
    if not isinstance(text, str):
      text = str(text)
    cp = _codepoints(text)
    starts, lengths = _lines(cp)
    is_header = self._is_header(cp, starts, lengths)
    heads = np.flatnonzero(is_header)
    first = 0
    last = len(starts)
    nonempty = np.flatnonzero(lengths > 0)
    if len(heads) and len(nonempty) and heads[0] == nonempty[0]:
      first = heads[0] + 1
      later = heads[heads > heads[0]]
      if len(later):
        last = later[0]
    elif len(heads):
      last = heads[0]
    starts, lengths = starts[first:last], lengths[first:last]
    f = self.num_fields
    m = self.max_value
    is_wait = lengths == 1
    is_note = lengths == f
    padded = np.concatenate([cp, np.zeros(f, np.int64)])
    vals = padded[starts[:, None] + np.arange(f)] - OFFSET  # [lines, f]
    wait_ok = is_wait & (vals[:, 0] >= 0) & (vals[:, 0] <= m)
    ok = is_note & (vals[:, 0] >= 0) & (vals[:, 0] <= m) & (vals[:, 1] >= 1) & (vals[:, 1] <= m)
    ok &= (vals[:, 2] >= 0) & (vals[:, 2] <= 127)
    col = 3
    if self.config.char_velocity:
      ok &= (vals[:, col] >= 1) & (vals[:, col] <= 127)
      col += 1
    if self.config.char_instrument:
      ok &= (vals[:, col] >= 0) & (vals[:, col] <= DRUMS)
    inc = np.where(ok | wait_ok, vals[:, 0], 0)
    onset = np.cumsum(inc)[ok]
    v = vals[ok]
    velocity = v[:, 3] if self.config.char_velocity else np.full(len(v), 90, np.int64)
    instrument = v[:, -1] if self.config.char_instrument else np.zeros(len(v), np.int64)
    notes = Notes(onset, v[:, 1], v[:, 2], velocity, instrument).canonical()
    if return_report:
      skipped = int(((lengths > 0) & ~ok & ~wait_ok).sum())
      return notes, {"notes": len(notes), "skipped_lines": skipped,
                     "wait_lines": int(wait_ok.sum())}
    return notes

  # ------------------------------------------------------------------ vocabulary
  def text_to_ids(self, text: str) -> np.ndarray:
    """TXT -> int32 ids. Raises ValueError naming the first character outside the vocabulary."""
    cp = _codepoints(text)
    bad = (cp != NEWLINE) & ((cp < 32) | (cp > self.max_codepoint))
    if bad.any():
      i = int(np.flatnonzero(bad)[0])
      raise ValueError(f"character U+{int(cp[i]):04X} at position {i} is outside the char "
                       f"vocabulary (newline and U+0020..U+{self.max_codepoint:04X})")
    return np.where(cp == NEWLINE, self.newline_id, cp - 30).astype(np.int32)

  def ids_to_text(self, ids) -> str:
    """Ids -> TXT; PAD ids are dropped. Raises ValueError on ids outside the vocabulary."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    bad = (ids < 0) | (ids >= self.vocab_size)
    if bad.any():
      i = int(np.flatnonzero(bad)[0])
      raise ValueError(f"id {int(ids[i])} at position {i} is outside 0..{self.vocab_size - 1}")
    ids = ids[ids != self.pad_id]
    cp = np.where(ids == self.newline_id, NEWLINE, ids + 30)
    return cp.astype("<u4").tobytes().decode("utf-32-le")

  # ------------------------------------------------------------------ legacy files
  def decode_legacy(self, text: str, *, char_offset: int | None = None,
                    time_denominator: int | None = None, legend: str | None = None,
                    shift: bool = True, default_velocity: int = 90,
                    patches: tuple[int, ...] = MUSENET_PATCHES, return_report: bool = False):
    """Reads TXT written by the original Optimus-VIRTUOSO (TMIDIX Optimus_MIDI_TXT_Processor).

    Handles its header lines (SONG=, DATASET=, LEGEND=, CHARS_ENCODING_OFFSET=, ...), 3/4/5-field
    layouts (STA-DUR-PTC, STA-DUR-PTC-CHA, STA-DUR-PTC-VEL-CHA, or as LEGEND= says), chordified
    lines (several notes on one line), char offsets 33 or 30000 (auto-detected), its
    millisecond times times TIME_DENOMINATOR, and its one-note attribute shift: line 1 repeats
    note 0, line k carries the delta to note k with the attributes of note k-1, so notes are
    placed before their delta is added and the first line is dropped (the last note of each song
    is lost in those files; nothing can recover it).

    Args:
      text: the file's text (a dataset with many songs, or one song).
      char_offset: 33 or 30000; None = CHARS_ENCODING_OFFSET= header, else auto-detect.
      time_denominator: ms per time unit; None = TIME_DENOMINATOR= header, else 1.
      legend: e.g. "STA-DUR-PTC-VEL-CHA"; None = LEGEND= header, else from the line length.
      shift: undo the original's one-note shift (True for files it wrote).
      default_velocity: velocity when the layout has none.
      patches: GM program per MIDI channel (the original wrote this fixed map); channel 9 = drums.
      return_report: also return counts of skipped lines.

    Returns:
      A list of `(name, Notes)`, one per song, on this codec's grid (or `(songs, report)`).
    """
    lines = text.split("\n")
    headers: dict[str, str] = {}
    songs: list[tuple[str, list[str]]] = []
    for line in lines:
      line = line.rstrip("\r")
      m = _LEGACY_HEADER_RE.match(line)
      if m:
        key, value = m.group(1), line[m.end():]
        if key == "SONG":
          name = re.sub(r"_with_\d+_notes$", "", value)
          songs.append((name, []))
        else:
          headers.setdefault(key, value)
        continue
      if not line:
        continue
      if not songs:
        songs.append(("song", []))
      songs[-1][1].append(line)
    if char_offset is None:
      char_offset = _int_or(headers.get("CHARS_ENCODING_OFFSET"), None)
    if char_offset is None:
      chars = [ord(c) for _, ls in songs for ln in ls[:50] for c in ln]
      char_offset = 30000 if chars and min(chars) >= 30000 else 33
    if time_denominator is None:
      time_denominator = _int_or(headers.get("TIME_DENOMINATOR"), 1)
    if legend is None:
      legend = headers.get("LEGEND")
    if legend:
      fields = legend.strip().upper().split("-")
    else:
      counts = np.bincount([len(ln) for _, ls in songs for ln in ls] or [0])
      common = int(np.argmax(counts[:6])) if len(counts) > 3 else 3
      fields = {3: ["STA", "DUR", "PTC"], 4: ["STA", "DUR", "PTC", "CHA"]}.get(
          common, ["STA", "DUR", "PTC", "VEL", "CHA"])
    unknown = set(fields) - {"STA", "DUR", "PTC", "VEL", "CHA"}
    if unknown or fields[:3] != ["STA", "DUR", "PTC"]:
      raise ValueError(f"decode_legacy: unsupported legend {legend!r}")
    step = len(fields)
    grid = self.config.grid_ms
    out, skipped = [], 0
    for name, song_lines in songs:
      groups = []
      for ln in song_lines:
        if len(ln) % step:
          skipped += 1
          continue
        vals = [ord(c) - char_offset for c in ln]
        groups.extend(vals[i:i + step] for i in range(0, len(vals), step))
      if shift and groups:
        groups = groups[1:]
      if not groups:
        out.append((name, Notes.empty()))
        continue
      g = np.asarray(groups, np.int64)
      sta_ms = g[:, 0] * time_denominator
      start_ms = np.cumsum(sta_ms) - (sta_ms if shift else 0)
      dur_ms = g[:, 1] * time_denominator
      pitch = g[:, 2]
      vel = g[:, fields.index("VEL")] if "VEL" in fields else np.full(len(g), default_velocity)
      chan = g[:, fields.index("CHA")] if "CHA" in fields else np.zeros(len(g), np.int64)
      keep = (pitch >= 0) & (pitch <= 127) & (chan >= 0) & (chan <= 15) & (g[:, 0] >= 0) & (
          dur_ms >= 0)
      skipped += int((~keep).sum())
      chan = np.clip(chan, 0, 15)
      inst = np.where(chan == 9, DRUMS, np.asarray(patches, np.int64)[chan])
      onset = np.floor(start_ms / grid + 0.5).astype(np.int64)
      end = np.floor((start_ms + dur_ms) / grid + 0.5).astype(np.int64)
      notes = Notes(onset[keep], np.maximum(end - onset, 1)[keep], pitch[keep],
                    np.clip(vel, 1, 127)[keep], inst[keep]).canonical()
      out.append((name, notes))
    if return_report:
      return out, {"songs": len(out), "skipped": skipped, "char_offset": char_offset,
                   "time_denominator": time_denominator, "legend": "-".join(fields)}
    return out


def _int_or(value: Any, default):
  try:
    return int(value)
  except (TypeError, ValueError):
    return default
