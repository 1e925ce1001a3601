"""Checkpointer: round trip with the grain iterator, best/latest retention, corrupt fallback,
restore onto a different mesh, params-only restore."""

import errno
import json
import logging
import os
import shutil

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
  assert any("damaged" in r.message for r in caplog.records)
  assert (tmp_path / "checkpoints_corrupt").is_dir()
  # The run can now save step 2 again.
  assert ckpt.save(2, s1)
  ckpt.close()


def test_restore_params_missing_workdir(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoints"):
    checkpointing.restore_params(str(tmp_path / "nope"))


# ------------------------------------------------------------------ integrity, mismatch, disk


def _leaves_equal_bitwise(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


def _flip_one_bit(step_dir, item="params"):
  """Flips one bit in the middle of the largest data file of `item` (the random kernel).

  `<item>/d/` holds the OCDBT data files a restore reads (the per-process copies under
  `ocdbt.process_N/d/` were merged into them)."""
  data_dir = step_dir / item / "d"
  files = [str(p) for p in data_dir.iterdir()]
  assert files, list(os.walk(step_dir / item))
  path = max(files, key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x10
  with open(path, "wb") as f:
    f.write(data)
  return path


def test_digest_ignores_sharding_and_sees_one_bit():
  mesh = _mesh((2, 4))
  s = _state(mesh, 3)
  d = checkpointing.state_digest(s)
  other = jax.tree.map(lambda x: jax.device_put(np.asarray(x), jax.devices()[0]), s)
  assert checkpointing.state_digest(other) == d  # Same values on one device: same digests.
  w = np.asarray(s["params"]["dense"]["kernel"]).copy()
  w.view(np.uint32)[3, 5] ^= 1 << 7
  s2 = dict(s, params={"dense": dict(s["params"]["dense"], kernel=jnp.asarray(w))})
  d2 = checkpointing.state_digest(s2)
  assert d2["params/dense/kernel"] != d["params/dense/kernel"]
  assert d2["params/dense/bias"] == d["params/dense/bias"]


def test_flipped_bit_falls_back_and_quarantines_it(tmp_path, caplog):
  mesh = _mesh((2, 4))
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=3, keep_best=False))
  s1, s2 = _state(mesh, 1), _state(mesh, 2)
  it = _iter()
  next(it)
  ckpt.save(1, s1, it)
  next(it)
  ckpt.save(2, s2, it)
  ckpt.close()
  # An intact step restores bit for bit (every leaf of params, opt_state and train).
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=3, keep_best=False))
  step, restored = ckpt.restore(_abstract(s2), _iter())
  assert step == 2
  _leaves_equal_bitwise(restored, s2)
  ckpt.close()

  _flip_one_bit(tmp_path / "checkpoints" / "2")
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=3, keep_best=False))
  it2 = _iter()
  with caplog.at_level(logging.WARNING):
    step, restored = ckpt.restore(_abstract(s1), it2)
  assert step == 1
  _leaves_equal_bitwise(restored, s1)
  assert next(it2) == 2  # The iterator is at step 1's position (one element consumed).
  assert ckpt.all_steps() == [1]
  moved = os.listdir(tmp_path / "checkpoints_corrupt")
  assert len(moved) == 1 and moved[0].startswith("2.")
  assert any("damaged" in r.message for r in caplog.records)
  ckpt.close()


def test_array_not_matching_its_digest_is_damage(tmp_path, caplog):
  # Arrays that read without an error but are not what was saved (a garbled write, a bit
  # flipped before the storage layer's own checksums): the digests catch them.
  mesh = _mesh((2, 4))
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=3, keep_best=False))
  s1, s2 = _state(mesh, 1), _state(mesh, 2)
  ckpt.save(1, s1)
  ckpt.save(2, s2)
  ckpt.close()
  path = tmp_path / "checkpoints" / "2" / "integrity" / "metadata"
  saved = json.loads(path.read_text())
  saved["digests"]["opt_state"]["0/mu/dense/kernel"][0] ^= 1
  path.write_text(json.dumps(saved))
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=3, keep_best=False))
  with caplog.at_level(logging.WARNING):
    step, restored = ckpt.restore(_abstract(s1))
  ckpt.close()
  assert step == 1
  _leaves_equal_bitwise(restored, s1)
  assert any("opt_state/0/mu/dense/kernel" in r.message for r in caplog.records)
  assert os.listdir(tmp_path / "checkpoints_corrupt")[0].startswith("2.")


