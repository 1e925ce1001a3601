"""Token ("INTS") codec: `Notes` <-> int32 ids, with a grammar automaton for the sampler.

Ids: PAD = 0, BOS = 1, EOS = 2, WAIT = 3, then field-specific ranges (no id is shared between
fields). A song is `[BOS, group, group, ..., EOS]`; a note group is zero or more WAIT tokens
followed by the note's fields:

- layout "default" (5 tokens per note): `[time-delta, instrument, pitch, duration, velocity-bin]`;
- layout "compact" (3 tokens per note): `[time-delta, instrument x pitch, duration x velocity-bin]`.

Versions 2-5 (`ControlConfig`) append control notes, attribute and task ids; see
`encode_controlled`.

time-delta is the onset delta to the previous note (0..max_time_shift grid units); each WAIT adds
`max_time_shift + 1` units, so any gap is split exactly and nothing after it shifts. Durations over
`max_duration` are clipped (counted in the encode report). Velocity is binned (`velocity_bins`);
decoding gives each bin's representative value, and `encode(decode(ids)) == ids` for encoded ids.

`decode` never raises: ids outside a well-formed note group (unknown ids, partial groups) are
skipped and counted as malformed fragments; WAIT tokens always advance time; decoding stops at the
first EOS; PAD and BOS are ignored.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from virtuoso_jax.encoding.grammar import Grammar
from virtuoso_jax.encoding.notes import (BINNED_ATTRIBUTES, DRUMS, NUM_INSTRUMENTS, TASKS,
                                        ControlConfig, EncodingConfig, Notes)

PAD, BOS, EOS, WAIT = 0, 1, 2, 3
_INT32_MAX = np.iinfo(np.int32).max

# Token kinds (what `kinds()` returns per id).
K_INVALID, K_PAD, K_BOS, K_EOS, K_WAIT = -1, 0, 1, 2, 3
K_DT, K_INS, K_PITCH, K_DUR, K_VEL, K_INS_PITCH, K_DUR_VEL = 4, 5, 6, 7, 8, 9, 10
# Version 2 (controls): a control note's time offset, and the attribute tokens of the prefix.
K_CTIME, K_DENSITY, K_POLYPHONY, K_RANGE, K_INST_PRESENT = 11, 12, 13, 14, 15
K_TASK = 16  # Version 3: the task id that opens the prefix.
K_ICTIME = 17  # Version 4: the time offset of a control note after an infilled span.
CONTROL_TIME_KINDS = (K_CTIME, K_ICTIME)  # Either opens a control group.
# Version 5: a control note's fields in their own ranges, one kind per event field kind.
K_CINS, K_CPITCH, K_CDUR, K_CVEL, K_CINS_PITCH, K_CDUR_VEL = 18, 19, 20, 21, 22, 23
_CONTROL_KIND = {K_INS: K_CINS, K_PITCH: K_CPITCH, K_DUR: K_CDUR, K_VEL: K_CVEL,
                 K_INS_PITCH: K_CINS_PITCH, K_DUR_VEL: K_CDUR_VEL}
CONTROL_KINDS = CONTROL_TIME_KINDS + tuple(_CONTROL_KIND.values())  # Forced, never generated.
# The prefix's attributes in their fixed order; version 2 has all but "task".
ATTRIBUTES = ("task",) + BINNED_ATTRIBUTES + ("instrument_present",)
_ATTR_KIND = {"task": K_TASK, "density": K_DENSITY, "polyphony": K_POLYPHONY,
              "pitch_range": K_RANGE, "instrument_present": K_INST_PRESENT}
PREFIX_KINDS = tuple(_ATTR_KIND.values())  # Ids that are inputs only: never a training target.


def velocity_bin_tables(bins: int) -> tuple[np.ndarray, np.ndarray]:
  """(to_bin[0..127], representative[0..bins-1]); velocity 1..127 in `bins` equal bins, the
  representative is the bin's middle value, so `to_bin[representative[b]] == b`."""
  v = np.arange(128)
  to_bin = np.clip(((np.maximum(v, 1) - 1) * bins) // 127, 0, bins - 1)
  rep = np.zeros(bins, np.int64)
  for b in range(bins):
    members = v[1:][to_bin[1:] == b]
    rep[b] = members[(len(members) - 1) // 2]
  return to_bin.astype(np.int64), rep


class TokenCodec:
  """Notes <-> token ids (see the module docstring for the format)."""

  pad_id = PAD
  bos_id = BOS
  eos_id = EOS
  wait_id = WAIT

  def __init__(self, config: EncodingConfig = EncodingConfig(),
               controls: ControlConfig | None = None):
    self.config = config
    self.controls = controls
    self.layout = config.token_layout
    self.max_time_shift = config.max_time_shift
    self.wait_units = config.max_time_shift + 1
    self.max_duration = config.max_duration
    self.velocity_bins = config.velocity_bins
    self._vel_to_bin, self._bin_rep = velocity_bin_tables(config.velocity_bins)
    ranges = {"special": (0, 4)}
    start = 4

    def _add(name, size):
      nonlocal start
      ranges[name] = (start, start + size)
      start += size

    _add("time", self.wait_units)
    if self.layout == "default":
      _add("instrument", NUM_INSTRUMENTS)
      _add("pitch", 128)
      _add("duration", self.max_duration)
      _add("velocity", self.velocity_bins)
      self._pattern = (K_DT, K_INS, K_PITCH, K_DUR, K_VEL)
      fields = ("instrument", "pitch", "duration", "velocity")
      kind_of = {"time": K_DT, "instrument": K_INS, "pitch": K_PITCH, "duration": K_DUR,
                 "velocity": K_VEL}
    else:
      _add("instrument_pitch", NUM_INSTRUMENTS * 128)
      _add("duration_velocity", self.max_duration * self.velocity_bins)
      self._pattern = (K_DT, K_INS_PITCH, K_DUR_VEL)
      fields = ("instrument_pitch", "duration_velocity")
      kind_of = {"time": K_DT, "instrument_pitch": K_INS_PITCH, "duration_velocity": K_DUR_VEL}
    if controls is not None:  # Version 2: appended, so every version-1 id keeps its meaning.
      self.anticipation = controls.anticipation_ms // config.grid_ms
      if (controls.anticipation_ms % config.grid_ms or
          not 1 <= self.anticipation <= config.max_time_shift):
        raise ValueError(f"ControlConfig.anticipation_ms={controls.anticipation_ms} must be a "
                         f"multiple of grid_ms={config.grid_ms} and at most max_time_shift="
                         f"{config.max_time_shift} units")
      # A control enters at the last event-time position <= its onset - anticipation; positions
      # are at most wait_units apart, so its offset from there is < anticipation + wait_units.
      _add("control_time", self.anticipation + self.wait_units)
      for name in BINNED_ATTRIBUTES:
        _add(name, len(controls.edges(name)) + 1)
      _add("instrument_present", NUM_INSTRUMENTS)
      kind_of.update(control_time=K_CTIME, density=K_DENSITY, polyphony=K_POLYPHONY,
                     pitch_range=K_RANGE, instrument_present=K_INST_PRESENT)
      if controls.task_ids:  # Version 3: appended after version 2's ids.
        _add("task", len(TASKS))
        kind_of.update(task=K_TASK)
      if controls.infill_control_ids:  # Version 4: appended after version 3's ids.
        _add("infill_control_time", self.anticipation + self.wait_units)
        kind_of.update(infill_control_time=K_ICTIME)
      if controls.control_fields:  # Version 5: appended after version 4's ids.
        for name in fields:
          _add("control_" + name, ranges[name][1] - ranges[name][0])
          kind_of["control_" + name] = _CONTROL_KIND[kind_of[name]]
    self._ranges = ranges
    self.vocab_size = start
    # A control note's fields after its control-time id: the event fields' kinds, or on version
    # 5 their control twins, whose ids are the event ids plus `_control_shift` (per field).
    v5 = controls is not None and controls.control_fields
    self._control_pattern = tuple(_CONTROL_KIND[k] if v5 else k for k in self._pattern[1:])
    self._control_shift = np.asarray(
        [ranges["control_" + n][0] - ranges[n][0] if v5 else 0 for n in fields], np.int64)
    kinds = np.full(self.vocab_size, K_INVALID, np.int64)
    kinds[[PAD, BOS, EOS, WAIT]] = [K_PAD, K_BOS, K_EOS, K_WAIT]
    for name, kind in kind_of.items():
      lo, hi = ranges[name]
      kinds[lo:hi] = kind
    self._kinds = kinds
    self._grammar = None

  # ------------------------------------------------------------------ properties
  @property
  def tokens_per_note(self) -> int:
    return len(self._pattern)

  @property
  def version(self) -> int:
    """1: notes only; 2: also control notes and attribute tokens (`controls`); 3: also the
    task id (`controls.task_ids`); 4: also an infill's own control-time ids
    (`controls.infill_control_ids`); 5: also a control note's own field ids
    (`controls.control_fields`)."""
    if self.controls is None:
      return 1
    if self.controls.control_fields:
      return 5
    if self.controls.infill_control_ids:
      return 4
    return 3 if self.controls.task_ids else 2

  @property
  def prefix_attributes(self) -> tuple[str, ...]:
    """The attributes this codec's prefix can state, in their order."""
    if self.controls is None:
      return ()
    return ATTRIBUTES if self.controls.task_ids else ATTRIBUTES[1:]

  def task_attribute(self, task: str) -> dict[str, str]:
    """The prefix entry that states `task` (one of TASKS): {"task": task} on version 3, {} on
    version 2 (which has no task id; its models learnt every task without one)."""
    if task not in TASKS:
      raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return {"task": task} if self.version >= 3 else {}

  def field_ranges(self) -> dict[str, tuple[int, int]]:
    """Field name -> [start, stop) id range."""
    return dict(self._ranges)

  def kinds(self, ids) -> np.ndarray:
    """Token kind of each id (K_* constants; K_INVALID for ids outside the vocabulary)."""
    ids = np.asarray(ids, np.int64)
    ok = (ids >= 0) & (ids < self.vocab_size)
    return np.where(ok, self._kinds[np.where(ok, ids, 0)], K_INVALID)

  def quantize(self, notes: Notes) -> Notes:
    """What survives a round trip: durations clipped to max_duration, velocities binned."""
    return notes.replace(duration=np.minimum(notes.duration, self.max_duration),
                         velocity=self._bin_rep[self._vel_to_bin[notes.velocity]]).canonical()

  # ------------------------------------------------------------------ encode
  def encode(self, notes: Notes, *, add_bos: bool = True, add_eos: bool = True,
             return_report: bool = False):
    """Notes -> int32 ids `[BOS, ..., EOS]` (canonical order is applied first).

    With `return_report=True` returns `(ids, report)`; report counts `duration_clipped` and
    `wait_tokens`.
    """
    notes = notes.canonical()
    n = len(notes)
    onset = notes.onset.astype(np.int64)
    delta = np.diff(onset, prepend=0)
    n_wait = delta // self.wait_units
    dt = delta - n_wait * self.wait_units
    fields = np.concatenate([(self._ranges["time"][0] + dt)[:, None], self._note_fields(notes)],
                            axis=1)
    t = self.tokens_per_note
    head = 1 if add_bos else 0
    size = n_wait + t
    starts = head + np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    total = head + int(size.sum()) + (1 if add_eos else 0)
    out = np.full(total, WAIT, np.int32)
    if add_bos:
      out[0] = BOS
    if add_eos:
      out[-1] = EOS
    if n:
      out[(starts + n_wait)[:, None] + np.arange(t)] = fields
    if return_report:
      return out, {"notes": n, "duration_clipped": int((notes.duration > self.max_duration).sum()),
                   "wait_tokens": int(n_wait.sum())}
    return out

  def _note_fields(self, notes: Notes, control: bool = False) -> np.ndarray:
    """int64 [n, tokens_per_note - 1]: the ids after the time id of each note's group (a
    control group's with `control`: version 5 writes them in the control fields)."""
    dur = np.minimum(notes.duration.astype(np.int64), self.max_duration)
    vbin = self._vel_to_bin[notes.velocity]
    r = self._ranges
    if self.layout == "default":
      cols = [r["instrument"][0] + notes.instrument, r["pitch"][0] + notes.pitch,
              r["duration"][0] + dur - 1, r["velocity"][0] + vbin]
    else:
      cols = [r["instrument_pitch"][0] + notes.instrument.astype(np.int64) * 128 + notes.pitch,
              r["duration_velocity"][0] + (dur - 1) * self.velocity_bins + vbin]
    out = np.stack([np.asarray(c, np.int64).reshape(-1) for c in cols], axis=1)
    return out + self._control_shift if control else out

  def _fields_to_notes(self, ids: np.ndarray, starts: np.ndarray, onset: np.ndarray,
                       control: bool = False):
    """(onset, duration, pitch, velocity, instrument) int64 columns of the groups at `starts`
    (their time id already turned into `onset`; `control`: control groups, `_note_fields`)."""
    f = ids[starts[:, None] + np.arange(1, self.tokens_per_note)]
    if control:
      f = f - self._control_shift
    r = self._ranges
    if self.layout == "default":
      inst = f[:, 0] - r["instrument"][0]
      pitch = f[:, 1] - r["pitch"][0]
      dur = f[:, 2] - r["duration"][0] + 1
      vbin = f[:, 3] - r["velocity"][0]
    else:
      ip = f[:, 0] - r["instrument_pitch"][0]
      inst, pitch = ip // 128, ip % 128
      dv = f[:, 1] - r["duration_velocity"][0]
      dur, vbin = dv // self.velocity_bins + 1, dv % self.velocity_bins
    return onset, dur, pitch, self._bin_rep[vbin], inst

  # ------------------------------------------------------------------ version 2: controls
  def _need_controls(self, what: str) -> ControlConfig:
    if self.controls is None:
      raise ValueError(f"{what} needs a version-2 token codec (TokenCodec(config, controls=...)); "
                       "this one is version 1")
    return self.controls

  def attribute_values(self, notes: Notes) -> dict[str, Any]:
    """The attributes of `notes` as numbers, computed from the notes themselves: note density
    (notes per second of their span), polyphony (mean notes sounding at each onset), pitch range
    (semitones, drums excluded) and the instruments present."""
    notes = notes.canonical()
    if not len(notes):
      return {"density": 0.0, "polyphony": 0.0, "pitch_range": 0, "instrument_present": []}
    onset = notes.onset.astype(np.int64)
    end = onset + notes.duration
    seconds = max(int(end.max() - onset.min()), 1) * self.config.grid_ms / 1000.0
    starts_at = np.unique(onset)
    sounding = (np.searchsorted(onset, starts_at, side="right")
                - np.searchsorted(np.sort(end), starts_at, side="right"))
    pitched = notes.pitch[notes.instrument != DRUMS]
    return {"density": len(notes) / seconds, "polyphony": float(sounding.mean()),
            "pitch_range": int(pitched.max() - pitched.min()) if len(pitched) else 0,
            "instrument_present": sorted(int(i) for i in np.unique(notes.instrument))}

  def attributes(self, notes: Notes) -> dict[str, Any]:
    """The attribute bins of `notes` (`attribute_values` placed in this codec's bin edges)."""
    c = self._need_controls("attributes")
    v = self.attribute_values(notes)
    if not len(notes):
      return {"density": 0, "polyphony": 0, "pitch_range": 0, "instrument_present": []}
    return {**{name: int(np.searchsorted(c.edges(name), v[name], "right"))
               for name in BINNED_ATTRIBUTES},
            "instrument_present": v["instrument_present"]}

  def attribute_ids(self, attributes: dict[str, Any]) -> np.ndarray:
    """The prefix ids of `attributes` (bins as `attributes()` gives them, "task" a name of
    TASKS; a key left out or None is not stated), in the fixed order of ATTRIBUTES."""
    self._need_controls("attribute_ids")
    known = self.prefix_attributes
    unknown = sorted(set(attributes) - set(known))
    if unknown:
      raise ValueError(f"unknown attributes {unknown} for a version-{self.version} token codec; "
                       f"expected some of {known}")
    out = []
    for name in known:
      value = attributes.get(name)
      if value is None:
        continue
      lo, hi = self._ranges[name]
      if name == "task":
        if value not in TASKS:
          raise ValueError(f"task {value!r} is not one of {TASKS}")
        values = [TASKS.index(value)]
      elif name == "instrument_present":
        values = sorted(set(int(v) for v in value))
      else:
        values = [int(value)]
      for v in values:
        if not 0 <= v < hi - lo:
          raise ValueError(f"attribute {name}={v} is outside 0..{hi - lo - 1}")
        out.append(lo + v)
    return np.asarray(out, np.int64)

  def control_time_field(self, infill: bool = False) -> str:
    """The id range that opens a control group: "control_time", or for the notes after an
    infilled span (`infill`) on version 4 "infill_control_time"."""
    self._need_controls("control_time_field")
    return "infill_control_time" if infill and self.version >= 4 else "control_time"

  def encode_controlled(self, events: Notes, controls: Notes | None = None,
                        attributes: dict[str, Any] | None = None, *, add_bos: bool = True,
                        add_eos: bool = True, trailing_controls: bool = True,
                        infill: bool = False, close: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Events (the notes to predict) with control notes (given notes, e.g. the parts around an
    infilled span or under an accompaniment) interleaved `anticipation` units before they
    sound, after an optional attribute prefix: `[BOS, attributes..., groups..., EOS]`.

    A control group is `[control-time, fields...]` (version 5: the control fields): its onset
    is the current event time plus the control-time value. It enters at the last event-time
    position (start, after a WAIT, after an event) not later than its onset minus the
    anticipation. Returns (int32 ids,
    bool is_control per id): training masks the control ids out of the loss; sampling forces
    them. `decode` gives back events and controls together (`decode_parts`: apart).
    `trailing_controls=False` stops after the last event (a prompt: the controls not yet
    entered, the last ones in canonical order, are the sampler's to force). `infill`: the
    controls are the music after an infilled span (version 4 opens them with its own ids,
    `control_time_field`). `close` (with `trailing_controls`): a WAIT always follows the last
    event (after the controls due by then), even with no control left to enter: a training
    infill example's events stop before the kept music resumes, and this WAIT is the target
    that says so. Without it no target ever follows an infill's last event, so every event the
    model sees beside an infill's right context is followed by another one before the controls
    resume, and a sampled span crams notes in before the kept music.
    """
    self._need_controls("encode_controlled")
    ev = events.canonical()
    ct = controls.canonical() if controls is not None and len(controls) else None
    w, a = self.wait_units, self.anticipation
    t_lo, c_lo = self._ranges["time"][0], self._ranges[self.control_time_field(infill)][0]
    ev_fields = self._note_fields(ev)
    out: list[int] = [BOS] if add_bos else []
    if attributes:
      out.extend(self.attribute_ids(attributes).tolist())
    is_ctl: list[bool] = [False] * len(out)
    pending = 0
    ct_onset = ct.onset.astype(np.int64) if ct is not None else np.zeros(0, np.int64)
    ct_fields = self._note_fields(ct, control=True) if ct is not None else None

    def flush(now: int, next_position: float) -> None:
      """Controls that must not wait past the next position enter here."""
      nonlocal pending
      while pending < len(ct_onset) and ct_onset[pending] < next_position + a:
        out.append(c_lo + int(ct_onset[pending]) - now)
        out.extend(ct_fields[pending].tolist())
        is_ctl.extend([True] * (1 + ct_fields.shape[1]))
        pending += 1

    now = 0
    for i in range(len(ev)):
      t = int(ev.onset[i])
      while t - now >= w:  # WAITs: each a position where controls may enter.
        flush(now, now + w)
        out.append(WAIT)
        is_ctl.append(False)
        now += w
      flush(now, t)
      out.append(t_lo + t - now)
      out.extend(ev_fields[i].tolist())
      is_ctl.extend([False] * (1 + ev_fields.shape[1]))
      now = t
    closing = close and len(ev) > 0
    while trailing_controls and (pending < len(ct_onset) or closing):  # After the last event.
      flush(now, now + w)
      if pending < len(ct_onset) or closing:
        out.append(WAIT)
        is_ctl.append(False)
        now += w
        closing = False
    if add_eos:
      out.append(EOS)
      is_ctl.append(False)
    return np.asarray(out, np.int32), np.asarray(is_ctl, bool)

  def control_arrays(self, controls: Notes, start_time: int, *, infill: bool = False,
                     resume: Notes | None = None) -> dict[str, Any]:
    """What the sampler needs to force `controls` (sampling.Controls' fields): onsets relative
    to `start_time` (the stream time where generation starts), the field ids, the grammar
    states a control may start in, the control-time ids (`infill`: as `encode_controlled`)
    and the anticipation.

    `resume`: the kept music after an infilled span. Each generated note must then end where
    its voice's kept music resumes (`release`, per instrument and pitch): the first onset in it
    of the same instrument within `RELEASE_SEMITONES` of its pitch, else the instrument's first
    onset there (no bound for an instrument absent from it). So the span hands over to the kept
    part as a bar-infilling model closes its notes at the bar line, and its last notes do not
    sound on under the kept music's first ones (the end-seam pile-up); but a voice held over
    the seam is not cut where another voice of its instrument moves (one instrument carries
    all four voices of a chorale, a piano's every line), which thinned the music after the
    seam. `instrument_of` / `pitch_of` / `duration_of` tell the sampler which ids name a
    note's instrument and pitch and its duration (`event_field_tables`) and how to shorten one
    (`duration_step`)."""
    self._need_controls("control_arrays")
    controls = controls.canonical()
    lo, hi = self._ranges[self.control_time_field(infill)]
    out = {"onset": (controls.onset.astype(np.int64) - int(start_time)).astype(np.int32),
           "fields": self._note_fields(controls, control=True).astype(np.int32),
           "entry_states": self.grammar().allowed[:, lo].copy(), "time_lo": lo,
           "time_size": hi - lo, "anticipation": self.anticipation}
    if resume is not None and len(resume):
      out["release"] = release_table(resume, int(start_time)).reshape(-1)
      out["instrument_of"], out["pitch_of"], out["duration_of"] = self.event_field_tables()
      out["duration_step"] = self.duration_step
    return out

  @property
  def duration_step(self) -> int:
    """Ids between a duration-carrying id and the one a grid unit shorter that carries the same
    other fields (the velocity, in the compact layout's duration_velocity ids)."""
    return 1 if self.layout == "default" else self.velocity_bins

  def event_field_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(instrument int32[V]: the instrument an event id names, -1 for ids that name none;
    pitch int32[V]: the pitch an event id names, -1 for none; duration int32[V]: the duration
    in grid units an event id carries, 0 for ids that carry none). Control notes' ids
    (version 5) are not events: -1 and 0."""
    r = self._ranges
    instrument = np.full(self.vocab_size, -1, np.int32)
    pitch = np.full(self.vocab_size, -1, np.int32)
    duration = np.zeros(self.vocab_size, np.int32)
    if self.layout == "default":
      lo, hi = r["instrument"]
      instrument[lo:hi] = np.arange(hi - lo)
      lo, hi = r["pitch"]
      pitch[lo:hi] = np.arange(hi - lo)
      lo, hi = r["duration"]
      duration[lo:hi] = np.arange(hi - lo) + 1
    else:
      lo, hi = r["instrument_pitch"]
      instrument[lo:hi] = np.arange(hi - lo) // 128
      pitch[lo:hi] = np.arange(hi - lo) % 128
      lo, hi = r["duration_velocity"]
      duration[lo:hi] = np.arange(hi - lo) // self.velocity_bins + 1
    return instrument, pitch, duration

  def generation_mask(self) -> np.ndarray:
    """bool[V]: ids the model may generate itself (version 2: never a control-time id, version
    5 nor a control field; those are forced)."""
    return ~np.isin(self._kinds, CONTROL_KINDS)

  def inputs_only(self, ids, is_control) -> np.ndarray:
    """bool per id of an `encode_controlled` sequence: the ids that are given, never predicted
    (its control notes, `is_control`, and the attribute/task prefix)."""
    return np.asarray(is_control, bool) | np.isin(self.kinds(ids), PREFIX_KINDS)

  def decode_parts(self, ids) -> tuple[Notes, Notes]:
    """(events, controls) of a version-2+ sequence, each canonical."""
    self._need_controls("decode_parts")
    return self._decode(ids, parts=True)

  # ------------------------------------------------------------------ decode
  def _groups(self, ids: np.ndarray, control: bool = False):
    """(kinds, valid group starts) for a PAD/BOS-free id array: note groups, or with `control`
    control groups (a control-time id, then the control fields)."""
    k = self.kinds(ids)
    t = self.tokens_per_note
    L = len(k)
    padded = np.concatenate([k, np.full(t, K_INVALID)])
    valid = np.isin(k, CONTROL_TIME_KINDS if control else (K_DT,))
    for j, kind in enumerate(self._control_pattern if control else self._pattern[1:], start=1):
      valid &= padded[j:j + L] == kind
    return k, np.flatnonzero(valid)

  def decode(self, ids, *, return_report: bool = False):
    """Ids -> canonical Notes. Never raises on any sequence (ids that are not integers in the
    vocabulary, e.g. negative, huge, NaN or not numbers, are skipped like other bad fragments;
    a note whose onset plus duration passes 2^31 - 1 units, e.g. after 2^23 WAITs, is dropped and
    counted in `out_of_range_notes`). Time and memory are linear in `len(ids)`. Version 2:
    attribute ids are skipped and control notes are decoded with the events.

    With `return_report=True` returns `(notes, report)`, report = {"notes", "skipped_fragments"
    (maximal runs of ids outside well-formed note groups), "skipped_ids", "after_eos" (non-PAD ids
    after the first EOS), "out_of_range_notes" (notes whose time overflowed)}.
    """
    return self._decode(ids, return_report=return_report)

  def _decode(self, ids, *, return_report: bool = False, parts: bool = False):
    try:
      ids = np.asarray(ids).reshape(-1)
    except (TypeError, ValueError):  # Ragged nesting: each element on its own.
      ids = np.array(list(ids) + [None], dtype=object)[:-1]
    if ids.dtype.kind not in "iu":
      try:
        as_float = ids.astype(np.float64)
      except (TypeError, ValueError, OverflowError):  # Strings, objects: each on its own.
        as_float = np.array([_as_number(x) for x in ids.tolist()], np.float64)
      ids = np.clip(np.nan_to_num(as_float), -1, self.vocab_size).astype(np.int64)
    ids = ids.astype(np.int64, copy=False)
    eos = np.flatnonzero(ids == EOS)
    after_eos = 0
    if len(eos):
      tail = ids[eos[0] + 1:]
      after_eos = int((tail != PAD).sum())
      ids = ids[:eos[0]]
    ids = ids[(ids != PAD) & (ids != BOS)]
    ctl_starts = np.zeros(0, np.int64)
    if self.controls is not None:
      k = self.kinds(ids)
      ids = ids[~np.isin(k, PREFIX_KINDS)]
      k, ctl_starts = self._groups(ids, control=True)
      ctl = np.zeros(len(ids), bool)
      if len(ctl_starts):
        ctl[(ctl_starts[:, None] + np.arange(self.tokens_per_note)).reshape(-1)] = True
      ctl_ids = ids
      keep_before = np.cumsum(~ctl) - (~ctl)  # Event ids before each position.
      ids = ids[~ctl]
    k, starts = self._groups(ids)
    t = self.tokens_per_note
    covered = np.zeros(len(ids), bool)
    if len(starts):
      covered[(starts[:, None] + np.arange(t)).reshape(-1)] = True
    is_wait = k == K_WAIT
    bad = ~covered & ~is_wait
    fragments = int((bad & ~np.concatenate([[False], bad[:-1]])).sum())
    inc = np.where(is_wait, self.wait_units, 0).astype(np.int64)
    inc[starts] = ids[starts] - self._ranges["time"][0]
    cum = np.cumsum(inc)
    onset = cum[starts] if len(starts) else np.zeros(0, np.int64)
    cols = self._fields_to_notes(ids, starts, onset)
    ctl_cols = None
    if len(ctl_starts):
      # Event time at each control: the time advanced by the event ids before it.
      now = np.concatenate([[0], cum])[keep_before[ctl_starts]]
      ctl_time = ctl_ids[ctl_starts]
      ctl_onset = now + ctl_time - self._range_start_of(ctl_time)
      ctl_cols = self._fields_to_notes(ctl_ids, ctl_starts, ctl_onset, control=True)
    if ctl_cols is not None and not parts:
      cols = tuple(np.concatenate([x, y]) for x, y in zip(cols, ctl_cols))

    def to_notes(c):
      o, dur, pitch, vel, inst = c
      fits = o + dur <= _INT32_MAX
      return Notes(o[fits], dur[fits], pitch[fits], vel[fits], inst[fits]).canonical(), fits

    notes, fits = to_notes(cols)
    if parts:
      empty = tuple(np.zeros(0, np.int64) for _ in range(5))
      return notes, to_notes(ctl_cols if ctl_cols is not None else empty)[0]
    if return_report:
      return notes, {"notes": len(notes), "skipped_fragments": fragments,
                     "skipped_ids": int(bad.sum()), "after_eos": after_eos,
                     "out_of_range_notes": int((~fits).sum())}
    return notes

  # ------------------------------------------------------------------ grammar and helpers
  def grammar(self) -> Grammar:
    """The automaton every encoded song follows (see `Grammar`). States: 0 = between groups
    (start, boundary), 1 = after WAIT, 2 .. T = after field 0 .. T-2, T+1 = after EOS.

    Version 2 adds: the attribute prefix after BOS (density, polyphony, pitch range, then any
    instruments present, each optional, version 3 the task before them; the start state), and
    control groups from states 0 and 1 (opened by either control-time range, version 4's
    infill one too, then the note fields, version 5's control fields), which return to the
    state they left (a control never advances time or ends a note); EOS is also legal after a
    WAIT (controls may follow the last event).
    """
    if self._grammar is not None:
      return self._grammar
    t = self.tokens_per_note
    boundary, after_wait, end = 0, 1, t + 1
    s = t + 2
    v2 = self.controls is not None
    if v2:  # Control chains (from 0, from 1): t - 1 states each; a prefix state per attribute.
      order = [_ATTR_KIND[name] for name in self.prefix_attributes]
      ctl0, ctl1, prefix = s, s + (t - 1), s + 2 * (t - 1)
      s = prefix + len(order)
    allowed = np.zeros((s, self.vocab_size), bool)
    nxt = np.full((s, self.vocab_size), end, np.int32)
    kinds = self._kinds

    def allow(state, kind, to):
      m = kinds == kind
      allowed[state, m] = True
      nxt[state, m] = to

    body_states = [boundary, after_wait] + ([prefix + i for i in range(len(order))] if v2 else [])
    for st in body_states:
      allow(st, K_WAIT, after_wait)
      allow(st, K_DT, 2)
    allow(boundary, K_EOS, end)
    for j in range(1, t):
      allow(1 + j, self._pattern[j], boundary if j == t - 1 else 2 + j)
    allow(end, K_PAD, end)
    event_states = np.arange(2, t + 1)
    if v2:
      allow(after_wait, K_EOS, end)
      for origin, chain in ((boundary, ctl0), (after_wait, ctl1)):
        for kind in CONTROL_TIME_KINDS:
          allow(origin, kind, chain)
        for j in range(1, t):
          allow(chain + j - 1, self._control_pattern[j - 1], origin if j == t - 1 else chain + j)
      # Prefix state i: the attributes from the i-th on may still come, in their order
      # ((task ->) density -> polyphony -> pitch range -> instruments present); the last repeats.
      last = len(order) - 1
      for i in range(len(order)):
        st = prefix + i
        allow(st, K_EOS, end)
        for kind in CONTROL_TIME_KINDS:
          allow(st, kind, ctl0)
        for later in range(i, len(order)):
          allow(st, order[later], prefix + min(later + 1, last))
      # Instruments present ascending is the encoder's order; any order is legal.
    # A note ends where an event field leads back to the boundary.
    completes = allowed & (nxt == boundary) & np.isin(np.arange(s), event_states)[:, None]
    lo = self.field_ranges()["time"][0]
    per_id = np.where(kinds == K_DT, np.arange(self.vocab_size) - lo, 0)
    per_id = np.where(kinds == K_WAIT, self.wait_units, per_id)
    advance = np.where(allowed, per_id[None, :], 0).astype(np.int32)
    start = prefix if v2 else boundary
    self._grammar = Grammar(allowed, nxt, completes, advance, start, boundary, EOS, PAD,
                            end_state=end, bos_id=BOS)
    return self._grammar

  def instrument_mask(self, instruments: Sequence[int]) -> np.ndarray:
    """bool[V]: ids allowed when generation is restricted to `instruments` (0..128); ids of
    other fields are all allowed."""
    inst = np.asarray(list(instruments), np.int64).reshape(-1)
    if inst.size == 0 or inst.min() < 0 or inst.max() > DRUMS:
      raise ValueError(f"instruments must be a non-empty list of values in 0..128, got "
                       f"{inst.tolist()}")
    mask = np.ones(self.vocab_size, bool)
    if self.layout == "default":
      lo, hi = self._ranges["instrument"]
      mask[lo:hi] = False
      mask[lo + inst] = True
    else:
      lo, hi = self._ranges["instrument_pitch"]
      mask[lo:hi] = False
      mask[(lo + inst[:, None] * 128 + np.arange(128)).reshape(-1)] = True
    return mask

  def _pitch_positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions of pitch-carrying ids of non-drum notes, their pitches), control notes' too."""
    default = self.layout == "default"
    pitch_field = "pitch" if default else "instrument_pitch"
    pos, pitch = [], []
    for prefix in ("", "control_"):
      if prefix + pitch_field not in self._ranges:  # Control fields: version 5 only.
        continue
      lo, hi = self._ranges[prefix + pitch_field]
      at = np.flatnonzero((ids >= lo) & (ids < hi))
      if default:  # A drum's "pitch" is its instrument, which the id before it names.
        drum = (at > 0) & (ids[np.maximum(at - 1, 0)] == self._ranges[prefix + "instrument"][0]
                           + DRUMS)
      else:
        drum = (ids[at] - lo) // 128 == DRUMS
      pos.append(at[~drum])
      pitch.append((ids[at[~drum]] - lo) % 128)
    pos, pitch = np.concatenate(pos), np.concatenate(pitch)
    order = np.argsort(pos, kind="stable")
    return pos[order], pitch[order]

  def pitch_shift_range(self, ids) -> tuple[int, int]:
    """(lo, hi): the shifts that keep every pitched note of `ids` in 0..127 ((-127, 127) if
    there is none). A pitch id whose instrument id is not in `ids` (a window cut mid-note)
    counts as pitched."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    _, pitch = self._pitch_positions(ids)
    if not len(pitch):
      return -127, 127
    return -int(pitch.min()), 127 - int(pitch.max())

  def transpose_ids(self, ids, semitones: int) -> np.ndarray:
    """Shifts the pitch of every non-drum note in `ids` by `semitones` (same dtype back).

    Equals `encode(transpose(decode(ids), semitones)[0])` for well-formed songs. Raises
    ValueError if the shift is outside `pitch_shift_range(ids)`.
    """
    arr = np.asarray(ids)
    ids64 = arr.astype(np.int64).reshape(-1)
    pos, pitch = self._pitch_positions(ids64)
    semitones = int(semitones)
    if len(pitch) and (pitch.min() + semitones < 0 or pitch.max() + semitones > 127):
      lo, hi = self.pitch_shift_range(ids64)
      raise ValueError(f"transpose_ids: shift {semitones} moves a note outside 0..127 "
                       f"(allowed shifts {lo}..{hi})")
    out = ids64.copy()
    out[pos] += semitones
    return out.astype(arr.dtype if arr.dtype.kind in "iu" else np.int32).reshape(arr.shape)

  def note_boundaries(self, ids) -> np.ndarray:
    """Positions where a note group starts (its first WAIT, else its time-delta id): cutting
    `ids` there never splits a note."""
    k = self.kinds(np.asarray(ids, np.int64).reshape(-1))
    starts = (k == K_WAIT) | (k == K_DT)
    prev_wait = np.concatenate([[False], k[:-1] == K_WAIT])
    return np.flatnonzero(starts & ~prev_wait)

  def time_advance(self, ids) -> np.ndarray:
    """int64[len(ids)]: grid units each id moves the clock (a time-delta id its delta, WAIT
    `max_time_shift + 1`, others 0). For an encoded song, the cumulative sum at a note's
    time-delta id is that note's onset."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    k = self.kinds(ids)
    return np.where(k == K_DT, ids - self._ranges["time"][0],
                    np.where(k == K_WAIT, self.wait_units, 0)).astype(np.int64)

  def _range_start_of(self, ids: np.ndarray) -> np.ndarray:
    """The first id of the range each id is in (ids in the vocabulary)."""
    starts = np.asarray(sorted(lo for lo, _ in self._ranges.values()), np.int64)
    return starts[np.searchsorted(starts, ids, side="right") - 1]

  def describe(self) -> dict[str, Any]:
    return {"layout": self.layout, "vocab_size": self.vocab_size,
            "tokens_per_note": self.tokens_per_note, "ranges": self.field_ranges()}


# How near in pitch a kept note must be to end a held note of its instrument: a voice moves by
# step or a third far more often than by a wider leap (4 semitones: a major third).
RELEASE_SEMITONES = 4


def release_table(resume: Notes, start_time: int) -> np.ndarray:
  """int32 [NUM_INSTRUMENTS, 128]: per instrument and pitch, when (from `start_time`) a note
  held into `resume` (the kept music after an infilled span) must end: the first onset in
  `resume` of the same instrument within RELEASE_SEMITONES of the pitch, else the
  instrument's first onset there; the int32 maximum for an instrument absent from it."""
  out = np.full((NUM_INSTRUMENTS, 128), np.iinfo(np.int32).max, np.int64)
  ins = np.asarray(resume.instrument, np.int64)
  onset = np.asarray(resume.onset, np.int64) - int(start_time)
  pitch = np.asarray(resume.pitch, np.int64)
  pitches = np.arange(128)
  for i in np.unique(ins):
    mine = ins == i
    near = np.abs(pitch[mine][None, :] - pitches[:, None]) <= RELEASE_SEMITONES  # [128, n]
    first = onset[mine].min()
    out[i] = np.where(near.any(axis=1),
                      np.where(near, onset[mine][None, :], np.iinfo(np.int64).max).min(axis=1),
                      first)
  return out.astype(np.int32)


def _as_number(x) -> float:
  """float(x), or -1.0 (an invalid id) when x is not a number."""
  try:
    return float(x)
  except (TypeError, ValueError, OverflowError):
    return -1.0
