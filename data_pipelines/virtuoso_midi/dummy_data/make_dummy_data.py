r"""Writes the builder tests' dummy data with the project's own MIDI writer.

  python data_pipelines/virtuoso_midi/dummy_data/make_dummy_data.py

Layout (the shape of a real --manual_dir; also what the tegridy/maestro tests "download"):
  songs/song_NN.mid        10 small multi-instrument songs (piano, strings, drums), all distinct
  songs/copy_of_song_01.mid  a byte-identical duplicate of song_01 (collapses to one example)
  archives/more_songs.zip  2 more distinct songs inside a zip (read in place)
  bad/corrupt.mid          a MIDI header followed by garbage (skipped: corrupt)
  bad/empty.mid            0 bytes (skipped: empty)
  bad/no_notes.mid         a valid MIDI file without notes (skipped: empty)
  README.txt               not MIDI: ignored
So a build yields 12 examples and reports 1 duplicate, 1 corrupt and 2 empty files.
Deterministic: rerunning writes the same bytes.
"""

import pathlib
import zipfile

import numpy as np

from virtuoso_jax.encoding import Notes, notes_to_midi

HERE = pathlib.Path(__file__).resolve().parent


def make_song(seed: int) -> Notes:
  """A short song: a piano melody over chords, a string line, and drums (10 ms grid)."""
  rng = np.random.default_rng(seed)
  rows = []
  beat = 50  # 500 ms.
  for bar in range(4):
    t0 = bar * 4 * beat
    root = int(rng.integers(48, 60))
    for k, p in enumerate((root, root + 4, root + 7)):  # Chord, piano.
      rows.append((t0, 4 * beat, p, 60 + k, 0))
    for b in range(4):  # Melody, piano.
      rows.append((t0 + b * beat, beat, int(rng.integers(64, 84)), int(rng.integers(70, 110)), 0))
    rows.append((t0, 2 * beat, root - 12, 80, 48))  # Strings.
    rows.append((t0 + 2 * beat, 2 * beat, root - 10, 80, 48))
    for b in range(4):  # Drums: kick and hat.
      rows.append((t0 + b * beat, 10, 36 if b % 2 == 0 else 42, 100, 128))
  return Notes.from_rows(rows).canonical()


def main():
  for sub in ("songs", "archives", "bad"):
    (HERE / sub).mkdir(exist_ok=True)
  for i in range(1, 11):
    notes_to_midi(make_song(i), HERE / "songs" / f"song_{i:02d}.mid", name=f"song_{i:02d}")
  (HERE / "songs" / "copy_of_song_01.mid").write_bytes((HERE / "songs" / "song_01.mid").read_bytes())
  with zipfile.ZipFile(HERE / "archives" / "more_songs.zip", "w", zipfile.ZIP_DEFLATED) as z:
    for i in (11, 12):
      info = zipfile.ZipInfo(f"more/song_{i:02d}.mid", date_time=(2021, 8, 20, 0, 0, 0))
      z.writestr(info, notes_to_midi(make_song(i), name=f"song_{i:02d}"))
  good = notes_to_midi(make_song(99))
  (HERE / "bad" / "corrupt.mid").write_bytes(good[:22] + bytes(range(200, 256)) * 3)
  (HERE / "bad" / "empty.mid").write_bytes(b"")
  (HERE / "bad" / "no_notes.mid").write_bytes(notes_to_midi(Notes.empty()))
  (HERE / "README.txt").write_text("Not a MIDI file: the builder ignores it.\n")
  print(f"dummy data written under {HERE}")


if __name__ == "__main__":
  main()
