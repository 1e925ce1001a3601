"""`python -m virtuoso_jax.encoding`: summary, TXT, and the decoded MIDI written back."""

import subprocess
import sys

from virtuoso_jax.encoding import EncodingConfig, Notes, TokenCodec, midi_to_notes, notes_to_midi


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "virtuoso_jax.encoding", *map(str, args)],
                        capture_output=True, text=True, timeout=120, check=False)


def test_cli_summary_txt_and_roundtrip(tmp_path):
  notes = Notes.from_rows([(0, 50, 60, 80, 0), (0, 50, 64, 81, 40), (100, 5, 36, 100, 128)])
  src = tmp_path / "my song.mid"
  notes_to_midi(notes, src)
  out_mid = tmp_path / "out.mid"
  res = _cli(src, "--txt", f"--roundtrip={out_mid}")
  assert res.returncode == 0, res.stderr
  out = res.stdout
  assert "3 notes" in out and "Violin" in out and "Drums" in out
  assert "SONG=my_song\n" in out
  assert '"tokens_per_note": 5.667' in out  # (2 + 3 * 5) / 3
  assert midi_to_notes(out_mid) == TokenCodec(EncodingConfig()).quantize(notes)


def test_cli_bad_file_exits_with_reason(tmp_path):
  bad = tmp_path / "bad.mid"
  bad.write_bytes(b"MThd garbage")
  res = _cli(bad)
  assert res.returncode == 1 and "bad.mid" in res.stderr and "Traceback" not in res.stderr
