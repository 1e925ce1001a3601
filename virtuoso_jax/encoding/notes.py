"""The note model: `Notes` (column arrays on a time grid), `EncodingConfig`, `transpose`.

A composition is a set of notes `(onset, duration, pitch, velocity, instrument)` in absolute time,
quantized to a grid of `EncodingConfig.grid_ms` milliseconds. `instrument` is the General MIDI
program 0..127 of the note's channel at that moment, or `DRUMS` (128) for channel 10.

Canonical order (what every producer returns and every codec encodes): onset ascending, then
instrument ascending, then pitch descending; ties broken by duration then velocity ascending so
that equal note multisets give equal `Notes`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import numpy as np

DRUMS = 128  # The instrument value of drum notes (MIDI channel 10).
NUM_INSTRUMENTS = 129  # GM programs 0..127 plus drums.
FIELDS = ("onset", "duration", "pitch", "velocity", "instrument")
_INT32_MAX = np.iinfo(np.int32).max

TOKEN_LAYOUTS = ("default", "compact")
TRANSPOSE_POLICIES = ("fold", "drop", "clip")


@dataclasses.dataclass(frozen=True)
class EncodingConfig:
  """Everything that decides how MIDI becomes notes and notes become ids or text.

  The dataset stores `to_dict()` in its metadata; training and sampling rebuild the exact codecs
  from it with `from_dict()`.

  Attributes:
    grid_ms: Time grid in milliseconds (integer). Onsets and note ends are rounded to it.
    sustain_pedal: Extend notes released while the sustain pedal (CC64 >= 64) is down until the
      pedal is released or the same pitch is struck again (note-seq's rule).
    token_layout: "default": 5 tokens per note `[time-delta, instrument, pitch, duration,
      velocity-bin]`; "compact": 3 tokens per note `[time-delta, instrument x pitch,
      duration x velocity-bin]`.
    max_time_shift: Largest onset delta (grid units) one time-delta token carries. Longer gaps
      are split exactly with WAIT tokens worth `max_time_shift + 1` units each.
    max_duration: Largest duration (grid units) a token carries; longer notes are clipped (counted).
    velocity_bins: Velocity resolution of the token codec (1..127 in this many bins).
    char_max_value: Largest STA/DUR value of the char codec (grid units). Longer gaps are written
      as wait lines (exact); longer durations are clipped (counted).
    char_velocity: Write the VEL field in the char codec.
    char_instrument: Write the INS field in the char codec.
    allow_empty: `midi_to_notes` returns empty `Notes` for a file without notes instead of raising.
    tolerant_fallback: Retry a file symusic rejects with mido(clip=True) before calling it bad.
    max_file_bytes: Larger MIDI files are refused (MidiError).
    max_tracks: Files declaring more tracks are refused.
    max_notes: Files with more notes are refused.
    max_seconds: Files lasting longer (absurd deltas) are refused.
  """

  grid_ms: int = 10
  sustain_pedal: bool = True
  token_layout: str = "default"
  max_time_shift: int = 255
  max_duration: int = 512
  velocity_bins: int = 32
  char_max_value: int = 1000
  char_velocity: bool = True
  char_instrument: bool = True
  allow_empty: bool = False
  tolerant_fallback: bool = True
  max_file_bytes: int = 64 * 1024 * 1024
  max_tracks: int = 1024
  max_notes: int = 2_000_000
  max_seconds: float = 4 * 3600.0

  def __post_init__(self):
    def _check(cond, msg):
      if not cond:
        raise ValueError(f"EncodingConfig: {msg}")

    for name in ("grid_ms", "max_time_shift", "max_duration", "velocity_bins", "char_max_value",
                 "max_file_bytes", "max_tracks", "max_notes"):
      value = getattr(self, name)
      _check(isinstance(value, (int, np.integer)) and not isinstance(value, bool),
             f"{name} must be an int, got {value!r}")
    _check(self.grid_ms >= 1, f"grid_ms must be >= 1, got {self.grid_ms}")
    _check(self.token_layout in TOKEN_LAYOUTS,
           f"token_layout must be one of {TOKEN_LAYOUTS}, got {self.token_layout!r}")
    _check(self.max_time_shift >= 1, f"max_time_shift must be >= 1, got {self.max_time_shift}")
    _check(self.max_duration >= 1, f"max_duration must be >= 1, got {self.max_duration}")
    _check(1 <= self.velocity_bins <= 127,
           f"velocity_bins must be in 1..127, got {self.velocity_bins}")
    # chr(value + 33) must stay below the surrogate block U+D800.
    _check(128 <= self.char_max_value <= 0xD7FF - 33,
           f"char_max_value must be in 128..{0xD7FF - 33}, got {self.char_max_value}")
    _check(self.max_seconds > 0, f"max_seconds must be > 0, got {self.max_seconds}")

  def to_dict(self) -> dict[str, Any]:
    """A JSON-safe dict; `from_dict(to_dict())` gives an equal config."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any] | str) -> "EncodingConfig":
    """Rebuilds a config from `to_dict()` output (or its JSON string). Unknown keys are an error."""
    if isinstance(d, str):
      d = json.loads(d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"EncodingConfig.from_dict: unknown keys {unknown}")
    return cls(**dict(d))

  @property
  def seconds_per_unit(self) -> float:
    return self.grid_ms / 1000.0


# The attributes stated as a bin of a number (ControlConfig holds their edges).
BINNED_ATTRIBUTES = ("density", "polyphony", "pitch_range")
# What the control notes of an example are for (token codec version 3 states it in the prefix).
TASKS = ("infill", "accompany_melody", "accompany_parts")
# Generic edges, where the corpus is not known: the first version-2 runs used these, and
# `ControlConfig.generic(bins)` spaces placeholder edges over the same spans.
_GENERIC_EDGES = {"density": (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0),
                  "polyphony": (1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0),
                  "pitch_range": (6.0, 12.0, 18.0, 24.0, 30.0, 36.0, 48.0)}


@dataclasses.dataclass(frozen=True)
class ControlConfig:
  """Versions 2 to 5 of the token codec: anticipated control notes and attribute tokens
  (version 3 also states the task, `task_ids`; version 4 gives an infill's right context its
  own control-time ids, `infill_control_ids`; version 5 gives every control note's fields their
  own ids, `control_fields`).

  Attributes:
    anticipation_ms: a control note (a note given, not generated: the parts kept around an
      infilled span or under an accompaniment) enters the sequence this long before it sounds,
      so the model hears what is coming. A multiple of grid_ms, at most max_time_shift units.
    density_edges: notes per second: bin edges of the density attribute (len + 1 bins).
    polyphony_edges: mean notes sounding at each onset: edges of the polyphony attribute.
    pitch_range_edges: semitones between the lowest and highest pitched note.
    task_ids: version 3: the prefix also states which task the control notes serve (TASKS:
      infill, accompany the melody, accompany parts), so that a model does not take the notes
      given after an infilled span for a melody to write under. False: version 2 (runs made
      before it), whose files lack the key.
    infill_control_ids: version 4 (needs task_ids): the notes after an infilled span enter with
      their own control-time ids, so every control note says locally whether it is the music
      after a span or a part to accompany (a task id hundreds of ids back did not: models
      read an infill's right context as a melody to write under). False: version 2/3.
    control_fields: version 5 (needs infill_control_ids): a control note's instrument, pitch,
      duration and velocity have their own ids (as the Anticipatory Music Transformer's controls
      do), so a control chord entering between two event chords does not look like the event
      chord the model is writing. False: version 2-4.
  Training fits the edges to the corpus (`tasks.fit_controls`: quantiles, so every bin holds a
  like share of the training windows); the defaults are generic, corpus-blind edges.
  """

  anticipation_ms: int = 2000
  density_edges: tuple[float, ...] = _GENERIC_EDGES["density"]
  polyphony_edges: tuple[float, ...] = _GENERIC_EDGES["polyphony"]
  pitch_range_edges: tuple[float, ...] = _GENERIC_EDGES["pitch_range"]
  task_ids: bool = False
  infill_control_ids: bool = False
  control_fields: bool = False

  @classmethod
  def generic(cls, bins: int, anticipation_ms: int = 2000, task_ids: bool = False,
              infill_control_ids: bool = False,
              control_fields: bool = False) -> "ControlConfig":
    """`bins` bins per binned attribute, edges spread (geometrically) over the generic span:
    the vocabulary of a run whose edges are fitted to its corpus once its data is read."""
    if bins < 2:
      raise ValueError(f"ControlConfig.generic: bins must be >= 2, got {bins}")
    def spread(edges):
      return tuple(float(x) for x in np.geomspace(edges[0], edges[-1], bins - 1)) if bins > 2 \
          else (float(np.sqrt(edges[0] * edges[-1])),)
    return cls(anticipation_ms, **{f"{n}_edges": spread(e) for n, e in _GENERIC_EDGES.items()},
               task_ids=task_ids, infill_control_ids=infill_control_ids,
               control_fields=control_fields)

  def edges(self, name: str) -> tuple[float, ...]:
    """The bin edges of binned attribute `name` (one of BINNED_ATTRIBUTES)."""
    if name not in BINNED_ATTRIBUTES:
      raise ValueError(f"{name!r} is not a binned attribute; expected one of {BINNED_ATTRIBUTES}")
    return getattr(self, f"{name}_edges")

  def __post_init__(self):
    for name in ("density_edges", "polyphony_edges", "pitch_range_edges"):
      edges = tuple(float(x) for x in getattr(self, name))
      if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"ControlConfig: {name} must be increasing, got {edges}")
      object.__setattr__(self, name, edges)
    if not (isinstance(self.anticipation_ms, int) and self.anticipation_ms > 0):
      raise ValueError(f"ControlConfig: anticipation_ms must be a positive int, got "
                       f"{self.anticipation_ms!r}")
    for name in ("task_ids", "infill_control_ids", "control_fields"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"ControlConfig: {name} must be a bool, got {getattr(self, name)!r}")
    if self.infill_control_ids and not self.task_ids:
      raise ValueError("ControlConfig: infill_control_ids (version 4) needs task_ids "
                       "(version 3)")
    if self.control_fields and not self.infill_control_ids:
      raise ValueError("ControlConfig: control_fields (version 5) needs infill_control_ids "
                       "(version 4)")

  def to_dict(self) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ControlConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"ControlConfig.from_dict: unknown keys {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _as_int32(name: str, value) -> np.ndarray:
  arr = np.asarray(value)
  if arr.ndim != 1:
    arr = arr.reshape(-1)
  if arr.dtype == np.int32:
    return arr
  if arr.size and not np.issubdtype(arr.dtype, np.integer):
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.equal(np.mod(arr, 1), 0)):
      raise ValueError(f"Notes.{name} must hold integers, got dtype {arr.dtype}")
  if arr.size and (arr.min() < -_INT32_MAX or arr.max() > _INT32_MAX):
    raise ValueError(f"Notes.{name} values do not fit int32 (max {arr.max()})")
  return arr.astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class Notes:
  """Equal-length int32 column arrays, times in grid units.

  Valid values: onset >= 0, duration >= 1, pitch 0..127, velocity 1..127, instrument 0..128
  (128 = drums). Construction validates; it does not reorder (use `canonical()`).
  """

  onset: np.ndarray
  duration: np.ndarray
  pitch: np.ndarray
  velocity: np.ndarray
  instrument: np.ndarray

  def __post_init__(self):
    cols = {name: _as_int32(name, getattr(self, name)) for name in FIELDS}
    lengths = {name: len(col) for name, col in cols.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"Notes columns must have equal lengths, got {lengths}")
    for name, col in cols.items():
      object.__setattr__(self, name, col)
    if len(self.onset):
      bad = []
      if self.onset.min() < 0:
        bad.append(f"onset < 0 (min {self.onset.min()})")
      if self.duration.min() < 1:
        bad.append(f"duration < 1 (min {self.duration.min()})")
      if self.pitch.min() < 0 or self.pitch.max() > 127:
        bad.append(f"pitch outside 0..127 ({self.pitch.min()}..{self.pitch.max()})")
      if self.velocity.min() < 1 or self.velocity.max() > 127:
        bad.append(f"velocity outside 1..127 ({self.velocity.min()}..{self.velocity.max()})")
      if self.instrument.min() < 0 or self.instrument.max() > DRUMS:
        bad.append(f"instrument outside 0..128 ({self.instrument.min()}..{self.instrument.max()})")
      if bad:
        raise ValueError("invalid Notes: " + "; ".join(bad))

  # ------------------------------------------------------------------ constructors
  @classmethod
  def empty(cls) -> "Notes":
    z = np.zeros(0, np.int32)
    return cls(z, z, z, z, z)

  @classmethod
  def from_rows(cls, rows: Sequence[Sequence[int]]) -> "Notes":
    """From `(onset, duration, pitch, velocity, instrument)` tuples."""
    if len(rows) == 0:
      return cls.empty()
    arr = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    return cls(*arr.T)

  @classmethod
  def concatenate(cls, parts: Sequence["Notes"]) -> "Notes":
    if not parts:
      return cls.empty()
    return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS))

  # ------------------------------------------------------------------ views
  def __len__(self) -> int:
    return len(self.onset)

  def __getitem__(self, index) -> "Notes":
    if isinstance(index, (int, np.integer)):
      index = slice(index, index + 1 if index != -1 else None)
    return Notes(*(getattr(self, f)[index] for f in FIELDS))

  def __eq__(self, other) -> bool:
    if not isinstance(other, Notes):
      return NotImplemented
    return all(np.array_equal(getattr(self, f), getattr(other, f)) for f in FIELDS)

  __hash__ = None

  def __repr__(self) -> str:
    return f"Notes(n={len(self)}, end={self.end}, instruments={self.instruments().tolist()})"

  def to_rows(self) -> list[tuple[int, int, int, int, int]]:
    return list(zip(*(getattr(self, f).tolist() for f in FIELDS)))

  def columns(self) -> dict[str, np.ndarray]:
    return {f: getattr(self, f) for f in FIELDS}

  def replace(self, **cols) -> "Notes":
    d = self.columns()
    d.update(cols)
    return Notes(**d)

  @property
  def end(self) -> int:
    """Last note end in grid units (0 for no notes)."""
    if not len(self):
      return 0
    return int((self.onset.astype(np.int64) + self.duration).max())

  def instruments(self) -> np.ndarray:
    """Sorted distinct instruments."""
    return np.unique(self.instrument)

  def order(self) -> np.ndarray:
    """Indices that put the notes in canonical order."""
    return np.lexsort((self.velocity, self.duration, -self.pitch.astype(np.int64),
                       self.instrument, self.onset))

  def canonical(self) -> "Notes":
    """The same notes in canonical order (onset, instrument, pitch descending, dur, vel)."""
    if len(self) < 2 or self.is_canonical():
      return self
    return self[self.order()]

  def is_canonical(self) -> bool:
    if len(self) < 2:
      return True
    keys = (self.onset, self.instrument, -self.pitch.astype(np.int64), self.duration,
            self.velocity)
    # Lexicographic non-decreasing check, vectorised.
    undecided = np.ones(len(self) - 1, bool)
    for k in keys:
      d = np.diff(k.astype(np.int64))
      if np.any(undecided & (d < 0)):
        return False
      undecided &= d == 0
    return True


