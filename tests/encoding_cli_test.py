"""`python -m virtuoso_jax.encoding`: summary, TXT, and the decoded MIDI written back."""

from virtuoso_jax.encoding import EncodingConfig, Notes, TokenCodec, midi_to_notes, notes_to_midi
from virtuoso_jax.encoding.__main__ import main


def test_cli_summary_txt_and_roundtrip(tmp_path, capsys):
  notes = Notes.from_rows([(0, 50, 60, 80, 0), (0, 50, 64, 81, 40), (100, 5, 36, 100, 128)])
  src = tmp_path / "my song.mid"
  notes_to_midi(notes, src)
  out_mid = tmp_path / "out.mid"
  assert main([str(src), "--txt", "--roundtrip", str(out_mid)]) == 0
  out = capsys.readouterr().out
  assert "3 notes" in out and "Violin" in out and "Drums" in out
  assert "SONG=my_song\n" in out
  assert '"tokens_per_note": 5.667' in out  # (2 + 3 * 5) / 3
  assert midi_to_notes(out_mid) == TokenCodec(EncodingConfig()).quantize(notes)


def test_cli_bad_file_exits_with_reason(tmp_path, capsys):
  bad = tmp_path / "bad.mid"
  bad.write_bytes(b"MThd garbage")
  assert main([str(bad)]) == 1
  assert "bad.mid" in capsys.readouterr().err
