"""Infilling, accompaniment and attribute examples derived from song windows (tasks.py)."""

import numpy as np
import pytest

from virtuoso_jax import tasks
from virtuoso_jax.encoding import ControlConfig, EncodingConfig, Notes, TokenCodec
from virtuoso_jax.encoding import token_codec as tc

CODEC = TokenCodec(EncodingConfig(), ControlConfig())
L = 256


def _window(seed=0, instruments=(0, 40)):
  rng = np.random.default_rng(seed)
  n = 120
  notes = Notes(np.sort(rng.integers(0, 2000, n)), rng.integers(5, 80, n),
                rng.integers(40, 80, n), rng.integers(30, 100, n), rng.choice(instruments, n))
  ids = TokenCodec().encode(CODEC.quantize(notes))  # Records are version 1.
  return ids[:L + 1]


def test_plain_windows_stay_plain():
  assert tasks.derive(CODEC, _window(), L, tasks.TaskRates(), np.random.default_rng(0)) is None


def _draw(rates, seed):
  return tasks.derive(CODEC, _window(seed), L, rates, np.random.default_rng(seed))


def test_derived_examples_decode_and_mask_the_given_ids():
  for seed in range(20):
    for rates in (tasks.TaskRates(infill=1.0), tasks.TaskRates(accompany=1.0),
                  tasks.TaskRates(attributes=1.0)):
      tokens, mask, targets = _draw(rates, seed)
      assert tokens.shape == (L + 1,) and mask.shape == targets.shape == (L,)
      body = tokens[tokens != CODEC.pad_id]
      _, at_boundary = CODEC.grammar().walk(body[1:])  # Legal from BOS on (a prefix of a song).
      kinds = CODEC.kinds(tokens[targets])
      # Attributes and control ids are never targets; events are.
      assert not mask[np.isin(kinds, tc.CONTROL_KINDS + tc.PREFIX_KINDS)].any()
      assert mask[kinds == tc.K_DT].all()
      # A target is the next id (the default), or with lookahead targets, where a control
      # group follows, the first id after the groups (tested below).
      np.testing.assert_array_equal(targets, np.arange(1, L + 1))
      events, controls = CODEC.decode_parts(body)
      if rates.infill and len(controls) and len(events):
        # Events start before the span's end e, controls at e or later.
        assert controls.onset.min() > events.onset.max()
        # Only the controls a sampler can force before the span ends: a few seconds' worth.
        span = controls.onset.max() - controls.onset.min()
        assert span < CODEC.anticipation + CODEC.wait_units
      if rates.accompany and len(controls):
        shared = set(events.instrument.tolist()) & set(controls.instrument.tolist())
        # A kept instrument is all controls, or the kept part is the melody (the top line).
        assert not shared or (tasks.melody(CODEC.decode(body)) .sum() >= len(controls))
      # The control notes' field ids are masked too: the mask counts event groups, WAITs, EOS,
      # at most one group cut by the window's end and one target before each control group.
      bound = ((len(events) + 1) * CODEC.tokens_per_note + (tokens == tc.WAIT).sum() + 1
               + len(controls))
      assert int(mask.sum()) <= bound


