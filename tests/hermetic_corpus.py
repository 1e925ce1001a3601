"""The hermetic MIDI corpus of the end-to-end tests (training, sampling, composing, the input
pipeline, two-process training): made on any machine in a few seconds, nothing downloaded.

Layout of ../shared/corpora (one folder of .mid files per source):

  Synthetic-Band/  songs made here with `encoding.notes_to_midi`: a chord progression played
                   by several GM instruments (piano, bass, guitar, strings, violin, flute, ...)
                   with a drum kit (channel 10) in most songs, varied keys, tempi and
                   velocities, a long rest in some (WAIT tokens), a pickup before the first
                   note; seeded, so the same bytes every time.
  Bach-Chorales/   the first music21 Bach chorales (bundled with music21, no network),
                   converted by the `virtuoso_midi` builder's own code
                   (`processing.convert_bach_chunk`): real four-part music, one instrument.

tests/conftest.py's session fixture `fixture_corpus` builds it once per pytest session (shared
by the xdist workers); `prompt_midi` (`prompt_path`) is the prompt of the sample and compose
tests, a multi-instrument song with drums. Only the tests about the real corpora (round trips
over every file, the Tegridy sources) use `corpora_dir` (../shared/corpora); where that folder
is absent they run on `build_stand_in_corpora`, the hermetic files in its folder layout.
"""

from __future__ import annotations

import fcntl
import os
import pathlib

import numpy as np

from virtuoso_jax import encoding

SYNTHETIC = "Synthetic-Band"
BACH = "Bach-Chorales"
SOURCES = (SYNTHETIC, BACH)
NUM_SYNTHETIC = 16
NUM_CHORALES = 8

PIANO, BASS, DRUMS = 0, 33, encoding.DRUMS
# Melody and chord instruments the songs draw from (GM programs).
MELODY = (0, 40, 56, 65, 71, 73)  # piano, violin, trumpet, alto sax, clarinet, flute
CHORDS = (0, 4, 25, 48, 19)  # piano, e-piano, steel guitar, strings, church organ
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
_PROGRESSIONS = ((0, 5, 3, 4), (0, 3, 4, 0), (5, 3, 0, 4), (0, 4, 5, 3), (1, 4, 0, 0))


