"""Versions 2 to 5 of the token codec: control notes anticipated into the sequence, attribute
and task tokens, an infill's own control-time ids, control notes' own field ids."""

import numpy as np
import pytest

from virtuoso_jax.encoding import ControlConfig, EncodingConfig, Notes, TokenCodec
from virtuoso_jax.encoding import token_codec as tc

LAYOUTS = ("default", "compact")


def codec(layout="default", **controls):
  return TokenCodec(EncodingConfig(token_layout=layout), ControlConfig(**controls))


def song(seed, n=120, span=3000):
  rng = np.random.default_rng(seed)
  onset = np.sort(rng.integers(0, span, n))
  onset[n // 2:] += 1500  # A gap longer than a WAIT: controls must enter between WAITs too.
  return Notes(onset, rng.integers(1, 400, n), rng.integers(30, 90, n), rng.integers(1, 128, n),
               rng.choice([0, 0, 40, 128], n)).canonical()


def test_version_1_ids_keep_their_meaning():
  v1, v2 = TokenCodec(), codec()
  assert (v1.version, v2.version) == (1, 2) and v2.vocab_size > v1.vocab_size
  for name, span in v1.field_ranges().items():
    assert v2.field_ranges()[name] == span
  notes = song(0)
  assert np.array_equal(v2.encode(notes), v1.encode(notes))
  assert v2.decode(v1.encode(notes)) == v1.decode(v1.encode(notes))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed", range(4))
def test_controlled_sequences_round_trip_and_follow_the_grammar(layout, seed):
  c = codec(layout)
  notes = c.quantize(song(seed))
  rng = np.random.default_rng(seed)
  is_ctl_note = rng.random(len(notes)) < 0.4
  cols = notes.columns()
  events = Notes(**{k: v[~is_ctl_note] for k, v in cols.items()})
  controls = Notes(**{k: v[is_ctl_note] for k, v in cols.items()})
  attrs = c.attributes(events)
  ids, is_ctl = c.encode_controlled(events, controls, attrs)
  assert ids.dtype == np.int32 and len(ids) == len(is_ctl)
  assert is_ctl.sum() == len(controls) * c.tokens_per_note
  kinds = c.kinds(ids)
  assert (kinds[is_ctl] != tc.K_WAIT).all()
  assert c.grammar().state_after(ids) == c.grammar().end_state  # BOS ... EOS, every id legal.
  back_events, back_controls = c.decode_parts(ids)
  assert back_events == events.canonical() and back_controls == controls.canonical()
  assert c.decode(ids) == notes
  # Each control enters no later than `anticipation` units before it sounds.
  ctl_time = c.field_ranges()["control_time"][0]
  offsets = ids[is_ctl & (kinds == tc.K_CTIME)] - ctl_time
  assert offsets.max() < c.anticipation + c.wait_units
  starts_late = offsets < c.anticipation
  # Only controls near the start (or right after the previous position) may come later.
  assert starts_late.sum() <= len(offsets)


def test_attributes_are_computed_from_the_notes():
  c = codec()
  sparse = Notes.from_rows([(i * 100, 50, 60, 80, 0) for i in range(10)])  # 1 note/s, mono.
  dense = Notes.from_rows([(i * 10, 40, 40 + (i % 30), 80, 0) for i in range(200)])
  a, b = c.attributes(sparse), c.attributes(dense)
  assert a["density"] < b["density"] and a["polyphony"] < b["polyphony"]
  assert a["pitch_range"] == 0 and b["pitch_range"] > 0
  assert a["instrument_present"] == [0]
  drums = Notes.from_rows([(0, 5, 36, 100, 128), (0, 50, 60, 80, 40)])
  assert c.attributes(drums)["instrument_present"] == [40, 128]
  ids = c.attribute_ids({"density": 3, "instrument_present": [40, 0]})
  assert c.kinds(ids).tolist() == [tc.K_DENSITY, tc.K_INST_PRESENT, tc.K_INST_PRESENT]
  with pytest.raises(ValueError, match="outside"):
    c.attribute_ids({"density": 99})
  with pytest.raises(ValueError, match="version-2"):
    TokenCodec().attributes(sparse)


def test_version_3_states_the_task_and_keeps_version_2_ids():
  v2, v3 = codec(), codec(task_ids=True)
  assert (v2.version, v3.version) == (2, 3) and v3.vocab_size == v2.vocab_size + len(tc.TASKS)
  for name, span in v2.field_ranges().items():
    assert v3.field_ranges()[name] == span
  assert v2.task_attribute("infill") == {} and v3.task_attribute("infill") == {"task": "infill"}
  ids = v3.attribute_ids({"density": 1, "task": "accompany_melody"})
  assert v3.kinds(ids).tolist() == [tc.K_TASK, tc.K_DENSITY]  # The task opens the prefix.
  assert ids[0] - v3.field_ranges()["task"][0] == tc.TASKS.index("accompany_melody")
  with pytest.raises(ValueError, match="version-2 token codec"):
    v2.attribute_ids({"task": "infill"})
  with pytest.raises(ValueError, match="not one of"):
    v3.attribute_ids({"task": "remix"})
  # A task id after another attribute is not the encoder's order: the grammar refuses it.
  g = v3.grammar()
  g.walk(ids)
  with pytest.raises(ValueError, match="not legal"):
    g.walk(ids[::-1])
  events = song(1)
  seq, _ = v3.encode_controlled(events, None, {"task": "infill"})
  assert v3.decode(seq) == v3.decode(v3.encode(events))  # The task id decodes to no note.
  assert v3.controls.to_dict()["task_ids"] is True
  assert ControlConfig.from_dict({k: v for k, v in v2.controls.to_dict().items()
                                  if k != "task_ids"}) == v2.controls  # Version-2 files.


@pytest.mark.parametrize("layout", LAYOUTS)
def test_version_4_opens_infill_controls_with_their_own_ids_and_keeps_version_3_ids(layout):
  v3, v4 = codec(layout, task_ids=True), codec(layout, task_ids=True, infill_control_ids=True)
  assert (v3.version, v4.version) == (3, 4)
  for name, span in v3.field_ranges().items():
    assert v4.field_ranges()[name] == span
  lo, hi = v4.field_ranges()["infill_control_time"]
  assert (lo, hi - lo) == (v3.vocab_size, np.subtract(*v3.field_ranges()["control_time"][::-1]))
  assert (v4.kinds(np.arange(lo, hi)) == tc.K_ICTIME).all()
  assert not v4.generation_mask()[lo:hi].any()  # Forced, never generated.
  notes = v4.quantize(song(2))
  cut = int(np.median(notes.onset))
  events, after = notes[notes.onset < cut], notes[notes.onset >= cut]
  plain, plain_ctl = v4.encode_controlled(events, after, {"task": "accompany_melody"})
  ids, is_ctl = v4.encode_controlled(events, after, {"task": "infill"}, infill=True)
  opens = is_ctl & np.isin(v4.kinds(ids), tc.CONTROL_TIME_KINDS)
  assert (v4.kinds(ids[opens]) == tc.K_ICTIME).all() and opens.sum() == len(after)
  # The same sequence but for the control-time ids (and the task): one range for the other.
  ctl_lo = v4.field_ranges()["control_time"][0]
  np.testing.assert_array_equal(np.where(opens, ids - lo + ctl_lo, ids)[2:], plain[2:])
  np.testing.assert_array_equal(is_ctl, plain_ctl)
  assert v4.grammar().state_after(ids) == v4.grammar().end_state
  assert v4.decode_parts(ids) == (events.canonical(), after.canonical())
  assert v4.decode(ids) == notes
  arrays = v4.control_arrays(after, 0, infill=True)
  assert (arrays["time_lo"], arrays["time_size"]) == (lo, hi - lo)
  assert arrays["entry_states"].tolist() == v4.control_arrays(after, 0)["entry_states"].tolist()
  # Older versions have no such ids: `infill=True` opens their controls as before.
  old, _ = v3.encode_controlled(events, after, {"task": "infill"}, infill=True)
  np.testing.assert_array_equal(old, v3.encode_controlled(events, after, {"task": "infill"})[0])
  with pytest.raises(ValueError, match="needs task_ids"):
    ControlConfig(infill_control_ids=True)
  assert ControlConfig.from_dict({k: v for k, v in v3.controls.to_dict().items()
                                  if k != "infill_control_ids"}) == v3.controls  # v3 files.


V5 = {"task_ids": True, "infill_control_ids": True, "control_fields": True}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_version_5_gives_control_notes_their_own_field_ids_and_keeps_version_4_ids(layout):
  v4, v5 = codec(layout, task_ids=True, infill_control_ids=True), codec(layout, **V5)
  assert (v4.version, v5.version) == (4, 5)
  for name, span in v4.field_ranges().items():
    assert v5.field_ranges()[name] == span
  event_fields = [n for n in v4.field_ranges() if n in ("instrument", "pitch", "duration",
                                                        "velocity", "instrument_pitch",
                                                        "duration_velocity")]
  new = {n: r for n, r in v5.field_ranges().items() if n not in v4.field_ranges()}
  assert list(new) == ["control_" + n for n in event_fields]  # Appended, in field order.
  assert min(lo for lo, _ in new.values()) == v4.vocab_size
  for name in event_fields:  # Each as wide as its event field, and never generated.
    (lo, hi), (elo, ehi) = new["control_" + name], v5.field_ranges()[name]
    assert hi - lo == ehi - elo and not v5.generation_mask()[lo:hi].any()
    assert not set(v5.kinds(np.arange(lo, hi)).tolist()) & set(v5.kinds([elo]).tolist())
  notes = v5.quantize(song(3))
  cut = int(np.median(notes.onset))
  events, after = notes[notes.onset < cut], notes[notes.onset >= cut]
  for infill, task in ((True, "infill"), (False, "accompany_parts")):
    ids, is_ctl = v5.encode_controlled(events, after, {"task": task}, infill=infill)
    old, old_ctl = v4.encode_controlled(events, after, {"task": task}, infill=infill)
    # The same sequence but for the control notes' fields, which move to their own ranges.
    np.testing.assert_array_equal(is_ctl, old_ctl)
    np.testing.assert_array_equal(ids[~is_ctl], old[~is_ctl])
    fields = is_ctl & ~np.isin(v5.kinds(ids), tc.CONTROL_TIME_KINDS)
    np.testing.assert_array_equal(ids[is_ctl & ~fields], old[is_ctl & ~fields])
    assert (ids[fields] >= v4.vocab_size).all() and not (ids[~fields] >= v4.vocab_size).any()
    assert v5.grammar().state_after(ids) == v5.grammar().end_state
    assert v5.decode_parts(ids) == (events.canonical(), after.canonical())
    assert v5.decode(ids) == notes
    arrays = v5.control_arrays(after, 0, infill=infill)
    np.testing.assert_array_equal(arrays["fields"].reshape(-1), ids[fields])
  # Transposing moves the control notes' pitches with the events'; drums stay.
  for got, was in zip(v5.decode_parts(v5.transpose_ids(ids, 2)), (events, after)):
    drum = was.instrument == tc.DRUMS
    assert drum.any() and (~drum).any()
    assert sorted(got.pitch[got.instrument != tc.DRUMS]) == sorted(was.pitch[~drum] + 2)
    assert sorted(got.pitch[got.instrument == tc.DRUMS]) == sorted(was.pitch[drum])
  # A control group with an event field in a control field's place is a malformed fragment.
  swapped = ids.copy()
  swapped[np.flatnonzero(fields)[1]] = old[np.flatnonzero(fields)[1]]
  _, report = v5.decode(swapped, return_report=True)
  assert report["skipped_fragments"] >= 1
  with pytest.raises(ValueError, match="needs infill_control_ids"):
    ControlConfig(task_ids=True, control_fields=True)
  assert ControlConfig.from_dict({k: v for k, v in v5.controls.to_dict().items()
                                  if k != "control_fields"}) == v4.controls  # v4 files.


@pytest.mark.parametrize("version", (2, 3, 4, 5))
def test_grammar_walks_of_a_controlled_codec_always_decode(version):
  c = codec(task_ids=version >= 3, infill_control_ids=version >= 4, control_fields=version >= 5)
  assert c.version == version
  g = c.grammar()
  assert g.allowed.any(axis=1).all()  # Never a dead end.
  # Controls never complete a note nor advance time; the prefix comes only first.
  assert not g.completes_note[:, np.isin(c.kinds(np.arange(c.vocab_size)),
                                         tc.CONTROL_TIME_KINDS)].any()
  rng = np.random.default_rng(0)
  opened = set()
  for _ in range(100):
    state, ids = g.start_state, [c.bos_id]
    for _ in range(200):
      legal = np.flatnonzero(g.allowed[state])
      tok = int(rng.choice(legal))
      ids.append(tok)
      state = int(g.next_state[state, tok])
      if tok == c.eos_id:
        break
    else:  # Cut at the last boundary: a walk stopped mid-group leaves a partial note.
      _, at_boundary = g.walk(ids[1:])
      ids = ids[:1 + int(np.flatnonzero(at_boundary)[-1])] if at_boundary.any() else ids[:1]
    notes, report = c.decode(ids, return_report=True)
    assert report["skipped_ids"] == 0 and report["skipped_fragments"] == 0
    opened.update(c.kinds(ids).tolist())
    # Every control group the walk wrote decodes as a control note.
    n_ctl = int(np.isin(c.kinds(ids), tc.CONTROL_TIME_KINDS).sum())
    assert len(c.decode_parts(ids)[1]) == n_ctl and len(notes) >= n_ctl
  assert opened >= {tc.K_CTIME, tc.K_ICTIME} if version >= 4 else tc.K_CTIME in opened
  # Version 5's control groups are written in its control fields; older ones in the events'.
  assert (tc.K_CPITCH in opened) == (version >= 5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_event_field_tables_and_the_release_after_an_infilled_span(layout):
  c = codec(layout, task_ids=True, infill_control_ids=True, control_fields=True)
  notes = c.quantize(song(5))
  ids, is_ctl = c.encode_controlled(notes[:40], notes[40:], infill=True)
  instrument_of, pitch_of, duration_of = c.event_field_tables()
  assert instrument_of.shape == pitch_of.shape == duration_of.shape == (c.vocab_size,)
  # Read from the events' ids alone, the tables give back each event's instrument, pitch and
  # duration.
  events = ~is_ctl & (instrument_of[ids] >= 0)
  assert instrument_of[ids[events]].tolist() == notes[:40].canonical().instrument.tolist()
  pitched = ~is_ctl & (pitch_of[ids] >= 0)
  assert pitch_of[ids[pitched]].tolist() == notes[:40].canonical().pitch.tolist()
  durs = ~is_ctl & (duration_of[ids] > 0)
  assert duration_of[ids[durs]].tolist() == notes[:40].canonical().duration.tolist()
  assert (instrument_of[ids[is_ctl]] == -1).all() and (duration_of[ids[is_ctl]] == 0).all()
  assert (pitch_of[ids[is_ctl]] == -1).all()
  # `resume`: per instrument and pitch, the first onset in the kept music (from the start
  # time) of the same instrument within RELEASE_SEMITONES, else the instrument's first onset;
  # an instrument absent from it is not bounded.
  later = notes[40:]
  arrays = c.control_arrays(later, 100, infill=True, resume=later)
  release = arrays["release"].reshape(tc.NUM_INSTRUMENTS, 128)
  for ins in range(tc.NUM_INSTRUMENTS):
    mine = later[later.instrument == ins]
    for p in range(128):
      near = mine.onset[np.abs(mine.pitch.astype(int) - p) <= tc.RELEASE_SEMITONES]
      want = (int(near.min()) if len(near) else int(mine.onset.min())) - 100 if len(mine) else (
          np.iinfo(np.int32).max)
      assert release[ins, p] == want, (ins, p)
  # A held voice is not cut where another voice of its instrument moves, only where its own
  # resumes: one instrument, a bass that resumes at 50 and a soprano at 10.
  two = Notes.from_rows([(110, 8, 72, 80, 0), (150, 8, 48, 80, 0)])
  voices = c.control_arrays(two, 100, infill=True, resume=two)["release"].reshape(-1, 128)[0]
  assert voices[72] == voices[70] == 10 and voices[48] == voices[51] == 50
  assert voices[60] == 10  # Near neither: the instrument's first onset.
  assert "release" not in c.control_arrays(later, 0, infill=True)
  # `duration_step` shortens a note by whole units and changes nothing else: each event's
  # duration id moved down by k steps decodes to the same notes, k units shorter.
  step = arrays["duration_step"]
  assert step == c.duration_step
  head = notes[:40].canonical()
  for k in (1, 3):
    cut = ids.copy()
    long_enough = durs & (duration_of[ids] > k)
    cut[long_enough] -= k * step
    assert (duration_of[cut[long_enough]] == duration_of[ids[long_enough]] - k).all()
    events_out, _ = c.decode_parts(cut)
    want = head.duration - k * (head.duration > k)
    assert sorted(events_out.duration.tolist()) == sorted(want.tolist())
    assert sorted(zip(events_out.pitch.tolist(), events_out.velocity.tolist())) == sorted(
        zip(head.pitch.tolist(), head.velocity.tolist()))