def transpose(notes: Notes, semitones: int, policy: str = "fold") -> tuple[Notes, dict[str, Any]]:
  """Shifts every pitched (non-drum) note by `semitones`; drums never move.

  Args:
    notes: the notes.
    semitones: the shift.
    policy: what to do with a note that would leave 0..127: "fold" moves it by octaves back into
      range, "drop" removes it, "clip" clamps it to 0 or 127.

  Returns:
    `(notes, report)`: the shifted notes in canonical order and a dict with `policy`,
    `out_of_range` (notes that would have left 0..127) and `dropped`.
  """
  if policy not in TRANSPOSE_POLICIES:
    raise ValueError(f"transpose policy must be one of {TRANSPOSE_POLICIES}, got {policy!r}")
  semitones = int(semitones)
  pitched = notes.instrument != DRUMS
  pitch = notes.pitch.astype(np.int64) + np.where(pitched, semitones, 0)
  out = (pitch < 0) | (pitch > 127)
  n_out = int(out.sum())
  keep = np.ones(len(notes), bool)
  if n_out:
    if policy == "fold":
      pitch = np.where(pitch < 0, pitch + 12 * ((-pitch + 11) // 12), pitch)
      pitch = np.where(pitch > 127, pitch - 12 * ((pitch - 127 + 11) // 12), pitch)
    elif policy == "clip":
      pitch = np.clip(pitch, 0, 127)
    else:
      keep = ~out
  if policy == "drop" and n_out:
    shifted = notes[keep].replace(pitch=pitch[keep])
  else:
    shifted = notes.replace(pitch=pitch)
  report = {"policy": policy, "out_of_range": n_out, "dropped": int((~keep).sum())}
  return shifted.canonical(), report


# General MIDI level 1 program names (0-based programs), used for track names and summaries.
GM_PROGRAM_NAMES = (
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet", "Celesta", "Glockenspiel",
    "Music Box", "Vibraphone", "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ", "Accordion",
    "Harmonica", "Tango Accordion", "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)",
    "Electric Guitar (jazz)", "Electric Guitar (clean)", "Electric Guitar (muted)",
    "Overdriven Guitar", "Distortion Guitar", "Guitar Harmonics", "Acoustic Bass",
    "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass", "Slap Bass 1",
    "Slap Bass 2", "Synth Bass 1", "Synth Bass 2", "Violin", "Viola", "Cello", "Contrabass",
    "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani", "String Ensemble 1",
    "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs", "Voice Oohs",
    "Synth Choir", "Orchestra Hit", "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn",
    "Brass Section", "Synth Brass 1", "Synth Brass 2", "Soprano Sax", "Alto Sax", "Tenor Sax",
    "Baritone Sax", "Oboe", "English Horn", "Bassoon", "Clarinet", "Piccolo", "Flute", "Recorder",
    "Pan Flute", "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina", "Lead 1 (square)",
    "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)", "Lead 5 (charang)",
    "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)", "Pad 1 (new age)",
    "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)", "Pad 5 (bowed)", "Pad 6 (metallic)",
    "Pad 7 (halo)", "Pad 8 (sweep)", "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)",
    "FX 4 (atmosphere)", "FX 5 (brightness)", "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock", "Taiko Drum", "Melodic Tom", "Synth Drum",
    "Reverse Cymbal", "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet",
    "Telephone Ring", "Helicopter", "Applause", "Gunshot",
)
assert len(GM_PROGRAM_NAMES) == 128


def instrument_name(instrument: int) -> str:
  """GM name of an instrument value (128 = "Drums")."""
  instrument = int(instrument)
  if instrument == DRUMS:
    return "Drums"
  if 0 <= instrument < 128:
    return GM_PROGRAM_NAMES[instrument]
  raise ValueError(f"instrument must be in 0..128, got {instrument}")
