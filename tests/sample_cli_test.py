"""`python -m virtuoso_jax.sample` on really trained tiny runs (a few steps on hermetic MIDI).

`trained_workdir(kind)` trains once per test session (shared across xdist workers through a
lock file) and is also used by compose_test.py.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import input_pipeline_test  # tests/ is on sys.path (pytest rootdir-relative import).
from virtuoso_jax import config_lib
from virtuoso_jax import encoding
from virtuoso_jax import inference
from virtuoso_jax import run_dir

REPO = str(config_lib.REPO_ROOT)
SPECS = {"token": "configs/rga.py:tiny", "char": "configs/char_gpt.py:tiny",
         "control": "configs/rga.py:tiny"}


def _train(root, corpus_dir, kind: str) -> str:
  from virtuoso_jax import train  # pylint: disable=g-import-not-at-top
  data_dir = input_pipeline_test.build_fixture_dataset(os.path.join(root, "tfds"), corpus_dir)
  o = {"data.data_dir": data_dir, "data.tfds_name": input_pipeline_test.FIXTURE_NAME,
       "data.source": "manual", "data.encoding": "char" if kind == "char" else "token",
       "model.max_len": 48, "model.num_layers": 1,
       "model.emb_dim": 32, "model.mlp_dim": 64, "model.num_heads": 2, "batch_size": 8,
       "num_train_steps": 3, "log_every_steps": 1, "eval_every_steps": 1000,
       "num_eval_batches": 1, "ckpt.every_steps": 1000, "ckpt.async_save": False,
       "tensorboard": False, "sample.max_new_tokens": 120}
  if kind != "char":
    o["model.max_relative"] = 48
  if kind == "control":  # Token codec version 2: infilling, accompaniment, attributes.
    o.update({"data.infill_rate": 0.3, "data.accompany_rate": 0.3, "data.attribute_rate": 0.5})
  workdir = os.path.join(root, kind)
  train.train_and_evaluate(config_lib.validate(config_lib.load_config(SPECS[kind], o)), workdir)
  return workdir


def trained_workdir(tmp_path_factory, corpus_dir, kind: str) -> str:
  """A tiny run trained for 3 steps on the fixture dataset of `corpus_dir` (built once)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # Shared by the xdist workers of this session.
  root = os.path.join(str(root), "sample_runs")
  os.makedirs(root, exist_ok=True)
  done = os.path.join(root, f"{kind}.done")
  with open(os.path.join(root, "lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(done):
      _train(root, corpus_dir, kind)
      open(done, "w").close()
  return os.path.join(root, kind)


@pytest.fixture(scope="session")
def token_run(tmp_path_factory, fixture_corpus):
  return trained_workdir(tmp_path_factory, fixture_corpus, "token")


@pytest.fixture(scope="session")
def char_run(tmp_path_factory, fixture_corpus):
  return trained_workdir(tmp_path_factory, fixture_corpus, "char")


@pytest.fixture(scope="session")
def control_run(tmp_path_factory, fixture_corpus):
  return trained_workdir(tmp_path_factory, fixture_corpus, "control")


def run_cli(*args, module="virtuoso_jax.sample"):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  p = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=300, check=False)
  return p.returncode, p.stdout + p.stderr


def test_default_command_writes_readable_samples(token_run):
  rc, out = run_cli(f"--workdir={token_run}")  # The quickstart's command: no other flags.
  assert "read only" not in out and "read_only" not in out  # Orbax's notices are filtered.
  assert rc == 0, out[-3000:]
  folder = os.path.join(token_run, "samples")
  assert f"Wrote 1 sample(s) to {folder}" in out
  assert "sample_00:" in out and "tokens/s" in out
  if not os.path.exists(os.path.join(folder, "sample_00.wav")):
    assert "skipping audio: FluidSynth not installed" in out
  notes = encoding.midi_to_notes(os.path.join(folder, "sample_00.mid"))
  assert len(notes) > 0
  assert os.path.getsize(os.path.join(folder, "sample_00.png")) > 1000


def test_continuation_keeps_prompt_and_restricts_instruments(token_run, prompt_midi, tmp_path):
  run = inference.load_run(token_run)
  midi = prompt_midi  # Several instruments and drums; the continuation may use only 0 and 128.
  prompt = inference.read_prompt_midi(str(midi), run.enc_config, last_notes=12)
  assert len(prompt) == 12 and prompt.onset.min() == 0
  request = inference.SampleRequest(num_samples=3, seed=1, max_tokens=150, max_notes=10,
                                 prompt_notes=prompt, instruments=[0, 128])
  samples = inference.generate(run, request)
  want = set(run.codec.quantize(prompt).to_rows())
  for s in samples:
    rows = s.notes.to_rows()
    assert want <= set(rows)  # The prompt's notes, exactly.
    new = [r for r in rows if r not in want]
    assert 0 < len(new) <= 10 and {r[4] for r in new} <= {0, 128}
  paths = inference.write_outputs(run, samples, str(tmp_path), audio=False)
  for p in paths:
    if p.endswith(".mid"):
      assert encoding.midi_to_notes(p).to_rows() == encoding.midi_to_notes(p).canonical().to_rows()


def test_char_model_with_text_prompt(char_run, tmp_path):
  rc, out = run_cli(f"--workdir={char_run}", f"--out={tmp_path}", "--num_samples=2",
                    "--prompt_text=SONG=Relax_with_20_notes", "--max_notes=8", "--audio=false")
  assert rc == 0, out[-3000:]
  for i in range(2):
    text = (tmp_path / f"sample_{i:02d}.txt").read_text(encoding="utf-8")
    assert text.startswith("SONG=Relax_with_20_notes")
    notes = encoding.midi_to_notes(str(tmp_path / f"sample_{i:02d}.mid"))
    assert 0 < len(notes) <= 8


def test_clear_errors(token_run, char_run, tmp_path):
  with pytest.raises(inference.SampleError, match="does not exist"):
    inference.load_run(str(tmp_path / "nowhere"))
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text((open(os.path.join(token_run, "config.json")).read()))
  shutil.copy(os.path.join(token_run, run_dir.ENCODING_FILE), empty / run_dir.ENCODING_FILE)
  with pytest.raises(inference.SampleError, match="no checkpoint"):
    inference.load_run(str(empty))
  bad = tmp_path / "bad.mid"
  bad.write_bytes(b"this is not a MIDI file")
  with pytest.raises(inference.SampleError, match=r"bad\.mid is unreadable"):
    inference.read_prompt_midi(str(bad), encoding.EncodingConfig())
  # config.json no longer matches the checkpoint.
  mism = tmp_path / "mismatch"
  shutil.copytree(token_run, mism)
  cfg = json.loads((mism / "config.json").read_text())
  cfg["model"]["emb_dim"] = 64
  (mism / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(inference.SampleError, match="does not match"):
    inference.load_run(str(mism))
  # A char prompt to a token model.
  run = inference.load_run(token_run)
  with pytest.raises(inference.SampleError, match="char models"):
    inference.generate(run, inference.SampleRequest(prompt_text="SONG=x"))
  rc, out = run_cli(f"--workdir={tmp_path / 'nowhere'}")
  assert rc != 0 and "error: workdir" in out and "does not exist" in out
  # Meaningless counts and limits name their flag.
  for kwargs, flag in (({"num_samples": 0}, "--num_samples must be >= 1, got 0"),
                       ({"max_tokens": 0}, "--max_tokens must be >= 1"),
                       ({"max_notes": -5}, "--max_notes must be >= 1, got -5"),
                       ({"max_seconds": 0.0}, "--max_seconds must be > 0")):
    with pytest.raises(inference.SampleError, match=flag):
      inference.SampleRequest(**kwargs)
  rc, out = run_cli(f"--workdir={token_run}", "--num_samples=0")
  assert rc != 0 and "error: --num_samples must be >= 1" in out and "Traceback" not in out
  rc, out = run_cli(f"--workdir={token_run}", "--instruments=")
  assert rc != 0 and "error: --instruments is empty" in out


def test_best_checkpoint_and_greedy_is_deterministic(token_run):
  run = inference.load_run(token_run, "latest")
  req = inference.SampleRequest(num_samples=2, seed=5, temperature=0.0, max_tokens=40)
  a, b = inference.generate(run, req), inference.generate(run, req)
  np.testing.assert_array_equal(a[0].ids, b[0].ids)
  np.testing.assert_array_equal(a[0].ids, a[1].ids)  # Greedy rows agree.
  with pytest.raises(inference.SampleError, match="latest, best or a step"):
    inference.load_run(token_run, "newest")
