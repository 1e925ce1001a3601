"""TokenCodec: round trips, long gaps, caps, grammar random walks, robustness, transposition."""

from hypothesis import HealthCheck, given, settings, strategies as st
import numpy as np
import pytest

from virtuoso_jax.encoding import DRUMS, EncodingConfig, Notes, TokenCodec, transpose
from virtuoso_jax.encoding.token_codec import velocity_bin_tables

LAYOUTS = ("default", "compact")


def codec(layout="default", **kw):
  return TokenCodec(EncodingConfig(token_layout=layout, **kw))


@st.composite
def notes_strategy(draw, max_notes=30):
  n = draw(st.integers(0, max_notes))
  big_gaps = draw(st.booleans())
  rows = []
  for _ in range(n):
    onset = draw(st.integers(0, 5000 if big_gaps else 600))
    rows.append((onset, draw(st.integers(1, 1200)), draw(st.integers(0, 127)),
                 draw(st.integers(1, 127)), draw(st.integers(0, 128))))
  if n and draw(st.booleans()):
    o = rows[0][0]
    rows += [(o, 5, 60, 90, DRUMS), (o, 5, 61, 90, 0), (o, 5, 61, 90, 0)]  # simultaneous, dup
  return Notes.from_rows(rows)


@pytest.mark.parametrize("layout", LAYOUTS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(notes=notes_strategy())
def test_round_trip(layout, notes):
  c = codec(layout)
  ids, report = c.encode(notes, return_report=True)
  assert ids.dtype == np.int32 and ids[0] == c.bos_id and ids[-1] == c.eos_id
  assert ids.min() >= 0 and ids.max() < c.vocab_size
  back, rep = c.decode(ids, return_report=True)
  assert rep["skipped_fragments"] == 0 and rep["skipped_ids"] == 0
  assert back == c.quantize(notes)
  assert np.array_equal(c.encode(back), ids)  # encode(decode(x)) == x
  assert report["duration_clipped"] == int((notes.duration > c.max_duration).sum())
  non_wait = ids[(ids != c.wait_id)]
  assert len(non_wait) == 2 + c.tokens_per_note * len(notes)
  g = c.grammar()
  assert g.state_after(ids) == g.end_state


def test_field_ranges_are_disjoint_and_specials():
  for layout in LAYOUTS:
    c = codec(layout)
    assert (c.pad_id, c.bos_id, c.eos_id) == (0, 1, 2)
    spans = sorted(c.field_ranges().values())
    assert spans[0] == (0, 4)
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
      assert a1 == b0 and a0 < a1
    assert spans[-1][1] == c.vocab_size
  assert codec("default").tokens_per_note == 5 and codec("compact").tokens_per_note == 3


def test_long_gap_is_split_exactly_and_nothing_shifts():
  c = codec(max_time_shift=99)
  notes = Notes.from_rows([(0, 10, 60, 80, 0), (1234, 10, 62, 80, 0), (1240, 10, 64, 80, 0)])
  ids = c.encode(notes)
  assert int((ids == c.wait_id).sum()) == 12  # 1234 = 12 * 100 + 34
  assert c.decode(ids) == c.quantize(notes)


def test_duration_cap_clips_and_counts():
  c = codec(max_duration=50)
  notes = Notes.from_rows([(0, 500, 60, 80, 0), (10, 50, 61, 80, 0)])
  ids, report = c.encode(notes, return_report=True)
  assert report["duration_clipped"] == 1
  assert c.decode(ids).duration.tolist() == [50, 50]


def test_velocity_bins_representatives_are_stable():
  for bins in (1, 7, 32, 127):
    to_bin, rep = velocity_bin_tables(bins)
    assert np.array_equal(to_bin[rep], np.arange(bins))
    assert set(to_bin[1:].tolist()) == set(range(bins))
    assert np.all(np.diff(to_bin[1:]) >= 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_random_ids_never_raise(layout):
  c = codec(layout)
  rng = np.random.default_rng(0)
  for _ in range(300):
    n = int(rng.integers(0, 200))
    ids = rng.integers(-5, c.vocab_size + 5, size=n)
    notes, rep = c.decode(ids, return_report=True)
    assert isinstance(notes, Notes) and rep["notes"] == len(notes)
  # Structured corruption of a real encoding: drop, duplicate, flip ids.
  base = c.encode(Notes.from_rows([(i * 7, 5, 40 + i, 80, i % 3) for i in range(50)]))
  for _ in range(200):
    ids = base.copy()
    pos = rng.integers(1, len(ids) - 1, size=3)
    ids[pos] = rng.integers(0, c.vocab_size, size=3)
    ids = np.delete(ids, rng.integers(1, len(ids) - 1))
    notes, rep = c.decode(ids, return_report=True)
    assert rep["skipped_fragments"] >= 1 or len(notes) >= 48
  assert len(c.decode(np.array([np.iinfo(np.int64).max, -1, 3.5]))) == 0
  # Time past int32 (2**31 units): the note is dropped and counted, nothing raises.
  group = c.encode(Notes.from_rows([(0, 5, 60, 80, 0)]), add_bos=False)
  ids = np.concatenate([np.full(2**31 // c.wait_units + 1, c.wait_id, np.int32), group])
  notes, rep = c.decode(ids, return_report=True)
  assert len(notes) == 0 and rep["out_of_range_notes"] == 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_grammar_random_walks_always_decode_cleanly(layout):
  c = codec(layout)
  g = c.grammar()
  assert g.allowed.shape == g.next_state.shape == (g.num_states, c.vocab_size)
  assert g.next_state.dtype == np.int32
  assert g.allowed.any(axis=1).all()  # Never a dead end.
  assert g.allowed[g.end_state].tolist() == [i == c.pad_id for i in range(c.vocab_size)]
  eos_states = np.flatnonzero(g.allowed[:, c.eos_id])
  assert eos_states.tolist() == [g.boundary_state]
  rng = np.random.default_rng(1)
  for walk in range(200):
    state, ids = g.start_state, [c.bos_id]
    eos_bias = walk % 4 == 0
    for _ in range(400):
      legal = np.flatnonzero(g.allowed[state])
      if eos_bias and c.eos_id in legal and rng.random() < 0.05:
        t = c.eos_id
      elif c.wait_id in legal and rng.random() < 0.05:
        t = c.wait_id
      else:
        t = int(rng.choice(legal[legal != c.eos_id])) if len(legal) > 1 else int(legal[0])
      ids.append(t)
      state = int(g.next_state[state, t])
    # Cut at a note boundary (what the sampler does at the end) and close the song.
    bounds = c.note_boundaries(ids)
    if state != g.end_state and len(bounds):
      cut = int(bounds[-1])
      ids = ids[:cut] + [c.eos_id]
    notes, rep = c.decode(np.array(ids), return_report=True)
    assert rep["skipped_fragments"] == 0 and rep["skipped_ids"] == 0, (walk, rep)
    n_groups = sum(1 for i in ids if c.kinds([i])[0] == 4)
    assert len(notes) == n_groups
    assert g.state_after(ids) == g.end_state


def test_grammar_rejects_illegal_prefix():
  c = codec()
  ids = c.encode(Notes.from_rows([(0, 5, 60, 80, 0)]))
  with pytest.raises(ValueError, match="position"):
    c.grammar().state_after(np.concatenate([ids[:2], ids[1:2]]))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_instrument_mask(layout):
  c = codec(layout)
  mask = c.instrument_mask([0, DRUMS])
  g = c.grammar()
  after_dt = g.next_state[g.start_state, c.field_ranges()["time"][0]]
  legal = np.flatnonzero(g.allowed[after_dt] & mask)
  if layout == "default":
    lo = c.field_ranges()["instrument"][0]
    assert legal.tolist() == [lo, lo + DRUMS]
  else:
    lo = c.field_ranges()["instrument_pitch"][0]
    assert legal.tolist() == list(range(lo, lo + 128)) + list(range(lo + 128 * DRUMS,
                                                                      lo + 128 * DRUMS + 128))
  assert mask[c.eos_id] and mask[c.wait_id]
  with pytest.raises(ValueError):
    c.instrument_mask([129])


@pytest.mark.parametrize("layout", LAYOUTS)
@settings(max_examples=40, deadline=None)
@given(notes=notes_strategy(), shift=st.integers(-20, 20))
def test_transpose_ids_equals_transpose_of_notes(layout, notes, shift):
  c = codec(layout)
  ids = c.encode(notes)
  lo, hi = c.pitch_shift_range(ids)
  if lo <= shift <= hi:
    expected, report = transpose(c.decode(ids), shift)
    assert report["out_of_range"] == 0
    assert np.array_equal(c.transpose_ids(ids, shift), c.encode(expected))
  else:
    with pytest.raises(ValueError, match="outside 0..127"):
      c.transpose_ids(ids, shift)


def test_transpose_policies_and_drums():
  notes = Notes.from_rows([(0, 5, 125, 80, 0), (0, 5, 60, 80, 0), (0, 5, 126, 80, DRUMS),
                           (1, 5, 2, 80, 3)])
  up, rep = transpose(notes, 5)
  assert rep == {"policy": "fold", "out_of_range": 1, "dropped": 0}
  assert sorted(up.to_rows()) == sorted([(0, 5, 118, 80, 0), (0, 5, 65, 80, 0),
                                         (0, 5, 126, 80, DRUMS), (1, 5, 7, 80, 3)])
  assert up.is_canonical()
  dropped, rep = transpose(notes, 5, policy="drop")
  assert rep["dropped"] == 1 and len(dropped) == 3
  clipped, _ = transpose(notes, -5, policy="clip")
  assert sorted(clipped.pitch.tolist()) == [0, 55, 120, 126]
  with pytest.raises(ValueError):
    transpose(notes, 1, policy="wrap")


def test_note_boundaries_cut_whole_notes():
  c = codec(max_time_shift=9)
  notes = Notes.from_rows([(0, 5, 60, 80, 0), (25, 5, 61, 80, 0), (25, 5, 59, 80, 1)])
  ids = c.encode(notes)
  b = c.note_boundaries(ids)
  assert b.tolist() == [1, 1 + 5, 1 + 5 + 2 + 5]  # The 25-unit gap: WAIT, WAIT, dt=5.
  for cut in b.tolist():
    part = np.concatenate([ids[:cut], [c.eos_id]])
    _, rep = c.decode(part, return_report=True)
    assert rep["skipped_fragments"] == 0


def test_config_round_trips_through_dict():
  cfg = EncodingConfig(token_layout="compact", velocity_bins=16, grid_ms=8)
  assert EncodingConfig.from_dict(cfg.to_dict()) == cfg
  assert EncodingConfig.from_dict('{"grid_ms": 20}').grid_ms == 20
  with pytest.raises(ValueError, match="unknown"):
    EncodingConfig.from_dict({"nope": 1})
  with pytest.raises(ValueError, match="token_layout"):
    EncodingConfig(token_layout="fancy")
  assert TokenCodec(cfg).vocab_size == TokenCodec(EncodingConfig.from_dict(cfg.to_dict())).vocab_size


@pytest.mark.parametrize("layout", LAYOUTS)
def test_decode_never_raises_on_hostile_sequences(layout):
  c = codec(layout)
  group = c.encode(Notes.from_rows([(3, 5, 60, 80, 0)]), add_bos=False, add_eos=False)
  hostile = [
      [2**70, -2**70, 2**63 - 1, -2**63],  # Python ints past int64: object array
      np.array([2**64 - 1, 2**63], np.uint64),
      np.array([np.nan, np.inf, -np.inf, 1e300, -0.5]),
      ["a", None, b"q", object(), 2**80, "7"],  # was: ValueError from astype(float64)
      [[1, 2], [3]],  # ragged: was ValueError from np.asarray
      np.full((4, 3), c.vocab_size + 9, np.int64),
      list(group) + [-1] * 5 + list(group),
  ]
  for ids in hostile:
    notes, rep = c.decode(ids, return_report=True)
    assert isinstance(notes, Notes) and rep["notes"] == len(notes)
  notes, rep = c.decode(list(group) + [-1] * 5 + list(group), return_report=True)
  assert len(notes) == 2 and rep["skipped_fragments"] == 1
  # Onsets past int32 by WAITs: dropped and counted.
  waits = np.full(2**31 // c.wait_units + 1, c.wait_id, np.int64)
  notes, rep = c.decode(np.concatenate([group, waits, group, group]), return_report=True)
  assert len(notes) == 1 and rep["out_of_range_notes"] == 2
