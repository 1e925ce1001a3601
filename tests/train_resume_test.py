"""Reruns of a workdir: a config change that a resume cannot cross stops before touching the
run (and says how to go on), safe changes resume and update config.json, ckpt.overwrite moves
the old run aside, ckpt.fine_tune_from starts from another run's weights, and an exhausted data
iterator is a clear error. Same fixture dataset and small shapes as train_test.py."""

import json
import os

import jax
import numpy as np
import pytest

from train_test import data_dir, load, small  # noqa: F401  (data_dir is a fixture)
from virtuoso_jax import checkpointing
from virtuoso_jax import config_lib
from virtuoso_jax import input_pipeline
from virtuoso_jax import train
from virtuoso_jax import run_dir
from virtuoso_jax import trainer as trainer_lib


@pytest.fixture(autouse=True)
def _fast_compile():
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", False)


def _cfg(data_dir, spec="configs/rga.py:tiny", **extra):  # noqa: F811
  extra.setdefault("perf.peak_flops", 1e11)  # No peak measurement in tests.
  return load(spec, small(data_dir, **extra))


def _snapshot(workdir):
  files = {}
  for root, _, names in os.walk(workdir):
    for n in names:
      p = os.path.join(root, n)
      with open(p, "rb") as f:
        files[os.path.relpath(p, workdir)] = f.read()
  return files


def test_config_change_stops_before_touching_the_run(data_dir, tmp_path):  # noqa: F811
  work = tmp_path / "rga"
  train.train_and_evaluate(_cfg(data_dir, **{"ckpt.every_steps": 1}), str(work))
  before = _snapshot(work)
  assert "checkpoints_corrupt" not in " ".join(before)
  for spec, extra, named in [
      ("configs/rga.py:tiny", {"model.num_layers": 2}, "model.num_layers 1 -> 2"),
      ("configs/gpt.py:tiny", {}, "model.name 'rga' -> 'gpt'"),
      ("configs/rga.py:tiny", {"data.encoding": "char", "data.transpose_semitones": 0},
       "data.encoding 'token' -> 'char'"),
      ("configs/rga.py:tiny", {"optim.optimizer": "adam", "optim.weight_decay": 0.0},
       "optim.optimizer 'adamw' -> 'adam'")]:
    with pytest.raises(run_dir.RunConfigMismatchError) as err:
      train.train_and_evaluate(_cfg(data_dir, spec, **extra), str(work))
    msg = str(err.value)
    assert named in msg and "\n" not in msg, msg
    assert "another --workdir" in msg and f"--config.ckpt.fine_tune_from={work}" in msg
    assert "--config.ckpt.overwrite=True" in msg
    assert isinstance(err.value, config_lib.ConfigError)  # main prints it as one line.
    assert _snapshot(work) == before  # config.json, checkpoints, metrics: untouched.

  # Safe changes resume, and config.json records them.
  last = train.train_and_evaluate(
      _cfg(data_dir, num_train_steps=3, **{"ckpt.every_steps": 1, "optim.learning_rate": 1e-4,
                                           "model.dropout_rate": 0.0}), str(work))
  assert last["step"] == 3
  saved = json.loads((work / "config.json").read_text())
  assert saved["num_train_steps"] == 3 and saved["optim"]["learning_rate"] == 1e-4
  assert [r["step"] for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines())
          ] == [1, 2, 3]

  # ckpt.overwrite=True moves the old run aside (kept) and starts afresh; rerunning the same
  # command then resumes the new run instead of moving it again.
  cfg = _cfg(data_dir, num_train_steps=2, **{"model.num_layers": 2, "ckpt.overwrite": True})
  assert train.train_and_evaluate(cfg, str(work))["step"] == 2
  old = [p for p in tmp_path.iterdir() if p.name.startswith("rga.old-")]
  assert len(old) == 1 and (old[0] / "checkpoints" / "3").is_dir()
  assert json.loads((old[0] / "config.json").read_text())["model"]["num_layers"] == 1
  assert json.loads((work / "config.json").read_text())["model"]["num_layers"] == 2
  again = train.train_and_evaluate(cfg, str(work))
  assert again["step"] == 2 and len([p for p in tmp_path.iterdir()
                                     if p.name.startswith("rga.old-")]) == 1

  # Fine-tuning: a new workdir from the old run's weights; shapes must match.
  tuned = tmp_path / "tuned"
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"params/blocks/1/.* only in the checkpoint"):
    # `work` now holds the 2-layer run; this model has 1 layer.
    train.train_and_evaluate(
        _cfg(data_dir, **{"ckpt.fine_tune_from": str(work), "model.num_layers": 1}), str(tuned))
  assert not (tuned / "checkpoints").is_dir() or not os.listdir(tuned / "checkpoints")


