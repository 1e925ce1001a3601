"""The memory pre-flight: a train step, eval step or sampler that cannot fit is refused before it
runs, with settings that fit (found by compiling them); the suggested settings then run;
automatic accumulation trains exactly as the hand-set accumulation it picks."""

import json
import logging
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sampling_test  # tests/ is on sys.path
import train_test
from train_test import data_dir  # noqa: F401  (the module-scoped fixture dataset)
from virtuoso_jax import preflight
from virtuoso_jax import sampling
from virtuoso_jax import train
from virtuoso_jax import steps
from virtuoso_jax import trainer as trainer_lib

MIB = preflight.MIB


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
  """XLA without most optimizations: these tests compile dozens of small programs (estimates
  differ from optimized ones, but every figure a test compares comes from the same setting)."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


# ----------------------------------------------------------------------------- units


def test_footprint_counts_what_the_program_adds_to_its_arguments():
  x = jnp.ones((256, 256), jnp.float32)
  compiled = jax.jit(lambda a: (a @ a) @ a + 1.0, donate_argnums=0).lower(x).compile()
  fp = preflight.footprint(compiled)
  assert fp.argument == x.nbytes
  assert fp.total == fp.argument + fp.output - fp.alias + fp.temp
  assert fp.new == fp.temp + max(0, fp.output - fp.alias)
  made = preflight.Footprint(argument=100, output=40, alias=30, temp=7)
  assert (made.total, made.new) == (117, 17)


class _FakeDevice:
  platform, device_kind, process_index = "gpu", "Fake GPU", 0

  def __init__(self, limit, in_use):
    self.stats = {"bytes_limit": limit, "bytes_in_use": in_use}

  def memory_stats(self):
    return self.stats


def test_budget_is_free_device_memory_on_accelerators_and_host_ram_on_cpu():
  b = preflight.budget([_FakeDevice(16 << 30, 4 << 30), _FakeDevice(16 << 30, 6 << 30)])
  assert (b.bytes, b.sharing, b.platform) == (10 << 30, 1, "gpu")  # The fullest device.
  cpu = preflight.budget(jax.devices())
  assert cpu.platform == "cpu" and cpu.sharing == jax.local_device_count() == 8
  with open("/proc/meminfo", encoding="ascii") as f:
    total = int(next(l for l in f if l.startswith("MemTotal:")).split()[1]) * 1024
  assert 0 < cpu.bytes <= total
  fp = preflight.Footprint(argument=0, output=0, alias=0, temp=100)
  assert cpu.needed(fp) == 800  # The 8 simulated devices share the host's RAM.


class _Program:
  """What option.compile() returns: only its memory analysis matters here."""

  def __init__(self, temp):
    self.temp = temp

  def memory_analysis(self):
    return type("Mem", (), {"temp_size_in_bytes": self.temp, "argument_size_in_bytes": 0,
                            "output_size_in_bytes": 0, "alias_size_in_bytes": 0})()


def test_suggest_bisects_each_group_and_skips_options_needing_more_accumulation():
  compiled = []

  def option(name, temp, cost):
    def compile_():
      compiled.append(name)
      return _Program(temp)
    return preflight.Option(f"--{name}", compile_, "", cost)

  budget = preflight.Budget(1000, 1, "test", "cpu")  # 900 usable.
  accum = [option(f"accum={k}", 8000 // k, k) for k in (2, 4, 8, 16, 32, 64, 128, 256)]
  remat = [option(f"remat,accum={k}", 4000 // k, k) for k in (1, 2, 4, 8, 16)]
  shorter = [option("len=128", 950, 1), option("len=64", 500, 1)]
  found = preflight.suggest([accum, remat, shorter], budget)
  assert found == ["--accum=16: 0.0 MiB", "--remat,accum=8: 0.0 MiB", "--len=64: 0.0 MiB"]
  # Options 0, 1, 3 (accumulation 2, 4, 16: 16 fits), then bisection between 4 and 16 (8 does
  # not fit): 4 compiles, not 8; remat options needing 16 or more steps (no better than the
  # accumulation found) were never compiled.
  assert compiled[:4] == ["accum=2", "accum=4", "accum=16", "accum=8"], compiled
  assert "accum=256" not in compiled
  assert "remat,accum=16" not in compiled and len(compiled) <= 10
  assert preflight.first_fit(accum[:1], budget) is None


def test_check_refuses_warns_or_stays_quiet(caplog):
  fp = preflight.Footprint(argument=0, output=0, alias=0, temp=10 * MIB)
  small = preflight.Budget(5 * MIB, 1, "host RAM available", "cpu")
  fits = [preflight.Option("--config.grad_accum_steps=4", lambda: _Program(2 * MIB), "", 4)]
  with pytest.raises(preflight.OutOfMemoryError) as e:
    preflight.check("the train step", fp, small, mode="refuse", options=lambda: [fits],
                    override="--config.memory.check=warn")
  msg = str(e.value)
  assert msg.startswith("the train step cannot fit in memory: 10.0 MiB needed")
  assert "of 4.5 MiB usable (90% of 5.0 MiB host RAM available)" in msg
  assert "--config.grad_accum_steps=4: 2.0 MiB" in msg and "--config.memory.check=warn" in msg
  with pytest.raises(preflight.OutOfMemoryError, match="Nothing was run. This config is meant for a TPU pod.$") as e:
    preflight.check("the train step", fp, small, mode="refuse", options=lambda: [fits],
                    note="This config is meant for a TPU pod.")
  assert "grad_accum_steps" not in str(e.value)  # No search for a config of another machine.
  with caplog.at_level(logging.WARNING, logger="virtuoso_jax.preflight"):
    preflight.check("the train step", fp, small, mode="warn")
    preflight.check("the train step", fp, small, mode="off")
  assert [r.levelname for r in caplog.records] == ["WARNING"]
  preflight.check("the train step", fp, preflight.Budget(100 * MIB, 1, "x", "cpu"), mode="refuse")


def test_eval_in_micro_batches_sums_the_same():
  model = sampling_test.tiny_model("rga", 64)
  from flax import nnx  # pylint: disable=g-import-not-at-top
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = np.random.default_rng(0)
  batch = {"inputs": jnp.asarray(rng.integers(0, 64, (8, 24)), jnp.int32),
           "targets": jnp.asarray(rng.integers(0, 64, (8, 24)), jnp.int32),
           "mask": jnp.asarray(rng.random((8, 24)) < 0.8, jnp.float32),
           "seconds": jnp.asarray(rng.random((8, 24)), jnp.float32)}
  args = (params, batch, jnp.full((64,), -np.log(64.0)), jnp.ones(64))
  one = steps.eval_step(*args, graphdef=graphdef, rest=rest)
  four = steps.eval_step(*args, graphdef=graphdef, rest=rest, accum_steps=4)
  for k in one:
    np.testing.assert_allclose(four[k], one[k], rtol=1e-5, err_msg=k)


# ----------------------------------------------------------------------------- training


BATCH = {"batch_size": 64, "model.max_len": 128, "model.max_relative": 128}


@pytest.fixture(scope="module")
def needs(data_dir):  # noqa: F811  # pylint: disable=redefined-outer-name
  """{accum: MiB this process needs} for the tests' config, from its compiled train steps."""
  config = train_test.load("configs/rga.py:tiny", train_test.small(data_dir, **BATCH))
  trainer = trainer_lib.Trainer(config, "unused")
  budget = preflight.budget(list(trainer.mesh.devices.flat))
  return {k: budget.needed(preflight.footprint(trainer._compile_train(k))) / MIB
          for k in trainer.accum_choices()}


