"""Window-mode training windows (input_pipeline.build_windows / BatchMaker.window).

The property behind these tests: EOS (a song's last target) must be predicted at many different
window positions. The old windowing slid each song's last window back to end at the song's end,
so in every song longer than L+1 tokens EOS was the target at position L-1, and the quickstart
model (learned absolute positions) learnt "position L-1 => EOS": 30-50% of its samples stopped
at token L. Pure numpy, no dataset.
"""

import dataclasses

import grain
import numpy as np

from virtuoso_jax import input_pipeline

PAD, BOS, EOS = 0, 1, 2


def bach_like_lengths(num_songs=300, seed=0):
  """Token lengths like virtuoso_midi/bach_token (305 songs, median ~1300, 497..9277)."""
  rng = np.random.default_rng(seed)
  return np.clip(rng.lognormal(np.log(1300), 0.45, num_songs), 200, 9300).astype(np.int64)


def old_build_windows(lengths, seq_len):
  """The windowing before the fix (stride L, the last window slid back to the song's end)."""
  songs, starts, mask_from, mask_to = [], [], [], []
  for s, n in enumerate(np.asarray(lengths)):
    n = int(n)
    if n < 2:
      continue
    st = 0
    while True:
      if st + seq_len >= n - 1 or n <= seq_len + 1:
        songs.append(s), starts.append(st), mask_from.append(0), mask_to.append(seq_len)
        break
      songs.append(s), starts.append(st), mask_from.append(0), mask_to.append(seq_len)
      nxt = st + seq_len
      if nxt + seq_len + 1 > n:
        last = n - seq_len - 1
        songs.append(s), starts.append(last), mask_from.append(st + seq_len - last)
        mask_to.append(seq_len)
        break
      st = nxt
  a = lambda x: np.asarray(x, np.int64)
  return input_pipeline.WindowIndex(a(songs), a(starts), a(mask_from), a(mask_to))


def counted_targets(index, lengths, seq_len):
  """Per window: the song token positions of its counted targets (start + i + 1)."""
  out = []
  for w in range(len(index)):
    n = int(lengths[index.song[w]])
    lo, hi = int(index.mask_from[w]), min(int(index.mask_to[w]), seq_len)
    st = int(index.start[w])
    t = st + 1 + np.arange(lo, hi)
    out.append(t[t <= n - 1])
  return out


def coverage(index, lengths, seq_len):
  cov = [np.zeros(int(n), int) for n in lengths]
  for w, t in enumerate(counted_targets(index, lengths, seq_len)):
    np.add.at(cov[int(index.song[w])], t, 1)
  return cov


def assert_every_target_once(index, lengths, seq_len):
  for s, c in enumerate(coverage(index, lengths, seq_len)):
    expect = np.ones(len(c), int)
    expect[:1] = 0  # Token 0 (BOS) is never a target.
    np.testing.assert_array_equal(c, expect, err_msg=f"song {s} (n={lengths[s]}, L={seq_len})")


def eos_positions(index, lengths, seq_len):
  """The window position at which each song's EOS (token n-1) is a counted target."""
  pos = []
  for w, t in enumerate(counted_targets(index, lengths, seq_len)):
    n = int(lengths[index.song[w]])
    if len(t) and t[-1] == n - 1:
      pos.append(n - 2 - int(index.start[w]))
  return np.asarray(pos)