def test_fine_tune_starts_from_the_other_runs_params(data_dir, tmp_path, monkeypatch):  # noqa: F811
  src = tmp_path / "src"
  train.train_and_evaluate(_cfg(data_dir, num_train_steps=1), str(src))
  _, want = checkpointing.restore_params(str(src))
  seen = {}
  real_compile = trainer_lib.Trainer.compile

  def spy(self):
    seen["params"] = jax.device_get(self.state["params"])
    seen["step"] = int(self.state["train"]["step"])
    return real_compile(self)
  monkeypatch.setattr(trainer_lib.Trainer, "compile", spy)
  train.train_and_evaluate(_cfg(data_dir, num_train_steps=1,
                                **{"ckpt.fine_tune_from": str(src)}), str(tmp_path / "ft"))
  got = {checkpointing._path_str(p): v for p, v in
         jax.tree_util.tree_flatten_with_path(seen["params"])[0]}
  ref = {checkpointing._path_str(p): v for p, v in
         jax.tree_util.tree_flatten_with_path(want)[0]}
  assert got.keys() == ref.keys() and seen["step"] == 0
  for k in ref:
    assert (got[k] == ref[k]).all(), k


def test_exhausted_iterator_is_a_clear_error(data_dir, tmp_path, monkeypatch):  # noqa: F811
  real = input_pipeline.InputPipeline.train_iterator
  monkeypatch.setattr(input_pipeline.InputPipeline, "train_iterator",
                      lambda self, num_batches=None: real(self, 1))
  with pytest.raises(train.DataExhaustedError, match="ended before step 2 of 2"):
    train.train_and_evaluate(_cfg(data_dir, **{"ckpt.enabled": False}), str(tmp_path))


def test_two_processes_save_and_resume_with_digests(tmp_path, fixture_corpus):
  """Two processes (jax.distributed on localhost, 2 x 4 CPU devices, mesh 2 x 2 x 2) train
  exactly like one process with 8 devices, each building only its own rows of every global
  batch; each hashes only its shards; the digests written together verify on a two-process
  resume (and the free-space check agrees across processes)."""
  import socket  # pylint: disable=g-import-not-at-top
  import input_pipeline_test  # pylint: disable=g-import-not-at-top
  import train_test  # pylint: disable=g-import-not-at-top
  data = input_pipeline_test.build_fixture_dataset(str(tmp_path / "tfds"), fixture_corpus)
  work = tmp_path / "two"
  spec = train_test.SPECS["rga"]

  def overrides(steps):
    return train_test.small(data, num_train_steps=steps, **{
        "ckpt.every_steps": 2, "parallel.mesh_shape": "(2,2,2)", "perf.peak_flops": 1e11},
        **train_test.TENSOR2_VOCAB)

  def run(steps):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    procs = [train_test.run_main(
        spec, overrides(steps), work, devices=4, wait=False,
        extra_args=[f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                    f"--process_id={i}"]) for i in range(2)]
    outs = []
    for p in procs:
      out, _ = p.communicate(timeout=300)
      assert p.returncode == 0, out[-4000:]
      outs.append(out)
    return outs

  # The reference: one process, 8 devices, the same 3 steps uninterrupted.
  one = train_test.run_main(spec, overrides(3), tmp_path / "one", devices=8, wait=False)
  run(2)
  assert json.loads((work / "checkpoints" / "2" / "integrity" / "metadata").read_text())[
      "digests"]["params"]
  outs = run(3)
  assert "Resumed from" in outs[0] and "at step 2" in outs[0]
  assert "no digests" not in outs[0] and not (work / "checkpoints_corrupt").exists()
  assert (work / "checkpoints" / "3").is_dir()
  out, _ = one.communicate(timeout=300)
  assert one.returncode == 0, out[-4000:]
  a, b = train_test.losses(work), train_test.losses(tmp_path / "one")
  assert sorted(a) == sorted(b) == [1, 2, 3]
  np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=1e-5)