def _limit_between(needs, accum):
  """A memory limit (MiB) under which `accum` steps fit and fewer do not."""
  fewer = min(v for k, v in needs.items() if k < accum)  # The next smaller accumulation.
  assert needs[accum] + 2 < fewer, needs  # Precondition: accumulation saves memory here.
  return int((needs[accum] + fewer) / 2 / preflight.USABLE_FRACTION)


def test_refused_before_the_first_step_then_the_suggested_setting_trains(data_dir, needs,  # noqa: F811
                                                                         tmp_path):
  limit = _limit_between(needs, 4)
  overrides = train_test.small(data_dir, **BATCH, **{"memory.limit_mib": limit,
                                                     "memory.auto_grad_accum": False})
  config = train_test.load("configs/rga.py:tiny", overrides)
  with pytest.raises(preflight.OutOfMemoryError) as e:
    train.train_and_evaluate(config, str(tmp_path / "refused"))
  msg = str(e.value)
  assert "the train step cannot fit in memory" in msg and "Nothing was run" in msg
  assert not list((tmp_path / "refused").glob("checkpoints/[0-9]*"))  # No step saved.
  assert not (tmp_path / "refused" / "config.json").exists()
  flags = re.search(r"Settings that fit \(each compiled and its memory measured\): (.*?)[:(]",
                    msg).group(1).split()
  assert flags == ["--config.grad_accum_steps=4"], msg
  for flag in flags:  # The suggested setting, as the user would pass it, then trains.
    key, value = flag[len("--config."):].split("=")
    overrides[key] = int(value)
  out = train.train_and_evaluate(train_test.load("configs/rga.py:tiny", overrides),
                                 str(tmp_path / "suggested"))
  assert out["step"] == 2 and np.isfinite(out["train/loss"])


