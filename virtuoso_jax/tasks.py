"""Training examples beyond continuation, derived on the fly from a song window (numpy only).

A window of a song's version-1 ids is decoded to notes and, at the rates of config.data, turned
into one of:
  infill      a span ending at e, late in the window: the notes starting in the few seconds
              after e that a sampler can force before the span ends become control notes
              (given, anticipated), the notes before e are events (predicted), later notes
              are left out; a WAIT after the last event closes the span (the target that
              says the events stop before the kept music resumes);
  accompany   a random proper subset of the window's instruments, or its melody (the top line,
              `melody`), becomes control notes over the whole window, the rest are events;
  (plain)     continuation, unchanged;
and, independently, gets an attribute prefix computed from its events (each attribute stated or
left out at random, so generation works with any subset); a version-3 codec's prefix also always
states the task (infill, accompany_melody, accompany_parts), as the sampler does, and a
version-4+ codec opens an infill's control notes with its own control-time ids (version 5
writes every control note in its own field ids). The example is
re-encoded with the version-2+ codec (`TokenCodec.encode_controlled`); control, attribute and
task ids are inputs only (`TokenCodec.inputs_only`): the mask leaves them out of the loss.
With `lookahead` (config.data.lookahead_targets), the id before a run of control groups
predicts the first id after the run (`targets`): the sampler draws there, and forces the
controls only when its draw carries time past their entry (`lookahead_entries`: at every run,
only where that id is an infill's closing WAIT, or only before a run's first group).
Every choice is a pure function of (seed, sample number), so a resumed run sees the same
examples.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from virtuoso_jax.encoding import DRUMS
from virtuoso_jax.encoding import token_codec as tc


@dataclasses.dataclass(frozen=True)
class TaskRates:
  """Shares of training windows turned into each task (config.data.*_rate)."""
  infill: float = 0.0
  accompany: float = 0.0
  attributes: float = 0.0
  lookahead: bool = False  # config.data.lookahead_targets (`lookahead_targets`).
  # config.data.lookahead_entries: "all": before and between every run of control groups;
  # "closing": only the run an infill's closing WAIT follows (`closing_position`); "first":
  # only before each run's first group (the positions between groups keep the next id).
  lookahead_entries: str = "all"

  @property
  def any(self) -> bool:
    return self.infill > 0 or self.accompany > 0 or self.attributes > 0

  @classmethod
  def from_config(cls, config) -> "TaskRates":
    d = config.data
    return cls(float(d.infill_rate), float(d.accompany_rate), float(d.attribute_rate),
               bool(d.lookahead_targets), str(d.lookahead_entries))


def split_at(notes, end: int):
  """(events, controls) for infilling a span that ends at `end`: controls are the notes
  starting at `end` or later; events the notes before it (the history and the span; where
  the span starts only matters when sampling, where generation begins)."""
  later = notes.onset >= end
  return notes[~later], notes[later]


def sampler_horizon(codec, controls, end: int):
  """The controls of a span ending at `end` that can enter the sequence before the span's
  last event: those starting before `end` + anticipation + one WAIT. An infilling sampler stops
  at `end`, so it never sees later ones; training leaves them out too, which keeps an infill
  example mostly events (the music before the span, also continuation the model needs)."""
  return controls[controls.onset < end + codec.anticipation + codec.wait_units]


def latest_history(codec, events, controls, excess: int):
  """(events, controls) with the earliest events left out, enough of them to save about
  `excess` ids (at least one note; four always kept), and the clock moved so the first kept
  event starts at 0."""
  events = events.canonical()
  drop = min(max(1, -(-excess // codec.tokens_per_note)), len(events) - 4)
  kept = events[drop:]
  t0 = int(kept.onset.min())
  return kept.replace(onset=kept.onset - t0), controls.replace(onset=controls.onset - t0)


def split_instruments(notes, kept):
  """(events, controls) for accompaniment: the notes of the `kept` instruments are controls."""
  is_kept = np.isin(notes.instrument, np.asarray(list(kept), np.int64))
  return notes[~is_kept], notes[is_kept]


def melody(notes) -> np.ndarray:
  """bool per note: the top line (the highest pitched note at each onset; drums never), the
  part a melody-conditioned accompaniment keeps when the instruments do not separate it."""
  out = np.zeros(len(notes), bool)
  pitched = np.flatnonzero(notes.instrument != DRUMS)
  if not len(pitched):
    return out
  order = pitched[np.lexsort((-notes.pitch[pitched], notes.onset[pitched]))]
  first = np.concatenate([[True], np.diff(notes.onset[order]) != 0])
  out[order[first]] = True
  return out


def derive(codec, window: np.ndarray, seq_len: int, rates: TaskRates,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
  """(tokens int32[seq_len + 1], mask float32[seq_len], targets int32[seq_len]) of a derived
  example, or None when the window stays plain continuation (the draw, or too few notes for
  the task). `targets[p]` is the position in `tokens` of input p's target: p + 1, except,
  with `rates.lookahead`, before a run of control groups (`lookahead_targets`)."""
  u = rng.random()
  task = ("infill" if u < rates.infill else
          "accompany" if u < rates.infill + rates.accompany else "plain")
  with_attributes = rng.random() < rates.attributes
  if task == "plain" and not with_attributes:
    return None
  window = np.asarray(window)
  ids = window[window != codec.pad_id]
  notes = codec.decode(ids)
  if len(notes) < 4:
    return None
  events, controls = notes, None
  if task == "accompany":
    instruments = np.unique(notes.instrument)
    top = melody(notes)
    if len(instruments) >= 2 and rng.random() < 0.5:  # Keep some instruments.
      k = int(rng.integers(1, len(instruments)))
      events, controls = split_instruments(notes, rng.choice(instruments, k, replace=False))
      task = "accompany_parts"
    elif 2 <= top.sum() < len(notes):  # Keep the melody (one instrument, e.g. a chorale).
      events, controls = notes[~top], notes[top]
      task = "accompany_melody"
    else:
      task = "infill"  # Nothing to accompany.
  if task == "infill":
    t0, t1 = int(notes.onset.min()), int((notes.onset + notes.duration).max())
    end = t0 + max(1, int(rng.uniform(0.4, 0.95) * (t1 - t0)))
    events, controls = split_at(notes, end)
    controls = sampler_horizon(codec, controls, end)
  stated = ([name for name in tc.ATTRIBUTES if name != "task" and rng.random() < 0.7]
            if with_attributes else [])
  task_id = codec.task_attribute(task) if task != "plain" else {}  # As the sampler states it.
  # An infill example stops at its controls' horizon, not where the song ends.
  has_eos = bool((ids == codec.eos_id).any()) and task != "infill"

  def encode(events, controls):
    attributes = {name: value for name, value in codec.attributes(events).items()
                  if name in stated}
    return codec.encode_controlled(events, controls, {**attributes, **task_id}, add_bos=True,
                                   add_eos=has_eos, infill=task == "infill",
                                   close=task == "infill")

  tokens, is_control = encode(events, controls)
  while task == "infill" and len(tokens) > seq_len + 1 and len(events) > 4:
    # The prefix (and a WAIT where a control enters) make a full window a few ids longer:
    # drop its earliest notes, not the span's end where the controls are (the part an infill
    # example exists to teach), and start the clock at the first kept note, as a window does.
    events, controls = latest_history(codec, events, controls, len(tokens) - (seq_len + 1))
    tokens, is_control = encode(events, controls)
  given = codec.inputs_only(tokens, is_control)  # Never targets.
  out = np.full(seq_len + 1, codec.pad_id, np.int32)
  n = min(len(tokens), seq_len + 1)
  out[:n] = tokens[:n]
  mask = np.zeros(seq_len, np.float32)
  mask[:n - 1] = ~given[1:n]
  targets = np.arange(1, seq_len + 1, dtype=np.int32)  # The next id.
  if rates.lookahead:
    opens = np.isin(codec.kinds(tokens[:n]), tc.CONTROL_TIME_KINDS)
    ahead = lookahead_targets(is_control[:n], opens, seq_len,
                              between=rates.lookahead_entries != "first")
    if rates.lookahead_entries == "closing":  # The span's last entry only.
      close = closing_position(codec, tokens[:n], is_control[:n]) if task == "infill" else -1
      ahead = np.where(ahead == close, ahead, targets)
    mask[ahead != targets] = 1.0
    targets = ahead
  return out, mask, targets


def lookahead_targets(is_control: np.ndarray, opens: np.ndarray, seq_len: int,
                      between: bool = True) -> np.ndarray:
  """int32[seq_len]: for each input position p of an `encode_controlled` sequence (per id, at
  most seq_len + 1: `is_control`, and `opens`, the ids that open a control group), the
  position of its target: p + 1, except where a control group follows p: there, the first id
  after the run of groups (when the sequence holds it). `between=False`: only where p is not
  itself a control id (before a run's first group, not between its groups).

  The sampler draws at p, and forces the group only when its draw would carry time past the
  group's entry point (`sampling`), so the model at p decides whether the next note comes
  before the control or after it. With the group's control-time id as p's target (a given id,
  out of the loss) that decision is never trained, and an infilled span's last note is seldom
  followed by the closing WAIT there: the end seam's pile-ups. Trained between the groups
  too, or at the closing run only, spans close early instead; `derive` with lookahead_entries
  "first" keeps only the target before each run's first group (docs/benchmarks.md, "Where a
  control enters" and what follows it)."""
  ctl, opens = np.asarray(is_control, bool), np.asarray(opens, bool)
  n = len(ctl)
  # The first non-control position at or after each position (n: none in the sequence).
  after = np.minimum.accumulate(np.where(ctl, n, np.arange(n))[::-1])[::-1]
  # A group opens at p + 1 (and, unless `between`, p is not a control id).
  p = np.flatnonzero(opens[1:] & (after[1:] < n) & (between | ~ctl[:-1]))
  p = p[p < seq_len]
  targets = np.arange(1, seq_len + 1, dtype=np.int32)
  targets[p] = after[p + 1]
  return targets


def closing_position(codec, tokens: np.ndarray, is_control: np.ndarray) -> int:
  """The position of an infill example's closing WAIT (`encode_controlled(close=True)`): the
  first non-control id after the last event's fields; -1 when the sequence does not hold it
  (cut by the context)."""
  ctl, kinds = np.asarray(is_control, bool), codec.kinds(tokens)
  event = np.flatnonzero(~ctl & (kinds >= tc.K_DT) & (kinds <= tc.K_DUR_VEL))
  if not len(event):
    return -1
  later = event[-1] + 1 + np.flatnonzero(~ctl[event[-1] + 1:])
  return int(later[0]) if len(later) and tokens[later[0]] == tc.WAIT else -1


def fit_controls(codec, songs, bins: int, seq_len: int, seed: int,
                 max_windows: int = 2000):
  """`codec.controls` with the edges of its binned attributes fitted to a corpus, so each bin
  holds a like share of the music the model learns from, whatever the corpus: edge k lies
  halfway between the value at quantile k/bins of up to `max_windows` training windows and the
  next larger value (a value never sits on an edge). Windows are cut as training cuts them
  (`seq_len + 1` ids at a random start): every song up to 4 times when the corpus is small,
  else `max_windows` songs drawn without replacement. `songs`: a sequence-like source (len,
  get_many) of version-1 id arrays. Deterministic in `seed`, so every process of a run fits the
  same edges. Where the corpus has too few distinct values (one pitch range), an edge is nudged
  just above the one before it: that bin stays empty, the vocabulary is kept."""
  rng = np.random.default_rng([seed, 0xB1A5])
  n = len(songs)
  reps = int(np.clip(max_windows // max(n, 1), 1, 4))
  picks = (np.repeat(np.arange(n), reps) if n * reps <= max_windows
           else np.sort(rng.choice(n, max_windows, replace=False)))
  values = {name: [] for name in tc.BINNED_ATTRIBUTES}
  for lo in range(0, len(picks), 256):
    for ids in songs.get_many(picks[lo:lo + 256]):
      start = int(rng.integers(0, max(1, len(ids) - seq_len)))
      window = ids[start:start + seq_len + 1]
      notes = codec.decode(window[window != codec.pad_id])
      if len(notes) < 4:
        continue
      for name, v in codec.attribute_values(notes).items():
        if name in values:
          values[name].append(float(v))
  if not values["density"]:
    raise ValueError("fit_controls: no training window has 4 notes or more; the attribute bins "
                     "cannot be fitted (set data.attribute_bins=0 for the generic edges)")
  edges = {}
  for name, v in values.items():
    v = np.sort(np.asarray(v))
    e = []
    for k in range(1, bins):
      lower = v[max(int(np.ceil(k / bins * len(v))) - 1, 0)]
      above = v[v > lower]
      e.append(float((lower + above[0]) / 2) if len(above) else float(lower))
      if len(e) > 1:
        e[-1] = max(e[-1], float(np.nextafter(e[-2], np.inf)))
    edges[f"{name}_edges"] = tuple(e)
  return dataclasses.replace(codec.controls, **edges)
