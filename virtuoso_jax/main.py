r"""Trains a virtuoso_jax model.

  python -m virtuoso_jax.main --config=configs/rga.py:tiny --workdir=runs/quickstart
  python -m virtuoso_jax.main --config=configs/rga.py --workdir=runs/rga \
      --config.model.num_layers=12 --config.batch_size=64

Run the same command on every host of a multi-host TPU pod (`--worker=all`); the distributed
runtime is initialised automatically there. For a local multi-process run pass
--coordinator_address, --num_processes and --process_id (or JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID).

Outputs in --workdir: config.json (the resolved config), checkpoints/ (Orbax; a rerun resumes),
metrics.jsonl, tensorboard/.
"""

import logging as py_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/rga.py:tiny (file.py[:variant]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                                   "host:port of process 0 (explicit multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (explicit).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (explicit).")
_CPU_COLLECTIVES = flags.DEFINE_string(
    "cpu_collectives", "gloo", "CPU collectives for multi-process CPU runs ('gloo' or 'mpi').")
# The bound on how long a process outlives a lost peer (docs/pods.md): jax's coordination
# service marks a process that sent no heartbeat for this long as dead and then aborts every
# other process with a fatal error naming it ("tasks are unhealthy (stopped sending heartbeats):
# 1"); without it, the survivors would wait forever in the next collective. jax's own default is
# 100 s; heartbeats come from a C++ thread, so long compiles or input stalls do not miss them.
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 30,
    "Multi-process runs: a process that stops sending heartbeats for this many seconds (killed, "
    "host lost) is declared dead and every other process exits with an error naming it.")
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed() -> None:
  """jax.distributed.initialize(): explicit flags/env, else auto-detected clusters (TPU pods,
  SLURM, ...); single-host runs continue without it."""
  import jax  # pylint: disable=g-import-not-at-top
  num = _NUM_PROCESSES.value or (int(os.environ["JAX_NUM_PROCESSES"])
                                 if "JAX_NUM_PROCESSES" in os.environ else None)
  pid = _PROCESS_ID.value if _PROCESS_ID.value is not None else (
      int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None)
  if _COORDINATOR.value and num and num > 1:
    if pid is None:
      raise app.UsageError("--coordinator_address needs --process_id (or JAX_PROCESS_ID)")
    jax.config.update("jax_cpu_collectives_implementation", _CPU_COLLECTIVES.value)
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=num,
                               process_id=pid,
                               heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value)
    return
  try:
    jax.distributed.initialize(heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value)
  except (ValueError, RuntimeError) as e:
    # No cluster detected: a single-host run.
    logging.info("Single-process run (jax.distributed not initialised: %s)", e)


def _setup_logging() -> None:
  """Our progress at INFO on stdout; libraries (Orbax, grain, absl) at WARNING."""
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.quiet_library_logs()
  ours = py_logging.getLogger("virtuoso_jax")
  if not ours.handlers:
    handler = py_logging.StreamHandler(sys.stdout)
    handler.setFormatter(py_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    ours.addHandler(handler)
  ours.setLevel(py_logging.INFO)
  ours.propagate = False


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _setup_logging()
  _initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import config_lib  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import train  # pylint: disable=g-import-not-at-top

  from virtuoso_jax import dataset  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import paths  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import run_dir  # pylint: disable=g-import-not-at-top

  log = py_logging.getLogger("virtuoso_jax.main")
  try:
    config = config_lib.validate(_CONFIG.value)
    log.info("Process %d of %d; devices: %d global, %d local (%s)", jax.process_index(),
             jax.process_count(), jax.device_count(), jax.local_device_count(),
             jax.devices()[0].device_kind)
    if jax.process_count() > 1:
      log.info("A process that stops (killed, host lost) stops the others within about %d s "
               "(--heartbeat_timeout_seconds): the JAX distributed service's fatal error names "
               "it as task N = its process index. Rerun the same command on every host to "
               "resume.", _HEARTBEAT_TIMEOUT.value)
    log.info("Workdir %s; model %s; data %s", paths.absolute(_WORKDIR.value),
             config.model.name, dataset.dataset_name(config))
    # A run this config cannot resume stops before anything, dataset preparation included.
    run_dir.check_workdir(config, paths.absolute(_WORKDIR.value), _WORKDIR.value)
    dataset.ensure_prepared(config)  # A missing dataset is prepared once (process 0).
    result = train.train_and_evaluate(config, _WORKDIR.value)
    # Multi-process runs skip it: restoring is collective there, and the other processes exit.
    if (config.sample.write_at_end and config.ckpt.enabled and result["stopped"] == "done"
        and result["trained_steps"] and jax.process_count() == 1):
      _write_end_sample(_WORKDIR.value, log)
  # What the user can fix (a config value, the data, a diverged run) ends with its message only.
  except (config_lib.ConfigError, dataset.DatasetNotPreparedError,
          train.NonFiniteLossError) as e:
    raise SystemExit(f"error: {e}") from None


def _write_end_sample(workdir: str, log) -> None:
  """config.sample.write_at_end: one sample of the final model, in this process (on a TPU host a
  subprocess could not open the chips this process holds). A failure is reported, not raised:
  the trained checkpoints are what matters."""
  from virtuoso_jax import inference  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import paths  # pylint: disable=g-import-not-at-top
  try:
    inference.write_config_sample(workdir, paths.join(workdir, "samples"))
  except (inference.SampleError, OSError, ValueError) as e:  # (ValueError: memory pre-flight too)
    log.warning("Could not write the end-of-training sample (%s: %s); run: python -m "
                "virtuoso_jax.sample --workdir=%s", type(e).__name__, e, workdir)


def _parse_flags(argv):
  """absl's parser, after `config_lib.load_config_argv` has loaded `--config` and its
  `--config.a.b=...` overrides: a missing file, a syntax error, an exception in get_config(),
  an unknown variant, an unknown override key or a value of the wrong type is one `error:` line
  (ml_collections would raise it from inside flag parsing, as a traceback). The `--config` flag
  above then loads the file again with the same ml_collections parsing, so `_CONFIG.value` is
  the config checked here. The config path is made absolute first (relative to the CWD, else
  to the repository root), so a path relative to the repository root loads from any
  directory."""
  from virtuoso_jax import config_lib  # pylint: disable=g-import-not-at-top  (no jax)
  try:
    _, argv = config_lib.load_config_argv(argv)
  except config_lib.ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  return app.parse_flags_with_usage(argv)


def run():
  """Console-script entry point (`virtuoso-train`)."""
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_binary()  # Before JAX starts: this process's CPU settings.
  jax_config_with_absl()
  app.run(main, flags_parser=_parse_flags)


def jax_config_with_absl():
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.config_with_absl()


if __name__ == "__main__":
  run()