def test_main_refuses_with_one_error_line(data_dir, tmp_path):  # noqa: F811
  overrides = train_test.small(data_dir, **{"memory.limit_mib": 1,
                                            "memory.auto_grad_accum": False})
  args = [f"--config.{k}={v}" for k, v in overrides.items()]
  proc = subprocess.run(
      [sys.executable, "-m", "virtuoso_jax.main", "--config=configs/rga.py:tiny",
       f"--workdir={tmp_path / 'run'}"] + args, cwd=train_test.REPO, capture_output=True,
      text=True, timeout=240, check=False,
      env=dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1"))
  proc.stdout += proc.stderr
  assert proc.returncode != 0
  lines = proc.stdout.strip().splitlines()
  assert lines[-1].startswith("error: the train step cannot fit in memory:"), proc.stdout[-3000:]
  assert "Traceback" not in proc.stdout and "--config.memory.check=warn" in lines[-1]
  assert not list((tmp_path / "run").glob("checkpoints/[0-9]*"))
  assert not (tmp_path / "run" / "config.json").exists()


def test_auto_accumulation_trains_exactly_as_the_hand_set_one(data_dir, needs,  # noqa: F811
                                                              tmp_path):
  limit = _limit_between(needs, 2)
  auto = train_test.small(data_dir, **BATCH, **{"memory.limit_mib": limit})  # Auto: the default.
  train.train_and_evaluate(train_test.load("configs/rga.py:tiny", auto), str(tmp_path / "auto"))
  saved = json.loads((tmp_path / "auto" / "config.json").read_text())
  assert saved["grad_accum_steps"] == 2
  hand = dict(auto, **{"memory.auto_grad_accum": False, "memory.limit_mib": 0,
                       "grad_accum_steps": 2})
  train.train_and_evaluate(train_test.load("configs/rga.py:tiny", hand), str(tmp_path / "hand"))
  a, h = train_test.losses(tmp_path / "auto"), train_test.losses(tmp_path / "hand")
  assert len(a) == 2 and a == h


# ----------------------------------------------------------------------------- sampling


def test_sampler_refuses_a_batch_that_cannot_fit_and_names_one_that_does():
  model = sampling_test.tiny_model("rga", sampling_test.CODEC.vocab_size)
  kwargs = dict(max_new_tokens=64, seed=0)
  bos = [sampling_test.TABLES.bos_id]
  with pytest.raises(preflight.OutOfMemoryError) as e:
    sampling.generate(model, bos, sampling_test.TABLES, num_samples=512, memory_limit_mib=1,
                      **kwargs)
  msg = str(e.value)
  assert msg.startswith("the sampler (512 rows x 24 tokens of KV cache) cannot fit in memory")
  rows = int(re.search(r"num_samples=(\d+)", msg).group(1))
  assert 1 <= rows < 512
  res = sampling.generate(model, bos, sampling_test.TABLES, num_samples=rows,
                          memory_limit_mib=1, **kwargs)
  assert res.tokens.shape[0] == rows
  with pytest.raises(ValueError, match="memory_check"):
    sampling.generate(model, bos, sampling_test.TABLES, memory_check="maybe", **kwargs)


def test_long_variants_keep_their_global_batch_and_pods_name_their_machine():
  assert train_test.load("configs/default.py", {}).memory.auto_grad_accum  # Every config.
  for spec in ("configs/rga.py:long", "configs/gpt.py:long", "configs/char_gpt.py:long"):
    config = train_test.load(spec, {})
    assert config.batch_size == 8 and config.memory.auto_grad_accum, spec
  for spec in ("configs/rga.py:pod", "configs/gpt.py:pod", "configs/char_gpt.py:pod"):
    assert "not a CPU" in train_test.load(spec, {}).memory.machine, spec