@pytest.mark.parametrize("version", (3, 4, 5))
def test_a_version_3_to_5_example_states_its_task(version):
  v3 = TokenCodec(EncodingConfig(), ControlConfig(task_ids=True, infill_control_ids=version >= 4,
                                                  control_fields=version == 5))
  lo = v3.field_ranges()["task"][0]
  seen = set()
  for seed in range(30):
    for rates, can_be in ((tasks.TaskRates(infill=1.0), {"infill"}),
                          # Accompaniment falls back to infilling when every note is melody.
                          (tasks.TaskRates(accompany=1.0), set(tc.TASKS)),
                          (tasks.TaskRates(attributes=1.0), set())):
      window = _window(seed, instruments=(0, 40) if seed % 2 else (0,))
      tokens, _, _ = tasks.derive(v3, window, L, rates, np.random.default_rng(seed))
      stated = [tc.TASKS[t - lo] for t in tokens[v3.kinds(tokens) == tc.K_TASK]]
      assert len(stated) == (1 if can_be else 0)  # One task id, or none when plain.
      if stated:
        assert tokens[1] == lo + tc.TASKS.index(stated[0])  # It opens the prefix.
      assert set(stated) <= can_be
      seen.update(stated)
      # Version 4: an infill's controls open with their own ids, an accompaniment's never.
      opens = v3.kinds(tokens)[np.isin(v3.kinds(tokens), tc.CONTROL_TIME_KINDS)]
      wanted = tc.K_ICTIME if version >= 4 and stated == ["infill"] else tc.K_CTIME
      assert (opens == wanted).all()
      # Version 5: every control note (of either task) is written in the control fields (the
      # window's end may cut the last one).
      n_fields = int(np.isin(v3.kinds(tokens), tc.CONTROL_KINDS).sum()) - len(opens)
      full = len(opens) * (v3.tokens_per_note - 1) if version == 5 else 0
      assert full - n_fields in (range(v3.tokens_per_note - 1) if version == 5 else (0,))
  assert seen == set(tc.TASKS)  # One instrument: the melody is kept; two: sometimes parts.
  # Version 2 states none (its models learnt without), with the same draws otherwise.
  tokens, _, _ = _draw(tasks.TaskRates(infill=1.0), 0)
  assert not (CODEC.kinds(tokens) == tc.K_TASK).any()


def test_infill_controls_start_at_the_span_end():
  window = _window(3)
  notes = CODEC.decode(window)
  end = int(np.median(notes.onset))
  events, controls = tasks.split_at(notes, end)
  assert len(controls) and len(events)
  assert controls.onset.min() >= end and events.onset.max() < end
  assert len(events) + len(controls) == len(notes)


def test_a_full_infill_example_keeps_the_span_end_and_drops_the_earliest_history():
  # A full window with a prefix (task, attributes) is longer than the context: the earliest
  # notes go, never the span's end where the controls are.
  v3 = TokenCodec(EncodingConfig(), ControlConfig(task_ids=True))
  checked = 0
  for seed in range(12):
    window = _window(seed)
    notes = v3.decode(window).canonical()
    tokens, mask, _ = tasks.derive(v3, window, L, tasks.TaskRates(infill=1.0, attributes=1.0),
                                np.random.default_rng(seed))
    body = tokens[tokens != v3.pad_id]
    events, controls = v3.decode_parts(body)
    if not len(controls):
      continue
    assert len(body) <= L + 1
    # Nothing cut: the example is exactly its events and controls encoded.
    n_prefix = 1 + int(np.isin(v3.kinds(body), tc.PREFIX_KINDS).sum())
    whole, _ = v3.encode_controlled(events, controls, add_eos=False, close=True)
    np.testing.assert_array_equal(body[n_prefix:], whole[1:])
    # Events and controls are the window's notes, moved by one shift: the events are the
    # latest notes before the span's end (a contiguous run up to it), all of it kept.
    rows = set(notes.to_rows())
    offset = next(d for d in range(0, int(notes.onset.max()) + 1)
                  if {(o + d, *r) for o, *r in events.to_rows()} <= rows)
    before = notes[notes.onset < controls.onset.min() + offset]
    assert events.replace(onset=events.onset + offset).to_rows() == \
        before[len(before) - len(events):].to_rows()
    assert set(controls.replace(onset=controls.onset + offset).to_rows()) <= rows
    checked += int(len(events) < len(before))  # History was dropped to fit.
  assert checked >= 3


