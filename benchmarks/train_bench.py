r"""Training throughput and MFU of the real train step, input pipeline included.

  python -m benchmarks.train_bench [--steps=20] [--data_dir=/tmp/tfds] [--configs=rga,gpt,char]

For `rga.py:original`, `gpt.py:original` and `char_gpt.py:original` at their original batch
sizes (token originals with `model.vocab_size=0`: our codec's vocabulary is larger than 390), it
builds the real `trainer.Trainer` (grain pipeline over the prepared Bach dataset, sharded jitted
step with donation), then times `steps` steps exactly as the training loop runs them
(next batch -> global array -> step), after warm-up. The matmul peak (benchmarks.common) is
measured in the same process right before and right after (the higher is used), and
MFU = train FLOPs/token (MaxText convention, virtuoso_jax.flops) x tokens/s / peak. It also
reports the share of wall time the step waited for input (`input_wait_frac`: time in `next()`
+ device put, which must stay near 0) and the peak RSS (`train_peak_rss`).

One JSON line per figure, e.g.
  {"name": "train_mfu", "value": <fraction>, "unit": "fraction", "config": "rga.py:original", ...}
Each config runs in its own subprocess (its peak RSS is its own; an OOM ends only that config,
reported as a `train_mfu` line with `"value": null` and the reason). The datasets are prepared
if missing (bach_token, bach_char; no network).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags
import jax

from benchmarks import common
from virtuoso_jax import config_lib
from virtuoso_jax import dataset
from virtuoso_jax import flops
from virtuoso_jax import trainer as trainer_lib

CONFIGS = {
    "rga": ("configs/rga.py:original", {"model.vocab_size": 0}),
    "gpt": ("configs/gpt.py:original", {"model.vocab_size": 0}),
    "char": ("configs/char_gpt.py:original", {}),
}

_STEPS = flags.DEFINE_integer("steps", 20, "Timed train steps per config.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps before the timed ones.")
_DATA_DIR = flags.DEFINE_string("data_dir", os.environ.get("TFDS_DATA_DIR", ""),
                                "TFDS data dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets).")
_CONFIGS = flags.DEFINE_string("configs", "rga,gpt,char",
                               f"Comma-separated, from {sorted(CONFIGS)}.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/virtuoso_train_bench", "Trainer workdir.")
_TIMEOUT = flags.DEFINE_integer("timeout", 3600, "Seconds per config.")
# Set by this script for the subprocess that measures one config (common.run_worker).
_WORKER = flags.DEFINE_bool("worker", False, "Internal: run the configs in this process.")


def bench(spec: str, overrides: dict, steps: int, warmup: int, data_dir: str, workdir: str):
  config = config_lib.load_config(spec, dict(overrides, **{
      "data.data_dir": data_dir, "num_train_steps": warmup + steps + 1,
      "ckpt.enabled": False, "tensorboard": False}))
  config_lib.validate(config)
  dataset.ensure_prepared(config)
  trainer = trainer_lib.Trainer(config, workdir)
  trainer.compile()
  it = trainer.data.train_iterator(warmup + steps + 1)
  # Warm up exactly as the timed loop runs: the first step grows the kept host heap once (see
  # virtuoso_jax.host_memory), later ones reuse it.
  m = None
  for _ in range(warmup):
    m = trainer.step(trainer.data.to_global(next(it)))
  jax.block_until_ready((m, trainer.state))
  peak = common.matmul_peak_flops()
  wait = 0.0
  t0 = time.perf_counter()
  m = None
  for _ in range(steps):
    t = time.perf_counter()
    batch = trainer.data.to_global(next(it))
    wait += time.perf_counter() - t
    m = trainer.step(batch)
  jax.block_until_ready((m, trainer.state))
  elapsed = time.perf_counter() - t0
  # The higher of the peaks measured right before and right after: a neighbour stealing the
  # CPU during one peak measurement must not inflate the MFU.
  peak = max(peak, common.matmul_peak_flops())
  cfg = trainer.config
  tokens = steps * cfg.batch_size * cfg.model.max_len
  tps = tokens / elapsed
  mfu = flops.mfu(tps, trainer.flops_per_token, peak)
  extra = dict(config=spec, params=trainer.num_params, batch=cfg.batch_size,
               seq_len=cfg.model.max_len, vocab=cfg.model.vocab_size, steps=steps,
               backend=jax.default_backend(), devices=jax.device_count())
  common.emit("train_tokens_per_s", round(tps, 1), "tokens/s", **extra)
  common.emit("train_step_time", round(elapsed / steps, 4), "s", **extra)
  common.emit("train_mfu", round(mfu, 4), "fraction", peak_gflops=round(peak / 1e9, 1),
              flops_per_token=trainer.flops_per_token, **extra)
  common.emit("train_input_wait_frac", round(wait / elapsed, 4), "fraction", **extra)
  common.emit("train_params", trainer.num_params, "parameters", **extra)
  common.emit("train_peak_rss", round(common.peak_rss_bytes() / 2**20, 1), "MiB", **extra)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  names = _CONFIGS.value.split(",")
  unknown = [n for n in names if n not in CONFIGS]
  if unknown:
    raise app.UsageError(f"--configs: unknown {unknown}; choose from {sorted(CONFIGS)}")
  steps, warmup, data_dir, workdir = _STEPS.value, _WARMUP.value, _DATA_DIR.value, _WORKDIR.value
  if _WORKER.value:
    for name in names:
      spec, overrides = CONFIGS[name]
      bench(spec, overrides, steps, warmup, data_dir, workdir)
    return
  # Each config in its own process: the heap one config's steps keep (virtuoso_jax's malloc
  # settings) would otherwise stay resident under the next one and blur its memory figure;
  # char_gpt.py:original (14 GB) after rga.py:original (5 GB) was OOM-killed at 24 GiB.
  for name in names:
    print(f"train_bench: {CONFIGS[name][0]} ({warmup} + {steps} steps, own process)",
          file=sys.stderr, flush=True)
    _, err = common.run_worker("benchmarks.train_bench", [
        "--worker", f"--configs={name}", f"--steps={steps}", f"--warmup={warmup}",
        f"--data_dir={data_dir}", f"--workdir={workdir}"], _TIMEOUT.value)
    if err:
      common.emit("train_mfu", None, "fraction", config=CONFIGS[name][0], error=err)


if __name__ == "__main__":
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_binary()  # What the binaries set on a CPU host, before JAX starts.
  app.run(main)
