"""virtuoso_jax.music_stats on hand-made note lists whose answers are known."""

import math

import numpy as np
import pytest

from virtuoso_jax import music_stats as ms
from virtuoso_jax.encoding import Notes

GRID_MS = 10  # 100 grid units = 1 s.


def notes(rows):
  return Notes.from_rows(rows)


def scale_run(tonic=60, scale=ms._MAJOR, dur=50, step=50, velocity=80, instrument=0):
  return [(i * step, dur, tonic + d, velocity, instrument) for i, d in enumerate(scale)]


def test_c_major_scale_features():
  f = ms.piece_features(notes(scale_run()), GRID_MS)
  assert f["pitch_class_entropy"] == pytest.approx(math.log2(7))
  assert f["pitch_range"] == 11
  assert f["pitch_mean"] == pytest.approx(np.mean([60 + d for d in ms._MAJOR]))
  assert f["scale_consistency"] == 1.0
  assert f["polyphony"] == 1.0
  assert f["silence_share"] == 0.0
  assert f["ioi"] == pytest.approx(0.5)
  assert f["duration"] == pytest.approx(0.5)
  assert f["note_density"] == pytest.approx(7 / 3.5)
  assert f["velocity_mean"] == 80 and f["velocity_std"] == 0
  assert f["top_voice_step"] == pytest.approx(np.mean(np.abs(np.diff(ms._MAJOR))))
  assert f["num_instruments"] == 1 and f["drum_share"] == 0


def test_chromatic_cluster_is_polyphonic_and_off_scale():
  rows = [(0, 100, 60 + i, 64, 0) for i in range(12)]
  f = ms.piece_features(notes(rows), GRID_MS)
  assert f["pitch_class_entropy"] == pytest.approx(math.log2(12))
  assert f["polyphony"] == 12
  assert f["scale_consistency"] == pytest.approx(7 / 12)
  assert math.isnan(f["ioi"])  # One onset only.


def test_silence_drums_and_voices():
  rows = [(0, 100, 60, 64, 0), (0, 100, 48, 64, 0), (300, 100, 67, 64, 0), (300, 100, 43, 64, 0),
          (0, 10, 36, 100, ms.DRUMS), (300, 10, 38, 100, ms.DRUMS)]
  f = ms.piece_features(notes(rows), GRID_MS)
  assert f["silence_share"] == pytest.approx(200 / 400)  # Sounding 0-1 s and 3-4 s of 4 s.
  assert f["drum_share"] == pytest.approx(2 / 6)
  assert f["num_instruments"] == 2
  assert f["top_voice_step"] == 7 and f["bottom_voice_step"] == 5
  assert f["polyphony"] == 2  # Drums do not count.


def test_voices_follow_held_notes():
  # The soprano holds C5 for 2 s while the alto moves E4-F4-G4-A4 under it, then steps to D5.
  rows = [(0, 200, 72, 64, 0)] + [(50 * i, 50, 64 + d, 64, 0) for i, d in enumerate((0, 1, 3, 5))]
  rows += [(200, 50, 74, 64, 0), (200, 50, 65, 64, 0)]
  f = ms.piece_features(notes(sorted(rows)), GRID_MS)
  assert f["top_voice_step"] == pytest.approx(2 / 4)  # C5 C5 C5 C5 D5.
  assert f["bottom_voice_step"] == pytest.approx((1 + 2 + 2 + 4) / 4)  # E F G A F.


def test_groove_consistency_of_a_repeated_and_a_varied_bar():
  beat = 50  # 0.5 s
  bar = [0, beat, 2 * beat, 3 * beat]
  steady = [(b * 4 * beat + t, 20, 60, 64, 0) for b in range(4) for t in bar]
  assert ms.piece_features(notes(steady), GRID_MS)["groove_consistency"] == 1.0
  varied = steady + [(4 * beat + 25, 20, 62, 64, 0)]  # One extra eighth in bar 2.
  g = ms.piece_features(notes(sorted(varied)), GRID_MS)["groove_consistency"]
  assert g == pytest.approx(1 - 2 / (3 * ms._SLOTS_PER_BAR))  # Bars 1|2 and 2|3 differ in a slot.


def test_empty_and_drum_only_pieces_are_nan_not_errors():
  assert all(math.isnan(v) for v in ms.piece_features(Notes.empty(), GRID_MS).values())
  f = ms.piece_features(notes([(0, 10, 36, 100, ms.DRUMS), (50, 10, 36, 100, ms.DRUMS)]), GRID_MS)
  assert f["drum_share"] == 1 and math.isnan(f["pitch_class_entropy"])