def test_an_infill_example_closes_its_span_with_a_target_wait():
  # The events stop before the kept music resumes, and a target says so: the first non-control
  # id after the last event's fields is a WAIT the loss sees (without it, every event beside
  # the right context is followed by another before the controls resume).
  v5 = TokenCodec(EncodingConfig(), ControlConfig(task_ids=True, infill_control_ids=True,
                                                  control_fields=True))
  checked = opened = 0
  for seed in range(12):
    tokens, mask, targets = tasks.derive(v5, _window(seed), L,
                                         tasks.TaskRates(infill=1.0, lookahead=True),
                                         np.random.default_rng(seed))
    body = tokens[tokens != v5.pad_id]
    if len(body) == L + 1:
      continue  # Cut by the context: its end is not in the example.
    kinds = v5.kinds(body)
    control = np.isin(kinds, tc.CONTROL_KINDS)
    last_field = int(np.flatnonzero(np.isin(kinds, np.arange(tc.K_DT, tc.K_DUR_VEL + 1)))[-1])
    after = [i for i in range(last_field + 1, len(body)) if not control[i]]
    assert after and body[after[0]] == tc.WAIT, (seed, body[last_field:])
    assert mask[after[0] - 1] == 1.0  # A target.
    # Where the kept music enters right after the last event, the closing WAIT is also the
    # target there: the sampler draws at that position, and only a draw that carries time
    # past the controls' entry lets them in (trained, the span closes; untrained, it wrote
    # another note: the end seam's pile-up).
    if control[last_field + 1]:
      assert targets[last_field] == after[0] and mask[last_field] == 1.0
      opened += 1
    checked += 1
  assert checked >= 6 and opened >= 2
  # Alone: `close` adds one WAIT after the last event when no control is left to enter.
  notes = v5.decode(_window(1))
  plain, _ = v5.encode_controlled(notes, None, add_eos=False)
  closed, is_ctl = v5.encode_controlled(notes, None, add_eos=False, close=True)
  np.testing.assert_array_equal(closed, np.append(plain, tc.WAIT))
  assert not is_ctl[-1]


def test_draws_are_a_pure_function_of_the_seed():
  rates = tasks.TaskRates(infill=0.3, accompany=0.3, attributes=0.5)
  a = [_draw(rates, s) for s in range(8)]
  b = [_draw(rates, s) for s in range(8)]
  for x, y in zip(a, b):
    assert (x is None and y is None) or all(np.array_equal(u, v) for u, v in zip(x, y))


def test_melody_is_the_top_line():
  notes = Notes.from_rows([(0, 10, 60, 80, 0), (0, 10, 72, 80, 0), (0, 10, 36, 90, 128),
                           (10, 10, 65, 80, 40), (10, 10, 64, 80, 0), (20, 5, 40, 80, 128)])
  notes = notes.canonical()
  top = tasks.melody(notes)
  assert sorted(zip(notes.onset[top].tolist(), notes.pitch[top].tolist())) == [(0, 72), (10, 65)]


class _Songs(list):
  def get_many(self, indices):
    return [self[int(i)] for i in indices]


def _song(notes_per_second: float, seed: int) -> np.ndarray:
  """A version-1 song of one voice at `notes_per_second` (grid 10 ms in EncodingConfig())."""
  rng = np.random.default_rng(seed)
  n = 200
  step = max(1, int(round(100 / notes_per_second)))
  onset = np.arange(n) * step
  return TokenCodec().encode(CODEC.quantize(Notes(
      onset, np.full(n, step), rng.integers(50, 70, n), np.full(n, 80), np.zeros(n, int))))


def test_attribute_bins_are_fitted_to_the_corpus_quantiles():
  rates = [1.0, 2.0, 4.0, 8.0] * 10  # A quarter of the songs at each density.
  songs = _Songs(_song(r, i) for i, r in enumerate(rates))
  codec = TokenCodec(EncodingConfig(), ControlConfig.generic(4))
  fitted = tasks.fit_controls(codec, songs, bins=4, seq_len=L, seed=0)
  edges = fitted.density_edges
  assert len(edges) == 3 and list(edges) == sorted(edges)
  # Each edge falls between two of the corpus's densities, so the four bins split it evenly.
  assert 1.0 <= edges[0] <= 2.0 <= edges[1] <= 4.0 <= edges[2] <= 8.0, edges
  refit = TokenCodec(EncodingConfig(), fitted)
  assert refit.vocab_size == codec.vocab_size  # Same bins, same ids.
  bins = [refit.attributes(refit.decode(s[:L + 1]))["density"] for s in songs[:4]]
  assert bins == [0, 1, 2, 3]
  # Ties (one pitch range, one polyphony in this corpus) keep strictly increasing edges.
  for name in ("polyphony", "pitch_range"):
    e = fitted.edges(name)
    assert all(b > a for a, b in zip(e, e[1:])), (name, e)
  assert tasks.fit_controls(codec, songs, 4, L, seed=0) == fitted  # Deterministic.


