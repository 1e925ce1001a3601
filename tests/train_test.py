"""End-to-end training: smoke runs of every tiny variant, loss goes down on real MIDI, sharded
(2, 2, 2) == 1 device, kill -9 + restart == uninterrupted (bitwise), SIGTERM saves, NaN stops
without overwriting the last good checkpoint.

Runs on the fixture dataset of input_pipeline_test.py (same features and metadata as
`virtuoso_midi`), built from the hermetic corpus (tests/hermetic_corpus.py: synthetic songs with
drums and music21's Bach chorales), with small shapes.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import input_pipeline_test  # tests/ is on sys.path (pytest rootdir-relative import).
from virtuoso_jax import checkpointing
from virtuoso_jax import config_lib
from virtuoso_jax import encoding
from virtuoso_jax import metrics as metrics_lib
from virtuoso_jax import inference
from virtuoso_jax import train
from virtuoso_jax import run_dir
from virtuoso_jax import trainer as trainer_lib

REPO = config_lib.REPO_ROOT
SPECS = {"rga": "configs/rga.py:tiny", "gpt": "configs/gpt.py:tiny",
         "char": "configs/char_gpt.py:tiny"}
# The fixture codec's 1061 token ids padded to a multiple of 2: runs on a mesh with tensor=2 shard
# the vocabulary, and sharding.py refuses a dimension that does not divide by its mesh axes.
TENSOR2_VOCAB = {"model.vocab_size": 1062}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, fixture_corpus):
  return input_pipeline_test.build_fixture_dataset(str(tmp_path_factory.mktemp("tfds")),
                                                   fixture_corpus)


def small(data_dir, kind="token", **extra):
  """Overrides for a fast run on the fixture dataset."""
  o = {"data.data_dir": data_dir, "data.tfds_name": input_pipeline_test.FIXTURE_NAME,
       "data.source": "manual", "data.encoding": kind, "data.prefetch": 2, "model.max_len": 64,
       "model.max_relative": 64, "model.num_layers": 1, "model.emb_dim": 64, "model.mlp_dim": 128, "model.num_heads": 2,
       "batch_size": 8, "num_train_steps": 2, "log_every_steps": 1, "eval_every_steps": 1000,
       "num_eval_batches": 2, "ckpt.every_steps": 1000, "tensorboard": False,
       "sample.write_at_end": False}
  o.update(extra)
  return o


def load(spec, overrides):
  return config_lib.validate(config_lib.load_config(spec, overrides))


def losses(workdir) -> dict[int, float]:
  """Step -> train loss."""
  out = {}
  for row in metrics_lib.read_metrics(str(workdir)):
    if "train/loss" in row:
      out[row["step"]] = row["train/loss"]
  return out


def run_main(spec, overrides, workdir, *, devices=8, env=None, wait=True, extra_args=()):
  args = [sys.executable, "-m", "virtuoso_jax.main", f"--config={spec}", f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in overrides.items()] + list(extra_args)
  full_env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                  JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_PLATFORMS="cpu", **(env or {}))
  p = subprocess.Popen(args, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
  if not wait:
    return p
  out, _ = p.communicate(timeout=240)
  assert p.returncode == 0, out[-4000:]
  return out


def test_training_beyond_continuation_uses_token_version_5(data_dir, tmp_path, tmp_path_factory):
  cfg = load(SPECS["rga"], small(data_dir, **{
      "data.infill_rate": 0.4, "data.accompany_rate": 0.4, "data.attribute_rate": 0.5}))
  last = train.train_and_evaluate(cfg, str(tmp_path))
  assert last["trained_steps"] == 2 and math.isfinite(last["train/loss"])
  saved = json.loads((tmp_path / run_dir.ENCODING_FILE).read_text())
  assert saved["token_version"] == 5 and saved["controls"]["anticipation_ms"] == 2000
  assert saved["controls"]["task_ids"] is True and saved["controls"]["infill_control_ids"]
  assert saved["controls"]["control_fields"] is True
  config, codec = run_dir.load_codec(str(tmp_path))
  assert codec.version == 5 and config.model.vocab_size == codec.vocab_size > 2129
  # data.attribute_bins=4: three edges per attribute, fitted to the fixture corpus (not the
  # generic placeholders), and a resumed run keeps them even if the corpus were refitted.
  generic = encoding.ControlConfig.generic(4)
  assert len(codec.controls.density_edges) == 3
  assert codec.controls.density_edges != generic.density_edges
  edited = dict(saved, controls=dict(saved["controls"], density_edges=[1.0, 2.0, 3.0]))
  (tmp_path / run_dir.ENCODING_FILE).write_text(json.dumps(edited))
  more = load(SPECS["rga"], small(data_dir, num_train_steps=3, **{
      "data.infill_rate": 0.4, "data.accompany_rate": 0.4, "data.attribute_rate": 0.5}))
  assert train.train_and_evaluate(more, str(tmp_path))["trained_steps"] == 1  # Resumed at 2.
  assert run_dir.load_codec(str(tmp_path))[1].controls.density_edges == (1.0, 2.0, 3.0)
  # Fine-tuning from it keeps the source run's edges (its ids mean the same bins).
  tuned = tmp_path_factory.mktemp("tuned")
  ft = load(SPECS["rga"], small(data_dir, num_train_steps=1, **{
      "data.infill_rate": 0.4, "data.accompany_rate": 0.4, "data.attribute_rate": 0.5,
      "ckpt.fine_tune_from": str(tmp_path)}))
  assert train.train_and_evaluate(ft, str(tuned))["trained_steps"] == 1
  assert run_dir.load_codec(str(tuned))[1].controls.density_edges == (1.0, 2.0, 3.0)


def test_periodic_actions_run_at_their_cadence_in_order():
  seen = []
  record = lambda name: (lambda info: seen.append((info.step, name)))
  actions = [train.Action("every", record("every"), every=1, at_last=False),
             train.Action("third", record("third"), every=3),
             train.Action("stop", record("stop"), every=0, at_last=False, on_stop=True)]
  for step in range(1, 8):
    info = train.StepInfo(step, last_step=7, stopping=step == 5)
    train.run_actions(actions, info)
  assert seen == [(1, "every"), (2, "every"), (3, "every"), (3, "third"), (4, "every"),
                  (5, "every"), (5, "stop"), (6, "every"), (6, "third"), (7, "every"),
                  (7, "third")]  # Step 7: the last step, though not a multiple of 3.


def test_sample_action_writes_music_while_training(data_dir, tmp_path):
  cfg = load(SPECS["rga"], small(data_dir, num_train_steps=5, **{
      "sample.every_steps": 2, "sample.max_new_tokens": 40}))
  last = train.train_and_evaluate(cfg, str(tmp_path))
  assert last["trained_steps"] == 5  # Not at step 5: the end-of-run sample is the binary's.
  assert sorted(os.listdir(tmp_path / "samples")) == ["step_2", "step_4"]
  notes = encoding.midi_to_notes(str(tmp_path / "samples" / "step_2" / "sample_00.mid"))
  assert len(notes) > 0
  rows = metrics_lib.read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # Sampling adds no metrics row.


@pytest.mark.parametrize("name", ["rga", "gpt", "char"])
def test_two_step_smoke_of_tiny_variants(name, data_dir, tmp_path):
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    kind = "char" if name == "char" else "token"
    cfg = load(SPECS[name], small(data_dir, kind, eval_every_steps=2, **{
        "ckpt.every_steps": 2, "sample.write_at_end": True, "sample.max_new_tokens": 8}))
    last = train.train_and_evaluate(cfg, str(tmp_path))
    # The library trains only: the end-of-training sample is the binary's call (main.py), here
    # made for the RGA run.
    assert not (tmp_path / "samples").exists() and last["trained_steps"] == 2
    if name == "rga":
      inference.write_config_sample(str(tmp_path), str(tmp_path / "samples"))
  finally:
    jax.config.update("jax_disable_most_optimizations", False)
  assert last["step"] == 2 and math.isfinite(last["train/loss"])
  assert math.isfinite(last["eval/loss"]) and last["eval/nll_per_note"] > 0
  # Bits per second of music: the scored NLL in bits over the seconds the scored targets span.
  assert last["eval/seconds"] > 0
  assert last["eval/bits_per_second"] == pytest.approx(
      last["eval/loss"] * last["eval/tokens"] / math.log(2) / last["eval/seconds"], rel=1e-5)
  rows = metrics_lib.read_metrics(str(tmp_path))
  assert "eval/bits_per_second" in rows[-1]
  assert [r["step"] for r in rows] == [1, 2]
  for key in ("train/loss", "perf/step_time_s", "perf/tokens_per_s", "perf/mfu"):
    assert key in rows[-1]
  assert "eval/loss" in rows[-1]
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["vocab_size"] > 0  # Resolved from the codec.
  assert checkpointing.Checkpointer(str(tmp_path), cfg.ckpt).all_steps() == [2]
  encoding = json.loads((tmp_path / run_dir.ENCODING_FILE).read_text())
  assert encoding["kind"] == kind and encoding["encoding"]["grid_ms"] > 0
  assert (tmp_path / "samples" / "sample_00.mid").is_file() == (name == "rga")


def test_loss_goes_down_on_real_midi(data_dir, tmp_path):
  cfg = load(SPECS["rga"], small(data_dir, num_train_steps=40, log_every_steps=10,
                                 **{"optim.learning_rate": 3e-3, "optim.warmup_steps": 5,
                                    "model.emb_dim": 128, "model.mlp_dim": 256,
                                    "model.num_heads": 4, "ckpt.enabled": False}))
  train.train_and_evaluate(cfg, str(tmp_path))
  l = losses(tmp_path)
  assert l[40] < l[10] - 0.5, l
  assert l[40] < math.log(cfg.model.vocab_size or 1061) - 2.0


def test_cpu_steps_with_big_temporaries_never_overlap(data_dir, tmp_path, monkeypatch):
  # Every step's temporaries count as big here; each dispatch must then find the previous
  # step finished (its outputs, this step's inputs, ready) and the heap back to its level.
  monkeypatch.setattr(trainer_lib, "SERIALIZE_STEPS_ABOVE_BYTES", 0)
  trainer = trainer_lib.Trainer(load(SPECS["rga"], small(data_dir, num_train_steps=6,
                                                    **{"model.emb_dim": 128})), str(tmp_path))
  compiled = trainer.compile()
  assert trainer._serialize_steps and trainer._step_temp_bytes > 0
  it = trainer.data.train_iterator(6)
  batches = [trainer.data.to_global(next(it)) for _ in range(5)]
  ready_at_dispatch = []

  def recording_step(state, batch):
    ready_at_dispatch.append(all(x.is_ready() for x in jax.tree.leaves(state)))
    return compiled(state, batch)

  trainer.compiled_train_step = recording_step
  losses_seen = [trainer.step(b)["train/loss"] for b in batches]
  assert ready_at_dispatch == [True] * 5
  assert all(math.isfinite(float(l)) for l in losses_seen)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
  cfg = load(SPECS["gpt"], small(data_dir, num_train_steps=6, **{
      "optim.schedule": "constant", "optim.warmup_steps": 0, "optim.learning_rate": 1e36,
      "optim.grad_clip_norm": 0.0, "optim.weight_decay": 0.0, "ckpt.every_steps": 1}))
  with pytest.raises(train.NonFiniteLossError, match=r"at step (\d)") as err:
    train.train_and_evaluate(cfg, str(tmp_path))
  bad_step = int(err.value.args[0].split("at step ")[1].split(";")[0])
  steps = checkpointing.Checkpointer(str(tmp_path), cfg.ckpt).all_steps()
  assert steps and max(steps) < bad_step  # Nothing saved at or after the bad step.


def test_sharded_2x2x2_matches_one_device(data_dir, tmp_path):
  o = small(data_dir, num_train_steps=3, **{"model.dropout_rate": 0.0}, **TENSOR2_VOCAB)
  run_main(SPECS["rga"], dict(o, **{"parallel.mesh_shape": "(2,2,2)"}), tmp_path / "sharded")
  run_main(SPECS["rga"], dict(o, **{"parallel.mesh_shape": "(1,1,1)"}), tmp_path / "one",
           devices=1)
  a, b = losses(tmp_path / "sharded"), losses(tmp_path / "one")
  assert sorted(a) == sorted(b) == [1, 2, 3]
  np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=2e-5)
  # The (2, 2, 2) run's final checkpoint resumes on one device (a different mesh shape); the
  # binary then writes the end-of-training sample (config.sample.write_at_end).
  out = run_main(SPECS["rga"], dict(o, num_train_steps=4, **{
      "parallel.mesh_shape": "(1,1,1)", "sample.write_at_end": True,
      "sample.max_new_tokens": 8}), tmp_path / "sharded", devices=1)
  assert "Resumed from" in out and "at step 3" in out
  assert math.isfinite(losses(tmp_path / "sharded")[4])
  assert "(config.sample.write_at_end)" in out
  assert (tmp_path / "sharded" / "samples" / "sample_00.mid").is_file()


def _wait_for(pred, proc, timeout=180):
  t = time.time()
  while not pred():
    if proc.poll() is not None:
      raise AssertionError(f"run exited early: {proc.stdout.read()[-3000:]}")
    if time.time() - t > timeout:
      proc.kill()
      raise AssertionError("timed out")
    time.sleep(0.05)


def test_kill_9_resume_is_bitwise_and_sigterm_saves(data_dir, tmp_path):
  o = small(data_dir, num_train_steps=10, **{"ckpt.every_steps": 3, "model.dropout_rate": 0.1,
                                              "data.transpose_semitones": 6})
  spec = SPECS["rga"]
  straight = run_main(spec, o, tmp_path / "straight", wait=False)
  # Interrupted run: kill -9 once step 5 is logged and a checkpoint is committed (saves are
  # async: on a loaded machine checkpoint 3 can still be in flight at step 5; Orbax renames a
  # step's directory to its bare number only when the save is complete).
  work = tmp_path / "killed"
  p = run_main(spec, o, work, wait=False)

  def committed():
    d = work / "checkpoints"
    return d.is_dir() and any(c.name.isdigit() for c in d.iterdir())
  _wait_for(lambda: (work / "metrics.jsonl").exists() and max(losses(work), default=0) >= 5
            and committed(), p)
  p.send_signal(signal.SIGKILL)
  p.wait()
  killed_at = max(losses(work))
  assert killed_at < 10
  out = run_main(spec, o, work)
  assert "Resumed from" in out
  out_straight, _ = straight.communicate(timeout=240)
  assert straight.returncode == 0, out_straight[-3000:]
  a, b = losses(tmp_path / "straight"), losses(work)
  assert sorted(a) == sorted(b) == list(range(1, 11))
  # The rows the killed run wrote past its checkpoint were dropped: one row per step.
  steps = [r["step"] for r in metrics_lib.read_metrics(str(work))]
  assert steps == sorted(set(steps)), steps
  # Run again at the same num_train_steps: nothing to do, nothing compiled, nothing written.
  again = run_main(spec, o, work)
  assert "Already trained to step 10" in again and "MFU denominator" not in again
  assert [r["step"] for r in metrics_lib.read_metrics(str(work))] == steps
  assert [a[s] for s in a] == [b[s] for s in a]  # Bitwise equal, step for step.

  # SIGTERM: a clean exit with a checkpoint at the step it stopped.
  work = tmp_path / "term"
  p = run_main(spec, dict(o, num_train_steps=1000), work, wait=False)
  _wait_for(lambda: (work / "metrics.jsonl").exists() and max(losses(work), default=0) >= 2, p)
  p.send_signal(signal.SIGTERM)
  out, _ = p.communicate(timeout=120)
  assert p.returncode == 0, out[-3000:]
  assert "SIGTERM" in out
  stopped = max(losses(work))
  step, params = checkpointing.restore_params(str(work))
  assert step == stopped and jax.tree.leaves(params)
