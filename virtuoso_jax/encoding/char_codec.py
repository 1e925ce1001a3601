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

Size limits: `decode`, `split_songs` and `decode_legacy` refuse a text longer than
`MAX_TEXT_CHARS` code points with `TextTooLarge` (a ValueError) naming the limit; below it they
run in time and memory linear in the text (numpy over int32 code points; no per-character
Python). `decode_legacy` also refuses more than `MAX_LEGACY_SONGS` songs.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from virtuoso_jax.encoding.grammar import Grammar
from virtuoso_jax.encoding.notes import DRUMS, EncodingConfig, Notes

OFFSET = 33
NEWLINE = 10
_HEADER = "SONG="
_HEADER_CP = np.array([ord(c) for c in _HEADER], np.int32)
# The original's fixed output patches per MIDI channel ("MuseNet compatible", spec §1.11).
MUSENET_PATCHES = (0, 24, 32, 40, 42, 46, 56, 71, 73, 0, 0, 0, 0, 0, 0, 0)
LEGACY_HEADER_KEYS = (
    "SONG", "DATASET", "CREATED_ON", "CHARS_ENCODING_OFFSET", "TIME_DENOMINATOR", "TRANSFORM",
    "PERFECT_TIMINGS", "MUSENET_ENCODING", "TRANSPOSED_BY", "TRANSPOSED_AND_FLIPPED", "LEGEND",
    "TOTAL_SONGS_IN_DATASET")
_INT32_MAX = 2**31 - 1
MAX_TEXT_CHARS = 16 * 1024 * 1024  # Longest text (code points) decode/decode_legacy accept.
MAX_LEGACY_SONGS = 100_000  # Most SONG= headers decode_legacy accepts in one text.
MAX_TIME_DENOMINATOR = 10_000  # Largest legacy TIME_DENOMINATOR (ms per time unit) honoured.


class TextTooLarge(ValueError):
  """A text over `MAX_TEXT_CHARS` (or, for decode_legacy, `MAX_LEGACY_SONGS` songs)."""


def _check_size(text: str, what: str) -> None:
  if len(text) > MAX_TEXT_CHARS:
    raise TextTooLarge(f"{what}: text is {len(text)} characters, over the limit "
                       f"MAX_TEXT_CHARS={MAX_TEXT_CHARS}")


def sanitize_name(name: str) -> str:
  """Song name for the header: printable ASCII without spaces or '=' (replaced by '_')."""
  name = re.sub(r"[^!-~]|=", "_", str(name))[:200]
  return name or "song"