def _pitch(scale, key: int, octave: int, degree: int) -> int:
  return 12 * (octave + degree // 7) + key + scale[degree % 7]


def synthetic_song(index: int) -> encoding.Notes:
  """Song `index` of Synthetic-Band (deterministic; times on the default 10 ms grid)."""
  rng = np.random.default_rng(1000 + index)
  beat = int(rng.choice((40, 50, 60, 75)))  # 150, 120, 100, 80 bpm.
  key = int(rng.integers(0, 12))
  scale = _MINOR if index % 3 == 2 else _MAJOR
  progression = _PROGRESSIONS[index % len(_PROGRESSIONS)]
  melody = int(MELODY[index % len(MELODY)])
  chords = int(CHORDS[(index // 2) % len(CHORDS)])
  has_drums = index % 3 != 1
  bars = int(rng.integers(8, 13))
  rows = []
  t = int(rng.integers(0, 2 * beat))  # Pickup: the first note is not at time 0.
  degree = 7  # Melody position on the scale (octave 5 + degree // 7).
  for bar in range(bars):
    if index % 5 == 3 and bar == bars // 2:
      t += 400  # A 4 s rest: longer than one time-delta token (WAIT tokens).
    root = progression[bar % len(progression)]
    loud = int(rng.integers(60, 100))
    for half in (0, 2):  # Triads in half notes.
      for d in (0, 2, 4):
        rows.append((t + half * beat, 2 * beat - 5, _pitch(scale, key, 4, root + d),
                     loud - 15 + int(rng.integers(-5, 6)), chords))
    for q in range(4):  # Bass: root and fifth in quarters.
      rows.append((t + q * beat, beat - 5, _pitch(scale, key, 2, root + (4 if q % 2 else 0)),
                   loud, BASS))
    e = 0
    while e < 8:  # Melody: a walk on the scale in eighths and quarters, with rests.
      length = int(rng.choice((1, 2, 2, 4)))
      length = min(length, 8 - e)
      if rng.random() > 0.15:
        degree = int(np.clip(degree + rng.choice((-2, -1, -1, 0, 1, 1, 2)), 3, 13))
        rows.append((t + e * beat // 2, length * beat // 2 - 3, _pitch(scale, key, 5, degree),
                     min(127, loud + 10 + int(rng.integers(-8, 9))), melody))
      e += length
    if has_drums:
      for e in range(8):
        onset = t + e * beat // 2
        rows.append((onset, 10, 42, 50 + 20 * (e % 2 == 0), DRUMS))  # Closed hi-hat.
        if e in (0, 4):
          rows.append((onset, 10, 36, 110, DRUMS))  # Kick.
        if e in (2, 6):
          rows.append((onset, 10, 38, 100, DRUMS))  # Snare.
      if bar % 4 == 0:
        rows.append((t, 30, 49, 90, DRUMS))  # Crash.
    t += 4 * beat
  rows.append((t, 4 * beat, _pitch(scale, key, 4, 0), 70, chords))  # Final chord.
  rows.append((t, 4 * beat, _pitch(scale, key, 2, 0), 70, BASS))
  return encoding.Notes.from_rows(rows).canonical()


def _write_synthetic(folder: pathlib.Path) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  for i in range(NUM_SYNTHETIC):
    encoding.notes_to_midi(synthetic_song(i), folder / f"synthetic_band_{i:02d}.mid",
                           name=f"synthetic band {i:02d}")


def _convert_chorales(folder: pathlib.Path) -> None:
  # The builder's own conversion (no copy of it here): music21 score -> MIDI file.
  from data_pipelines.virtuoso_midi import processing  # pylint: disable=g-import-not-at-top
  folder.mkdir(parents=True, exist_ok=True)
  works = processing.bach_chorale_works()[:NUM_CHORALES]
  failed = [r for r in processing.convert_bach_chunk((works, os.fspath(folder))) if r[1]]
  if failed:
    raise RuntimeError(f"music21 could not convert the Bach chorales: {failed}")


def build(root: pathlib.Path) -> pathlib.Path:
  """Writes the corpus under `root` (idempotent; safe for concurrent callers). Returns root."""
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  done = root / ".done"
  with open(root / ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      _write_synthetic(root / SYNTHETIC)
      _convert_chorales(root / BACH)
      done.touch()
  return root


def files(root: pathlib.Path) -> list[pathlib.Path]:
  """Every .mid of the corpus, source by source in SOURCES order, sorted by name."""
  return [f for src in SOURCES for f in sorted((pathlib.Path(root) / src).glob("*.mid"))]


# The folders of ../shared/corpora (the Tegridy sources the original trained on).
CORPORA_FOLDERS = ("Endless-Piano-Carousel", "Endless-Violin-Carousel", "Tegridy-Children-Songs",
                   "Tegridy-Piano-Violin")
STAND_IN_MARK = ".stand_in"


def build_stand_in_corpora(root: pathlib.Path, corpus: pathlib.Path) -> pathlib.Path:
  """A stand-in for ../shared/corpora on machines without it: its folder names, each holding a
  different quarter of the hermetic corpus `corpus` (hard links; distinct files, so the
  builder's de-duplication keeps them all). Marked with STAND_IN_MARK so the tests about the
  real corpora can tell (their size checks are for the real folders). Returns root."""
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  with open(root / ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (root / STAND_IN_MARK).exists():
      songs = files(corpus)
      for i, name in enumerate(CORPORA_FOLDERS):
        (root / name).mkdir(exist_ok=True)
        for song in songs[i::len(CORPORA_FOLDERS)]:
          target = root / name / song.name
          if not target.exists():
            os.link(song, target)
      (root / STAND_IN_MARK).touch()
  return root


def is_stand_in(corpora: pathlib.Path) -> bool:
  """Whether `corpora` is build_stand_in_corpora's folder rather than the real corpora."""
  return (pathlib.Path(corpora) / STAND_IN_MARK).exists()


def prompt_path(root: pathlib.Path) -> pathlib.Path:
  """The prompt MIDI of the sample and compose tests (several instruments and drums)."""
  return pathlib.Path(root) / SYNTHETIC / "synthetic_band_00.mid"
