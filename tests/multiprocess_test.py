"""Two processes (jax.distributed on localhost, 2 x 4 CPU devices, gloo collectives) train
exactly like one process with 8 devices: each process builds only its own rows of every global
batch, checkpoints are written together, and the losses agree step for step."""

import socket

import numpy as np
import pytest

import input_pipeline_test
import train_test


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, fixture_corpus):
  return input_pipeline_test.build_fixture_dataset(str(tmp_path_factory.mktemp("tfds")),
                                                   fixture_corpus)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one(data_dir, tmp_path):
  o = train_test.small(data_dir, num_train_steps=3, **{"ckpt.every_steps": 3,
                                                       "parallel.mesh_shape": "(2,2,2)"},
                       **train_test.TENSOR2_VOCAB)
  spec = train_test.SPECS["rga"]
  port = _free_port()
  work = tmp_path / "two"
  procs = [train_test.run_main(
      spec, o, work, devices=4, wait=False,
      extra_args=[f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}"]) for i in range(2)]
  one = train_test.run_main(spec, o, tmp_path / "one", devices=8, wait=False)
  for p in procs + [one]:
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 0, out[-4000:]
  a, b = train_test.losses(work), train_test.losses(tmp_path / "one")
  assert sorted(a) == sorted(b) == [1, 2, 3]
  np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=1e-5)
  # The two-process run wrote one checkpoint at step 3 (both processes took part).
  assert (work / "checkpoints" / "3").is_dir()
