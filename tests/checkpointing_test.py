"""Checkpointer: round trip with the grain iterator, best/latest retention, corrupt fallback,
restore onto a different mesh, params-only restore."""

import logging
import os

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from virtuoso_jax import checkpointing


def _ckpt_config(keep=2, keep_best=True):
  return ml_collections.ConfigDict(dict(enabled=True, every_steps=1, keep=keep,
                                        keep_best=keep_best, async_save=True))


def _mesh(shape):
  devices = np.asarray(jax.devices()[:int(np.prod(shape))]).reshape(shape)
  return jax.sharding.Mesh(devices, ("a", "b"))


def _state(mesh, seed=0):
  k = jax.random.key(seed)
  w = jax.device_put(jax.random.normal(k, (8, 16)), NamedSharding(mesh, P("a", "b")))
  params = {"dense": {"kernel": w, "bias": jnp.zeros((16,))}}
  opt_state = optax.adam(1e-3).init(params)
  train = {"step": jnp.asarray(0, jnp.int32), "rng": jax.random.key_data(jax.random.key(seed))}
  return {"params": params, "opt_state": opt_state, "train": train}


def _abstract(state, mesh=None, spec=None):
  def f(x):
    sharding = x.sharding
    if mesh is not None and x.ndim == 2 and x.shape == (8, 16):
      sharding = NamedSharding(mesh, spec)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(f, state)


def _iter():
  return iter(grain.MapDataset.range(100).map(lambda i: i * 2).to_iter_dataset())


def test_round_trip_with_iterator_and_different_mesh(tmp_path):
  mesh = _mesh((2, 4))
  state = _state(mesh)
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config())
  it = _iter()
  for _ in range(5):
    next(it)
  ckpt.save(5, state, it)
  ckpt.wait()
  expected_next = next(it)
  # Restore onto a (4, 2) mesh with a different spec.
  mesh2 = _mesh((4, 2))
  it2 = _iter()
  step, restored = ckpt.restore(_abstract(state, mesh2, P("b", "a")), it2)
  ckpt.close()
  assert step == 5
  w = restored["params"]["dense"]["kernel"]
  np.testing.assert_array_equal(np.asarray(w), np.asarray(state["params"]["dense"]["kernel"]))
  assert w.sharding.mesh.shape == mesh2.shape and w.sharding.spec == P("b", "a")
  assert next(it2) == expected_next


def test_keeps_latest_and_best(tmp_path):
  mesh = _mesh((2, 4))
  state = _state(mesh)
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=2))
  losses = {1: 3.0, 2: 1.0, 3: 2.0, 4: 2.5, 5: 2.7}
  for s, loss in losses.items():
    ckpt.save(s, state, metrics={"eval/loss": loss})
    ckpt.wait()
  ckpt.save(6, state)  # No metrics: kept only as a latest.
  ckpt.close()
  assert checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=2)).all_steps() == [2, 5, 6]
  step, params = checkpointing.restore_params(str(tmp_path), best=True)
  assert step == 2
  np.testing.assert_array_equal(np.asarray(params["dense"]["kernel"]),
                                np.asarray(state["params"]["dense"]["kernel"]))
  step, _ = checkpointing.restore_params(str(tmp_path), _abstract(state)["params"])
  assert step == 6


def test_corrupt_latest_falls_back_with_warning(tmp_path, caplog):
  mesh = _mesh((2, 4))
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=3, keep_best=False))
  s1, s2 = _state(mesh, 1), _state(mesh, 2)
  ckpt.save(1, s1)
  ckpt.save(2, s2)
  ckpt.close()
  # Damage every file of step 2's params.
  damaged = 0
  for root, _, files in os.walk(tmp_path / "checkpoints" / "2" / "params"):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"\x00garbage")
      damaged += 1
  assert damaged
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=3, keep_best=False))
  with caplog.at_level(logging.WARNING):
    step, restored = ckpt.restore(_abstract(s1))
  assert step == 1
  np.testing.assert_array_equal(np.asarray(restored["params"]["dense"]["kernel"]),
                                np.asarray(s1["params"]["dense"]["kernel"]))
  assert any("unreadable" in r.message for r in caplog.records)
  assert (tmp_path / "checkpoints_corrupt").is_dir()
  # The run can now save step 2 again.
  assert ckpt.save(2, s1)
  ckpt.close()


def test_restore_params_missing_workdir(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoints"):
    checkpointing.restore_params(str(tmp_path / "nope"))