@pytest.mark.parametrize("tonic", [0, 2, 7, 9])
def test_key_of_scales_and_triads(tonic):
  rows = scale_run(60 + tonic) + [(400, 200, 60 + tonic, 64, 0), (400, 200, 64 + tonic, 64, 0),
                                  (400, 200, 67 + tonic, 64, 0)]
  key = ms.estimate_key(notes(rows))
  assert (key.tonic, key.mode) == (tonic, "major")
  minor = ms.estimate_key(notes(scale_run(57 + tonic, ms._MINOR) + [
      (400, 200, 57 + tonic, 64, 0), (400, 200, 60 + tonic, 64, 0), (400, 200, 64 + tonic, 64, 0)]))
  assert (minor.tonic, minor.mode) == ((9 + tonic) % 12, "minor")
  assert ms.keys_agree(key, key) and not ms.keys_agree(key, minor)
  assert ms.estimate_key(notes([(0, 10, 36, 100, ms.DRUMS)])) is None


def test_overlapped_area():
  rng = np.random.default_rng(0)
  a = rng.normal(0, 1, 400)
  assert ms.overlapped_area(a, a) == pytest.approx(1.0, abs=1e-6)
  assert ms.overlapped_area(a, rng.normal(0, 1, 400)) > 0.85
  assert ms.overlapped_area(a, a + 10) < 0.01
  # Two unit Gaussians one sigma apart overlap by 2 * Phi(-0.5) = 0.617.
  oa = ms.overlapped_area(rng.normal(0, 1, 4000), rng.normal(1, 1, 4000))
  assert oa == pytest.approx(0.617, abs=0.05)
  assert math.isnan(ms.overlapped_area([], [1.0]))
  assert ms.overlapped_area([3.0, 3.0], [3.0, 3.0]) == pytest.approx(1.0, abs=1e-6)
  assert ms.overlapped_area([90.0] * 8, [90.0] * 21) == pytest.approx(1.0, abs=1e-6)
  assert ms.overlapped_area([0.0] * 8, [1.0] * 21) < 1e-6


def test_compare_sets_rows():
  gen = [ms.piece_features(notes(scale_run(60 + t)), GRID_MS) for t in range(5)]
  ref = [ms.piece_features(notes(scale_run(62 + t)), GRID_MS) for t in range(5)]
  table = ms.compare_sets(gen, ref)
  assert set(table) == set(ms.FEATURES)
  row = table["pitch_mean"]
  assert row["rel_diff"] == pytest.approx(2 / row["ref_mean"])
  assert table["scale_consistency"]["oa"] == pytest.approx(1.0, abs=1e-6)
  assert table["pitch_class_entropy"]["rel_diff"] == 0


def test_copy_index_longest_match_and_shared_ngrams():
  train = [np.array([60, 62, 64, 65, 67, 69, 71, 72]), np.array([40, 41, 42])]
  index = ms.CopyIndex(train)
  assert index.longest_match(np.array([1, 2, 62, 64, 65, 67, 3])) == 4
  assert index.longest_match(np.array([60, 62, 64, 65, 67, 69, 71, 72])) == 8
  assert index.longest_match(np.array([100, 101])) == 0
  assert index.longest_match(np.array([42, 60])) == 1  # Runs never join two songs.
  assert index.shared(np.array([60, 62, 64, 99]), 2) == pytest.approx(2 / 3)
  assert math.isnan(index.shared(np.array([60]), 2))


def test_interval_sequence_is_transposition_invariant():
  a, b = notes(scale_run(60)), notes(scale_run(65))
  np.testing.assert_array_equal(ms.interval_sequence(a), ms.interval_sequence(b))
  index = ms.CopyIndex([ms.interval_sequence(a)])
  assert index.longest_match(ms.interval_sequence(b)) == 6


def test_seam_sees_gaps_and_pileups_around_an_edit():
  legato = notes([(0, 100, 60, 80, 0), (100, 100, 62, 80, 0)])  # One line, no silence.
  assert ms.seam(legato, 100, 50) == (0.0, 1.0)
  gap = notes([(0, 80, 60, 80, 0), (120, 80, 62, 80, 0)])  # 0.4 s of silence at the seam.
  assert ms.seam(gap, 100, 50) == (pytest.approx(0.4), pytest.approx(0.6))
  pile = notes([(0, 150, 60, 80, 0), (100, 100, 62, 80, 0), (100, 100, 64, 80, 0)])
  # One note for the window's first half, then a held note under two new ones.
  assert ms.seam(pile, 100, 50) == (0.0, pytest.approx(2.0))
  assert ms.seam(pile, 400, 50) == (1.0, 0.0)  # Nothing near: all silence.
  clipped = notes([(40, 20, 60, 80, 0)])  # Only 0.1 s of the window [50, 150) sounds.
  assert ms.seam(clipped, 100, 50) == (pytest.approx(0.9), pytest.approx(0.1))