def test_every_step_failing_moves_nothing(tmp_path):
  mesh = _mesh((2, 4))
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=3, keep_best=False))
  ckpt.save(1, _state(mesh, 1))
  ckpt.save(2, _state(mesh, 2))
  ckpt.close()
  for step in ("1", "2"):
    _flip_one_bit(tmp_path / "checkpoints" / step)
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=3, keep_best=False))
  with pytest.raises(checkpointing.CheckpointRestoreError, match="step 2: .*step 1: "):
    ckpt.restore(_abstract(_state(mesh)))
  ckpt.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
  assert not (tmp_path / "checkpoints_corrupt").exists()


def test_other_shapes_are_a_mismatch_not_damage(tmp_path):
  mesh = _mesh((2, 4))
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=3, keep_best=False))
  ckpt.save(1, _state(mesh, 1))
  ckpt.close()
  params = {"dense": {"kernel": jnp.zeros((8, 32)), "bias": jnp.zeros((32,))},
            "extra": {"kernel": jnp.zeros((4, 4))}}
  other = {"params": params, "opt_state": optax.adam(1e-3).init(params),
           "train": _state(mesh)["train"]}
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=3, keep_best=False))
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"params/dense/kernel \(8, 16\) -> \(8, 32\).*params/extra/kernel"):
    ckpt.restore(_abstract(other))
  ckpt.close()
  assert os.listdir(tmp_path / "checkpoints") == ["1"]
  assert not (tmp_path / "checkpoints_corrupt").exists()
  # The same check for fine-tuning from another run.
  with pytest.raises(checkpointing.CheckpointMismatchError, match=r"\(8, 16\) -> \(8, 32\)"):
    checkpointing.fine_tune_params(str(tmp_path), _abstract(other)["params"])
  step, p = checkpointing.fine_tune_params(str(tmp_path), _abstract(_state(mesh))["params"])
  assert step == 1
  _leaves_equal_bitwise(p, _state(mesh, 1)["params"])


def test_full_disk_fails_at_the_save_with_one_line(tmp_path, monkeypatch):
  mesh = _mesh((2, 4))
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=3, keep_best=False))
  s1 = _state(mesh, 1)
  ckpt.save(1, s1)
  ckpt.wait()
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(checkpointing.paths.shutil, "disk_usage",
                      lambda p: usage._replace(free=4096))
  with pytest.raises(checkpointing.CheckpointSaveError) as err:
    ckpt.save(2, _state(mesh, 2))
  msg = str(err.value)
  assert "\n" not in msg and str(tmp_path / "checkpoints") in msg and "0.00 GiB free" in msg
  assert "step 1" in msg
  assert isinstance(err.value, checkpointing.config_lib.ConfigError)  # main prints one line.
  ckpt.close()
  monkeypatch.undo()
  step, restored = checkpointing.Checkpointer(
      str(tmp_path), _ckpt_config(keep=3, keep_best=False)).restore(_abstract(s1))
  assert step == 1
  _leaves_equal_bitwise(restored, s1)


def test_failed_async_save_is_one_error_at_the_next_save(tmp_path, monkeypatch, caplog):
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
  mesh = _mesh((2, 4))
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=1, keep_best=False))
  s1 = _state(mesh, 1)
  ckpt.save(1, s1)
  ckpt.wait()

  async def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
  for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
    monkeypatch.setattr(cls, "finalize", no_space)
  caplog.clear()
  assert ckpt.save(2, _state(mesh, 2))  # Starts; the background commit fails.
  with caplog.at_level(logging.INFO), pytest.raises(
      checkpointing.CheckpointSaveError,
      match=r"saving checkpoint step 2 to .* failed \(no space left on device\); "
            r"free space there: .* GiB\. The last good checkpoint, step 1"):
    ckpt.save(3, _state(mesh, 3))
  # Orbax's own ERROR records (with ~500 lines of traceback) are filtered out.
  errors = [r.getMessage()[:200] for r in caplog.records if r.levelno >= logging.ERROR]
  assert not errors, errors
  monkeypatch.undo()
  ckpt.close()
  step, restored = checkpointing.Checkpointer(
      str(tmp_path), _ckpt_config(keep=1, keep_best=False)).restore(_abstract(s1))
  assert step == 1
  _leaves_equal_bitwise(restored, s1)
