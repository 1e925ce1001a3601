"""Mesh construction and logical-axis sharding on 8 simulated CPU devices (tests/conftest.py)."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import default
from virtuoso_jax import models, sharding


def _parallel(shape=(2, 2, 2), dcn=(1, 1, 1)):
  p = default.get_config().parallel
  p.mesh_shape, p.dcn_mesh_shape = shape, dcn
  return p


def test_resolve_mesh_shape():
  assert sharding.resolve_mesh_shape((1, -1, 1), (1, 1, 1), 8) == (1, 8, 1)
  assert sharding.resolve_mesh_shape((2, -1, 2), (1, 1, 1), 8) == (2, 2, 2)
  assert sharding.resolve_mesh_shape((1, -1, 1), (2, 1, 1), 8) == (1, 4, 1)
  with pytest.raises(ValueError, match="do not divide"):
    sharding.resolve_mesh_shape((3, -1, 1), (1, 1, 1), 8)
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.resolve_mesh_shape((-1, -1, 1), (1, 1, 1), 8)
  with pytest.raises(ValueError, match="device count"):
    sharding.resolve_mesh_shape((2, 2, 1), (1, 1, 1), 8)


def test_create_mesh_is_auto():
  if len(jax.devices()) != 8:
    pytest.skip("needs the 8 simulated CPU devices of tests/conftest.py")
  mesh = sharding.create_mesh(_parallel((1, -1, 1)))
  assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError):
    sharding.create_mesh(_parallel((3, -1, 1)))


def test_logical_to_spec():
  rules = sharding.logical_rules(_parallel())
  assert sharding.logical_to_spec(("embed", "mlp"), rules) == P("fsdp", "tensor")
  assert sharding.logical_to_spec(("batch", "length"), rules) == P(("data", "fsdp"), None)
  assert sharding.logical_to_spec(("heads", "mlp"), rules) == P("tensor", None)  # axis used once


def test_sharded_model_specs_and_forward():
  if len(jax.devices()) != 8:
    pytest.skip("needs the 8 simulated CPU devices of tests/conftest.py")
  mesh = sharding.create_mesh(_parallel((2, 2, 2)))
  rules = sharding.logical_rules(_parallel())
  cfg = default.get_config().model
  cfg.vocab_size, cfg.num_layers, cfg.num_heads, cfg.emb_dim, cfg.mlp_dim = 38, 1, 2, 16, 32
  cfg.max_len = cfg.max_relative = 8
  model = sharding.create_sharded(lambda: models.create_model(cfg, nnx.Rngs(0)), mesh, rules)
  specs = {"/".join(map(str, path)): var.get_value().sharding.spec
           for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert specs["embed"] == P("tensor", "fsdp")
  assert specs["pos_emb"] == P(None, "fsdp")
  assert specs["head"] == P("fsdp", "tensor")
  assert specs["blocks/0/attn/qkv_kernel"] == P("fsdp", None, "tensor", None)
  assert specs["blocks/0/attn/out_kernel"] == P("tensor", None, "fsdp")
  assert specs["blocks/0/attn/rel_emb"] == P(None, None)
  assert specs["blocks/0/mlp/wi"] == P("fsdp", "tensor")
  assert specs["blocks/0/mlp/wo"] == P("tensor", "fsdp")
  assert specs["blocks/0/ln1/scale"] == P("fsdp")

  reference = models.create_model(cfg, nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (4, 8), 0, 38)
  want = reference(tokens)
  sharded_tokens = jax.device_put(tokens, sharding.batch_sharding(mesh, rules))
  got = jax.jit(lambda m, t: m(t))(model, sharded_tokens)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  # Optimizer-like state mirrors the params; scalars are replicated.
  state = sharding.state_shardings(nnx.state(model), mesh, rules)
  flat = dict(nnx.to_flat_state(state))
  assert flat[("blocks", 0, "mlp", "wi")].get_value().spec == P("fsdp", "tensor")
  assert flat[("dropout_rngs", "dropout", "count")].get_value().spec == P()
