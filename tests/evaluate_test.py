"""The evaluation binary on folders of MIDI (no model): report, JSON, PNG, skips, errors."""

import json
import subprocess
import sys

import numpy as np

from virtuoso_jax.encoding import Notes, notes_to_midi


def _write_pieces(folder, tonic, count, seed):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(count):
    steps = rng.choice([0, 2, 4, 5, 7, 9, 11], 40)
    rows = [(25 * k, 25, 48 + tonic + int(s) + 12 * int(rng.integers(0, 2)), 80, 0)
            for k, s in enumerate(steps)]
    notes_to_midi(Notes.from_rows(rows).canonical(), str(folder / f"piece_{i}.mid"))


def _run(*args, cwd):
  return subprocess.run([sys.executable, "-m", "virtuoso_jax.evaluate", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def test_folders_compare_and_skip_bad_files(tmp_path):
  _write_pieces(tmp_path / "gen", 0, 6, 0)
  _write_pieces(tmp_path / "ref", 0, 8, 1)
  (tmp_path / "gen" / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
  proc = _run("--generated_dir=gen", "--reference_dir=ref", "--out=out", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert "Music statistics: 6 generated vs 8 reference pieces" in proc.stdout
  assert "scale_consistency" in proc.stdout
  assert "skipped gen/broken.mid" in proc.stdout
  report = json.loads((tmp_path / "out" / "eval.json").read_text())
  assert [s["file"] for s in report["skipped"]] == ["gen/broken.mid"]
  table = report["statistics"]["table"]
  assert table["scale_consistency"]["gen_mean"] == 1.0  # Every piece is in C major.
  assert table["velocity_mean"]["oa"] > 0.99
  assert (tmp_path / "out" / "features.png").stat().st_size > 10_000


def test_errors_are_one_line(tmp_path):
  for args, words in ((["--split=test"], "need --workdir"),
                      (["--generated_dir=nope", "--reference_dir=nope"], "not a folder"),
                      ([], "nothing to do")):
    proc = _run(*args, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and words in proc.stderr, proc.stderr