def test_lookahead_entries_choose_which_positions_predict_past_the_groups():
  # lookahead_entries="closing": the positions before (and between) the groups that precede an
  # infill's closing WAIT predict that WAIT (the decision to end the span); every other entry
  # keeps its next-id target, out of the loss, as with lookahead off.
  v5 = TokenCodec(EncodingConfig(), ControlConfig(task_ids=True, infill_control_ids=True,
                                                  control_fields=True))
  closed = mid_entries = between = 0
  for seed in range(16):
    draw = lambda closing, task: tasks.derive(
        v5, _window(seed), L, tasks.TaskRates(**{task: 1.0}, lookahead=True,
                                              lookahead_entries="closing" if closing else "all"),
        np.random.default_rng(seed))
    every, only = draw(False, "infill"), draw(True, "infill")
    np.testing.assert_array_equal(every[0], only[0])  # The same example,
    nxt = np.arange(1, L + 1)
    moved_every, moved_only = every[2] != nxt, only[2] != nxt
    body = only[0][only[0] != v5.pad_id]
    kinds = v5.kinds(body)
    last_field = int(np.flatnonzero(np.isin(kinds, np.arange(tc.K_DT, tc.K_DUR_VEL + 1)))[-1])
    control = np.isin(kinds, tc.CONTROL_KINDS)
    after = [i for i in range(last_field + 1, len(body)) if not control[i]]
    close = tasks.closing_position(v5, body, control)
    assert close == (after[0] if after else -1)
    # its moved targets a subset of every entry's, all to the closing WAIT,
    assert not (moved_only & ~moved_every).any()
    assert (only[2][moved_only] == close).all()
    assert (every[2][moved_every & ~moved_only] != close).all()
    # the others back to the next id and out of the loss.
    rest = moved_every & ~moved_only
    assert (only[1][rest] == 0.0).all() and (only[1][moved_only] == 1.0).all()
    closed += int(moved_only.any())
    mid_entries += int(rest.any())
    # "first": every run's entry, but only the position before its first group (an event's
    # id); between the groups the next id, out of the loss.
    first = tasks.derive(v5, _window(seed), L, tasks.TaskRates(
        infill=1.0, lookahead=True, lookahead_entries="first"), np.random.default_rng(seed))
    moved_first = first[2] != nxt
    assert not (moved_first & ~moved_every).any()
    np.testing.assert_array_equal(first[2][moved_first], every[2][moved_first])
    given = np.isin(v5.kinds(first[0][:L]), tc.CONTROL_KINDS)
    np.testing.assert_array_equal(moved_first, moved_every & ~given)
    assert (first[1][moved_every & ~moved_first] == 0.0).all()
    between += int((moved_every & ~moved_first).any())
    accompany = draw(True, "accompany")
    if accompany is not None and not (v5.kinds(accompany[0]) == tc.K_ICTIME).any():
      # An accompaniment (not one turned infill, nothing to accompany): no closing WAIT.
      np.testing.assert_array_equal(accompany[2], nxt)
  assert closed >= 4 and mid_entries >= 4 and between >= 4


def test_lookahead_targets_skip_the_control_groups():
  # ids:      0 BOS, 1 event, 2 event, 3 ctl-open, 4 ctl, 5 ctl-open, 6 ctl, 7 WAIT, 8 ctl-open,
  #           9 ctl (the window ends inside the last run: no id after it).
  is_control = np.array([0, 0, 0, 1, 1, 1, 1, 0, 1, 1], bool)
  opens = np.array([0, 0, 0, 1, 0, 1, 0, 0, 1, 0], bool)
  targets = tasks.lookahead_targets(is_control, opens, 9)
  # Before each group: the WAIT after the run (2 and 4: the sampler draws after the first group
  # too); inside a group: the next field (forced, masked); nothing after 8's run: unchanged.
  np.testing.assert_array_equal(targets, [1, 2, 7, 4, 7, 6, 7, 8, 9])