def _codepoints(text: str) -> np.ndarray:
  """int32 code points (<= 0x10FFFF; lone surrogates kept as their values)."""
  return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), "<u4").astype(np.int32)


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
    self._grammar = None  # Built once by grammar().

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
    padded = np.concatenate([cp, np.zeros(h, cp.dtype)])
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
    """Splits a multi-song text at its `SONG=` headers: [(name, song text), ...].

    Raises TextTooLarge over `MAX_TEXT_CHARS`."""
    _check_size(text, "CharCodec.split_songs")
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
    """TXT -> canonical Notes of the first song in `text`. Never raises on any string of at most
    `MAX_TEXT_CHARS` code points (longer: `TextTooLarge`, a ValueError naming the limit).

    Malformed lines (wrong length, a value out of range) are skipped and counted; they do not
    advance time. A note whose end would pass 2^31 - 1 grid units (hundreds of thousands of wait
    lines) is dropped and counted too. With `return_report=True` returns `(notes, report)`:
    `notes`, `skipped_lines`, `wait_lines`, `out_of_range_notes`.
    """
    if not isinstance(text, str):
      text = str(text)
    _check_size(text, "CharCodec.decode")
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
    # Values only for lines of a note's or a wait's length ([lines, f] for all lines would be
    # f times the text in int64).
    note_idx = np.flatnonzero(lengths == f)
    wait_idx = np.flatnonzero(lengths == 1)
    vals = (cp[starts[note_idx][:, None] + np.arange(f)].astype(np.int64) - OFFSET
            if len(note_idx) else np.zeros((0, f), np.int64))
    wait_val = cp[starts[wait_idx]].astype(np.int64) - OFFSET
    wait_ok = (wait_val >= 0) & (wait_val <= m)
    ok = (vals[:, 0] >= 0) & (vals[:, 0] <= m) & (vals[:, 1] >= 1) & (vals[:, 1] <= m)
    ok &= (vals[:, 2] >= 0) & (vals[:, 2] <= 127)
    col = 3
    if self.config.char_velocity:
      ok &= (vals[:, col] >= 1) & (vals[:, col] <= 127)
      col += 1
    if self.config.char_instrument:
      ok &= (vals[:, col] >= 0) & (vals[:, col] <= DRUMS)
    inc = np.zeros(len(starts), np.int64)
    inc[note_idx[ok]] = vals[ok, 0]
    inc[wait_idx[wait_ok]] = wait_val[wait_ok]
    onset = np.cumsum(inc)[note_idx[ok]]
    v = vals[ok]
    fits = onset + v[:, 1] <= _INT32_MAX
    onset, v = onset[fits], v[fits]
    velocity = v[:, 3] if self.config.char_velocity else np.full(len(v), 90, np.int64)
    instrument = v[:, -1] if self.config.char_instrument else np.zeros(len(v), np.int64)
    notes = Notes(onset, v[:, 1], v[:, 2], velocity, instrument).canonical()
    if return_report:
      skipped = int((lengths > 0).sum()) - int(ok.sum()) - int(wait_ok.sum())
      return notes, {"notes": len(notes), "skipped_lines": skipped,
                     "wait_lines": int(wait_ok.sum()), "out_of_range_notes": int((~fits).sum())}
    return notes

  def time_advance(self, ids) -> np.ndarray:
    """int64[len(ids)]: grid units each id moves the clock: a note line's STA character and a
    wait line's character (as `decode` reads them) advance it by their value; header lines and
    every other id by 0. For an encoded song, the cumulative sum at a note line's first id is
    that note's onset."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    cp = np.where(ids == self.newline_id, NEWLINE, ids + 30)
    starts, lengths = _lines(cp)
    keep = ((lengths == self.num_fields) | (lengths == 1)) & ~self._is_header(cp, starts, lengths)
    starts = starts[keep]
    value = cp[starts] - OFFSET
    ok = (value >= 0) & (value <= self.max_value)
    out = np.zeros(len(ids), np.int64)
    out[starts[ok]] = value[ok]
    return out

  # ------------------------------------------------------------------ vocabulary
  # ------------------------------------------------------------------ grammar
  def grammar(self) -> Grammar:
    """The line grammar of the TXT, as an automaton over ids (see `Grammar`).

    States: 0 = line start (boundary), 1..F-1 = after field 0..F-2 of a note line, F = a note
    line is complete (only newline), F+1 = inside a `SONG=` header line (anything printable,
    newline ends it). After the STA field a newline is legal too (a wait line). Field values are
    legal only in their range (STA 0..max, DUR 1..max, PTC 0..127, VEL 1..127, INS 0..128), so
    every line decodes. Ids: PAD = 0, newline = 1, a value v is chr(v + 33) = id v + 3.
    """
    if self._grammar is not None:
      return self._grammar
    v, m, f, nl = self.vocab_size, self.max_value, self.num_fields, self.newline_id
    ranges = {"STA": (0, m), "DUR": (1, m), "PTC": (0, 127), "VEL": (1, 127), "INS": (0, 128)}
    header = f + 1
    s = f + 2
    allowed = np.zeros((s, v), bool)
    nxt = np.zeros((s, v), np.int32)
    completes = np.zeros((s, v), bool)
    advance = np.zeros((s, v), np.int32)
    value_id = lambda val: val + OFFSET - 30  # chr(val + 33) -> id (code point - 30).
    for j, name in enumerate(self.fields):
      lo, hi = ranges[name]
      ids = np.arange(value_id(lo), value_id(hi) + 1)
      ids = ids[ids < v]
      allowed[j, ids] = True
      nxt[j, ids] = j + 1
      if j == 0:
        advance[0, ids] = ids - value_id(0)
    allowed[1, nl] = True  # Wait line: one STA character.
    nxt[1, nl] = 0
    allowed[f, nl] = True
    nxt[f, nl] = 0
    completes[f, nl] = True
    allowed[header, 2:] = True  # Header: printable characters ...
    nxt[header, 2:] = header
    allowed[header, nl] = True  # ... until the newline.
    nxt[header, nl] = 0
    self._grammar = Grammar(allowed, nxt, completes, advance, 0, 0, -1, self.pad_id,
                            header_state=header)
    return self._grammar

  def prompt_state(self, text: str) -> tuple[int, np.ndarray]:
    """(grammar state, boundary flag per id) after a TXT prompt such as `SONG=` or a whole song.

    `SONG=...` header lines put the state in the header state (or back to the line start once
    their newline is given); other lines must follow the note-line grammar. Raises ValueError
    naming the offending line.
    """
    g = self.grammar()
    ids = self.text_to_ids(text)
    flags = np.zeros(len(ids), bool)
    pos, state = 0, g.start_state
    lines = text.split("\n")
    for k, line in enumerate(lines):
      last = k == len(lines) - 1
      n = len(line) + (0 if last else 1)
      flags[pos:pos + 1] = n > 0
      if line.startswith(_HEADER) or (last and line and _HEADER.startswith(line)):
        state = 0 if not last else g.header_state
      else:
        try:
          state, _ = g.walk(ids[pos:pos + n], 0)
        except ValueError as e:
          raise ValueError(f"char prompt line {k + 1} ({line!r}) is not a note line, a wait "
                           f"line or a SONG= header: {e}") from e
      pos += n
    return state, flags

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
      A list of `(name, Notes)`, one per song, on this codec's grid (or `(songs, report)`):
      report = {"songs", "skipped" (lines of a length that is not a multiple of the layout's,
      notes with a value out of range or whose time passes 2^31 - 1 grid units), "char_offset",
      "time_denominator", "legend", "ignored_headers" (CHARS_ENCODING_OFFSET= /
      TIME_DENOMINATOR= values that are not usable: not an integer, or outside 1..
      MAX_TIME_DENOMINATOR)}.

    Raises:
      TextTooLarge: over `MAX_TEXT_CHARS` code points or `MAX_LEGACY_SONGS` songs.
      ValueError: an unsupported legend, or `time_denominator` outside 1..MAX_TIME_DENOMINATOR.

    Time and memory are linear in the text (numpy over code points; Python work per song only).
    """
    if not isinstance(text, str):
      text = str(text)
    _check_size(text, "CharCodec.decode_legacy")
    if time_denominator is not None and not 1 <= int(time_denominator) <= MAX_TIME_DENOMINATOR:
      raise ValueError(f"decode_legacy: time_denominator must be in 1..{MAX_TIME_DENOMINATOR}, "
                       f"got {time_denominator}")
    cp = _codepoints(text)
    starts, lengths = _lines(cp)
    padded = np.concatenate([cp, np.zeros(32, np.int32)])
    # Lines end at '\n'; a '\r' before it is dropped.
    cr = (lengths > 0) & (padded[starts + lengths - 1] == 13)
    lengths = lengths - cr
    # Header lines `KEY=...`: compared column by column on the lines that could be one.
    key_of = np.full(len(starts), -1, np.int64)
    first_letters = np.array(sorted({ord(k[0]) for k in LEGACY_HEADER_KEYS}), np.int32)
    cand = np.flatnonzero((lengths >= 5) & np.isin(padded[starts], first_letters))
    song_key = LEGACY_HEADER_KEYS.index("SONG")
    order = [song_key] + [k for k in range(len(LEGACY_HEADER_KEYS)) if k != song_key]
    for ki in order:
      key = LEGACY_HEADER_KEYS[ki]
      pattern = key + "="
      m = lengths[cand] >= len(pattern)
      for j, ch in enumerate(pattern):
        m &= padded[starts[cand] + j] == ord(ch)
      key_of[cand[m]] = ki
      if ki == song_key and int(m.sum()) > MAX_LEGACY_SONGS:
        raise TextTooLarge(f"CharCodec.decode_legacy: text holds {int(m.sum())} songs, over "
                           f"the limit MAX_LEGACY_SONGS={MAX_LEGACY_SONGS}")
    headers: dict[str, str] = {}
    for ki, key in enumerate(LEGACY_HEADER_KEYS):
      if ki != song_key:
        hit = np.flatnonzero(key_of == ki)
        if len(hit):
          a = int(starts[hit[0]])
          headers[key] = text[a + len(key) + 1:a + int(lengths[hit[0]])]
    song_lines = np.flatnonzero(key_of == song_key)
    note_line = (key_of < 0) & (lengths > 0)
    song_of_line = np.cumsum(key_of == song_key) - 1  # -1: before the first SONG= header
    names = []
    if note_line.any() and song_of_line[np.flatnonzero(note_line)[0]] < 0:
      names.append("song")
      song_of_line = song_of_line + 1
    if len(song_lines) + len(names) > MAX_LEGACY_SONGS:
      raise TextTooLarge(f"CharCodec.decode_legacy: text holds {len(song_lines) + len(names)} "
                         f"songs, over the limit MAX_LEGACY_SONGS={MAX_LEGACY_SONGS}")
    for i in song_lines.tolist():
      a = int(starts[i])
      value = text[a + len("SONG="):a + int(lengths[i])]
      names.append(re.sub(r"_with_\d+_notes$", "", value))
    ignored = 0
    lines_idx = np.flatnonzero(note_line)
    if char_offset is None and "CHARS_ENCODING_OFFSET" in headers:
      char_offset = _int_or(headers["CHARS_ENCODING_OFFSET"], None)
      if char_offset is None or not 0 <= char_offset <= 0x10FFFF:
        char_offset, ignored = None, ignored + 1
    if char_offset is None:
      # The smallest character of each song's first 50 lines.
      sel = lines_idx
      if len(sel):
        song = song_of_line[sel]
        first_of_song = np.searchsorted(song, song)
        sel = sel[np.arange(len(sel)) - first_of_song < 50]
      lo = 0
      if len(sel):
        # Per-line minima: each segment [start_i, start_i+1) holds line i and its '\n' (masked).
        masked = np.concatenate([cp, [0x7FFFFFFF]]).astype(np.int32)
        masked[:-1][cp == NEWLINE] = 0x7FFFFFFF
        masked[(starts + lengths)[cr]] = 0x7FFFFFFF
        lo = int(np.minimum.reduceat(masked, starts)[sel].min())
      char_offset = 30000 if len(sel) and lo >= 30000 else 33
    if time_denominator is None:
      time_denominator = _int_or(headers.get("TIME_DENOMINATOR"), None)
      if time_denominator is None or not 1 <= time_denominator <= MAX_TIME_DENOMINATOR:
        ignored += "TIME_DENOMINATOR" in headers
        time_denominator = 1
    time_denominator = int(time_denominator)
    if legend is None:
      legend = headers.get("LEGEND")
    if legend:
      fields = legend.strip().upper().split("-")
    else:
      counts = np.bincount(np.minimum(lengths[lines_idx], 6)) if len(lines_idx) else np.zeros(1)
      common = int(np.argmax(counts[:6])) if len(counts) > 3 else 3
      fields = {3: ["STA", "DUR", "PTC"], 4: ["STA", "DUR", "PTC", "CHA"]}.get(
          common, ["STA", "DUR", "PTC", "VEL", "CHA"])
    unknown = set(fields) - {"STA", "DUR", "PTC", "VEL", "CHA"}
    if unknown or fields[:3] != ["STA", "DUR", "PTC"]:
      raise ValueError(f"decode_legacy: unsupported legend {legend!r}")
    step = len(fields)
    grid = self.config.grid_ms
    usable = lines_idx[lengths[lines_idx] % step == 0]
    skipped = len(lines_idx) - len(usable)
    # The characters of the usable lines, in order: groups of `step` values (a one-byte mask
    # over the text, +1 at each usable line's start and -1 at its end, summed).
    ln = lengths[usable]
    edge = np.zeros(len(cp) + 1, np.int8)
    edge[starts[usable]] = 1
    edge[starts[usable] + ln] -= 1
    g = (cp[np.cumsum(edge[:-1], dtype=np.int8).view(bool)] - np.int32(min(char_offset, 2**30))
         ).reshape(-1, step).astype(np.int64)
    del edge
    song = np.repeat(song_of_line[usable], ln // step)
    num_songs = len(names)
    if shift and len(song):
      first = np.concatenate([[True], song[1:] != song[:-1]])
      g, song = g[~first], song[~first]
    sta_ok = g[:, 0] >= 0
    sta_ms = np.where(sta_ok, g[:, 0], 0) * time_denominator
    # Onsets within each song: a running sum restarted at each song (before or after the
    # line's own delta, as the shift says).
    csum = np.cumsum(sta_ms)
    bounds = np.searchsorted(song, np.arange(num_songs + 1))
    base = np.concatenate([[0], csum])[bounds[:-1]]
    start_ms = csum - np.repeat(base, np.diff(bounds)) - (sta_ms if shift else 0)
    dur_ms = g[:, 1] * time_denominator
    pitch = g[:, 2]
    vel = g[:, fields.index("VEL")] if "VEL" in fields else np.full(len(g), default_velocity)
    chan = g[:, fields.index("CHA")] if "CHA" in fields else np.zeros(len(g), np.int64)
    onset = (2 * start_ms + grid) // (2 * grid)
    end = (2 * (start_ms + dur_ms) + grid) // (2 * grid)
    duration = np.maximum(end - onset, 1)
    keep = (pitch >= 0) & (pitch <= 127) & (chan >= 0) & (chan <= 15) & sta_ok & (dur_ms >= 0)
    keep &= onset + duration <= _INT32_MAX
    skipped += int((~keep).sum())
    chan = np.clip(chan, 0, 15)
    inst = np.where(chan == 9, DRUMS, np.asarray(patches, np.int64)[chan])
    vel = np.clip(vel, 1, 127)
    out = []
    empty = Notes.empty()
    for k, name in enumerate(names):
      a, b = int(bounds[k]), int(bounds[k + 1])
      kk = keep[a:b]
      if not kk.any():
        out.append((name, empty))
        continue
      out.append((name, Notes(onset[a:b][kk], duration[a:b][kk], pitch[a:b][kk], vel[a:b][kk],
                              inst[a:b][kk]).canonical()))
    if return_report:
      return out, {"songs": len(out), "skipped": skipped, "char_offset": char_offset,
                   "time_denominator": time_denominator, "legend": "-".join(fields),
                   "ignored_headers": ignored}
    return out


def _int_or(value: Any, default):
  try:
    return int(value)
  except (TypeError, ValueError):
    return default
