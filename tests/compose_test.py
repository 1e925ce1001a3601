"""Co-composition sessions (virtuoso_jax.compose): start, continue, accept, undo, resume."""

import os
import subprocess
import sys

import pytest

from sample_cli_test import REPO, trained_workdir  # tests/ is on sys.path.
from virtuoso_jax import composition
from virtuoso_jax import encoding


@pytest.fixture(scope="module")
def token_run(tmp_path_factory, fixture_corpus):
  return trained_workdir(tmp_path_factory, fixture_corpus, "token")


def test_start_continue_accept_undo_resume(token_run, prompt_midi, tmp_path):
  midi = prompt_midi  # Several instruments and drums (tests/hermetic_corpus.py).
  path = str(tmp_path / "session")
  # Every step reloads the session from its file, as separate processes would.
  s = composition.Session.create(path, token_run, source=str(midi))
  run = s.run()
  start = run.codec.quantize(encoding.midi_to_notes(str(midi), run.enc_config))
  start = encoding.Notes(**{k: v[:10] for k, v in start.canonical().columns().items()})
  s = composition.Session.create(path, token_run, notes=start, overwrite=True)
  with pytest.raises(composition.SampleError, match="already exists"):
    composition.Session.create(path, token_run)
  cands = composition.Session.load(path).continue_(run, block_notes=6, candidates=2)
  assert len(cands) == 2
  for c in cands:  # The composition is kept exactly; a block adds whole notes.
    assert set(start.to_rows()) <= set(c.to_rows()) and 10 < len(c) <= 16
  s = composition.Session.load(path)
  assert len(s.candidates()) == 2 and s.state["seed"] == 1
  after1 = s.accept(1)
  assert after1.to_rows() == cands[1].to_rows()
  s = composition.Session.load(path)
  second = s.continue_(run, block_notes=4, candidates=1)[0]
  composition.Session.load(path).accept(0)
  s = composition.Session.load(path)
  assert s.notes.to_rows() == second.to_rows() and len(s.state["history"]) == 2
  assert s.undo().to_rows() == after1.to_rows()
  assert composition.Session.load(path).undo().to_rows() == start.to_rows()
  with pytest.raises(composition.SampleError, match="nothing to undo"):
    composition.Session.load(path).undo()
  with pytest.raises(composition.SampleError, match="no candidates"):
    composition.Session.load(path).accept(0)
  s = composition.Session.load(path)
  s._run = run  # pylint: disable=protected-access
  paths = s.export(str(tmp_path / "final"))
  assert encoding.midi_to_notes(paths[0]).to_rows() == start.canonical().to_rows()


def test_cli_errors_and_show(token_run, tmp_path):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "virtuoso_jax.compose"]
  p = subprocess.run(cmd + ["show", f"--session={tmp_path / 'none'}"], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=120, check=False)
  assert p.returncode != 0 and "no session at" in p.stderr
  composition.Session.create(str(tmp_path / "s"), token_run)
  p = subprocess.run(cmd + ["show", f"--session={tmp_path / 's'}"], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=120, check=False)
  assert p.returncode == 0, p.stderr[-2000:]
  assert "composition: 0 notes" in p.stdout and "undo steps: 0" in p.stdout
  (tmp_path / "s" / composition.STATE_FILE).write_text("{broken")
  with pytest.raises(composition.SampleError, match="damaged"):
    composition.Session.load(str(tmp_path / "s"))