def assert_eos_positions_spread(pos, seq_len):
  """EOS is a target at many positions, and position L-1 is not special."""
  hist = np.bincount(pos, minlength=seq_len)
  assert (hist > 0).sum() >= seq_len // 2, f"EOS only at {(hist > 0).sum()} positions"
  assert hist[seq_len - 1] <= max(3, 4 * len(pos) / seq_len), (
      f"{hist[seq_len - 1]} of {len(pos)} EOS targets at position L-1")
  # Not concentrated in the last quarter of the window either.
  assert hist[-seq_len // 4:].sum() <= 0.4 * len(pos)


class FakeSource:
  """Song s = [BOS, 3 + s, 3 + s, ..., EOS]: every token names its song."""

  def __init__(self, lengths):
    self.lengths = np.asarray(lengths)

  def __len__(self):
    return len(self.lengths)

  def __getitem__(self, s):
    n = int(self.lengths[s])
    ids = np.full(n, 3 + s, np.int32)
    ids[0] = BOS
    ids[-1] = EOS
    return ids


def maker(lengths, seq_len, seed=0, global_batch=8, rows=None, mode="window"):
  return input_pipeline.BatchMaker(
      source=FakeSource(lengths), index=input_pipeline.build_windows(lengths, seq_len),
      lengths=np.asarray(lengths), seq_len=seq_len, global_batch=global_batch,
      rows=rows or (0, global_batch), pad_id=PAD, mode=mode, seed=seed)


def epoch_samples(m, epoch):
  return range(m.epoch_start(epoch), m.epoch_start(epoch + 1))


# ---------------------------------------------------------------------------- tests


def test_every_target_counted_once_per_epoch():
  lengths = np.concatenate([[1, 2, 3, 5, 16, 17, 18, 33, 34, 100], bach_like_lengths(40)])
  for seq_len in (16, 256):
    # The index for any phases, and phase 0 (eval).
    rng = np.random.default_rng(seq_len)
    for phases in (None, rng.integers(0, seq_len, len(lengths))):
      assert_every_target_once(input_pipeline.build_windows(lengths, seq_len, phases), lengths,
                               seq_len)
    # What training reads: the windows of the global samples of each epoch.
    m = maker(lengths, seq_len, seed=seq_len)
    for epoch in range(3):
      windows = [m.window(j) for j in epoch_samples(m, epoch)]
      a = lambda k: np.asarray([w[k] for w in windows], np.int64)
      index = input_pipeline.WindowIndex(a(0), a(1), a(2), a(3))
      assert_every_target_once(index, lengths, seq_len)
      # A permutation of the epoch's index (no window twice).
      ref = m.epoch_index(epoch)
      assert sorted(zip(index.song, index.start)) == sorted(zip(ref.song, ref.start))


def test_eos_lands_at_many_positions():
  lengths = bach_like_lengths(300)
  seq_len = 256
  m = maker(lengths, seq_len, seed=1)
  pos = np.concatenate([eos_positions(m.epoch_index(e), lengths, seq_len) for e in range(4)])
  assert len(pos) == 4 * len(lengths)
  assert_eos_positions_spread(pos, seq_len)
  # Over epochs the same song ends at different positions (the phase is per song and epoch).
  per_song = np.stack([eos_positions(m.epoch_index(e), lengths, seq_len) for e in range(6)])
  assert np.mean([len(set(c)) for c in per_song.T]) > 4
  # Eval (phase 0) is deterministic and still spreads EOS by song length.
  assert_eos_positions_spread(
      eos_positions(input_pipeline.build_windows(lengths, seq_len), lengths, seq_len), seq_len)


def test_old_windowing_fails_the_eos_position_check():
  lengths = bach_like_lengths(300)
  old = old_build_windows(lengths, 256)
  assert_every_target_once(old, lengths, 256)  # It did count every target once ...
  pos = eos_positions(old, lengths, 256)
  assert (pos == 255).all()  # ... but every EOS was the target at position L-1.
  try:
    assert_eos_positions_spread(pos, 256)
  except AssertionError:
    return
  raise AssertionError("the old windowing passed the EOS position check")


def test_no_window_mixes_songs_and_bos_only_at_position_0():
  lengths = np.concatenate([[2, 5, 17, 40], bach_like_lengths(20, seed=3) // 20])
  seq_len = 16
  m = maker(lengths, seq_len, global_batch=8)
  n_batches = -(-m.epoch_start(3) // 8)
  for b in range(n_batches):
    batch = m(b)
    for r in range(8):
      song, st, _, _ = m.window(b * 8 + r)
      toks = np.concatenate([batch["inputs"][r], batch["targets"][r][-1:]])
      real = toks[toks != PAD]
      assert set(real.tolist()) <= {BOS, EOS, 3 + song}  # One song only.
      np.testing.assert_array_equal(real, FakeSource(lengths)[song][st:st + seq_len + 1])
      assert not (batch["inputs"][r][1:] == BOS).any()
      assert (batch["inputs"][r][0] == BOS) == (st == 0)
      counted = batch["targets"][r][batch["mask"][r] > 0]
      assert len(counted) and (counted != PAD).all()


def test_deterministic_resumable_and_row_split():
  lengths = bach_like_lengths(30, seed=5) // 10
  seq_len = 32
  a, b = maker(lengths, seq_len, seed=7), maker(lengths, seq_len, seed=7)
  last = -(-a.epoch_start(3) // 8)  # Three epochs, across epoch boundaries.
  seq = [a(i) for i in range(last)]
  for i in reversed(range(last)):  # A fresh maker, asked out of order (a resumed run).
    for k in seq[i]:
      np.testing.assert_array_equal(seq[i][k], b(i)[k])
  # Two processes building rows 0..2 and 3..7 build exactly the rows of the whole batch.
  lo, hi = maker(lengths, seq_len, seed=7, rows=(0, 3)), maker(lengths, seq_len, seed=7, rows=(3, 8))
  for i in (0, last - 1):
    for k in seq[i]:
      np.testing.assert_array_equal(np.concatenate([lo(i)[k], hi(i)[k]]), seq[i][k])
  # Another seed: other phases and order; epochs differ from each other.
  c = maker(lengths, seq_len, seed=8)
  assert not np.array_equal(c(0)["inputs"], seq[0]["inputs"])
  starts = lambda e: sorted(zip(a.epoch_index(e).song, a.epoch_index(e).start))
  assert starts(0) != starts(1)


def test_grain_iterator_resumes_bitwise():
  lengths = bach_like_lengths(30, seed=2) // 10
  m = maker(lengths, 32, seed=3)
  it = iter(grain.MapDataset.range(40).map(m).to_iter_dataset())
  for _ in range(11):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(15)]
  fresh = dataclasses.replace(m)  # New process: no caches.
  it2 = iter(grain.MapDataset.range(40).map(fresh).to_iter_dataset())
  it2.set_state(state)
  for e in expected:
    got = next(it2)
    for k in e:
      np.testing.assert_array_equal(got[k], e[k])


def test_eval_windows_are_phase_zero_and_complete():
  lengths = np.concatenate([[1, 2, 40], bach_like_lengths(20, seed=4) // 10])
  m = maker(lengths, 32, mode="eval")
  idx = m.index
  assert_every_target_once(idx, lengths, 32)
  assert (idx.start % 32 == 0).all()  # Stride L from the song start, the last window padded.
  total = sum(m(b)["mask"].sum() for b in range(m.num_eval_batches()))
  assert total == sum(max(int(n) - 1, 0) for n in lengths)
  np.testing.assert_array_equal(m(0)["inputs"], maker(lengths, 32, mode="eval")(0)["inputs"])
