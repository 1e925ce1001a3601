"""Mesh construction and logical-axis sharding on 8 simulated CPU devices (tests/conftest.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import default
from virtuoso_jax import config_lib, models, sharding


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
  assert sharding.logical_to_spec(None, rules) == P()


def _old_logical_to_spec(logical_axes, rules, shape, mesh):
  """The hand mapping sharding.py had before it used flax's rules (commit 4868e77), kept as the
  reference: rule lookup, axes the mesh lacks dropped, a mesh axis used once, and a dimension
  that does not divide replicated."""
  table = dict(rules)
  used, spec = set(), []
  for dim, name in enumerate(logical_axes):
    target = table.get(name) if name is not None else None
    axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    axes = tuple(a for a in axes if a in mesh.shape and a not in used)
    if axes and shape[dim] % math.prod(mesh.shape[a] for a in axes):
      axes = ()
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def _tiny_model_config(name="rga", vocab_size=64):
  cfg = default.get_config().model
  cfg.name = name
  cfg.vocab_size, cfg.num_layers, cfg.num_heads, cfg.emb_dim, cfg.mlp_dim = (
      vocab_size, 2, 8, 64, 128)
  cfg.max_len = cfg.max_relative = 16
  return cfg


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 8, 1), (1, 2, 4), (8, 1, 1), (1, 1, 8)])
@pytest.mark.parametrize("name", ["rga", "gpt"])
def test_flax_shardings_equal_the_old_hand_mapping(mesh_shape, name):
  """With the default rules and dimensions that divide, flax's mapping places every parameter
  and optimizer moment exactly where the old hand mapping did; step counters stay replicated."""
  if len(jax.devices()) != 8:
    pytest.skip("needs the 8 simulated CPU devices of tests/conftest.py")
  mesh = sharding.create_mesh(_parallel(mesh_shape))
  rules = sharding.logical_rules(_parallel(mesh_shape))
  cfg = _tiny_model_config(name)
  params = nnx.state(nnx.eval_shape(lambda: models.create_model(cfg, nnx.Rngs(0))), nnx.Param)
  opt_state = jax.eval_shape(optax.adamw(1e-3).init, params)
  checked = 0
  for tree in (params, opt_state):
    shardings = sharding.state_shardings(tree, mesh, rules)
    is_var = lambda x: isinstance(x, nnx.Variable)
    for var, got in zip(jax.tree.leaves(tree, is_leaf=is_var),
                        jax.tree.leaves(shardings, is_leaf=is_var)):
      got = got.get_value() if is_var(got) else got
      axes = var.get_metadata().get("out_sharding") if is_var(var) else None
      shape = (var.get_value() if is_var(var) else var).shape
      want = _old_logical_to_spec(axes, rules, shape, mesh) if axes else P()
      assert got == jax.sharding.NamedSharding(mesh, want), (axes, shape)
      checked += 1
  assert checked > 2 * len(jax.tree.leaves(params))  # params, mu and nu, plus the counter


def test_non_dividing_dimension_is_an_error():
  """An odd vocabulary on tensor=2 is a ShardingError naming the parameters, the logical axis,
  the mesh axes and sizes and the fixes, not silent replication; each fix it names works."""
  if len(jax.devices()) != 8:
    pytest.skip("needs the 8 simulated CPU devices of tests/conftest.py")
  mesh = sharding.create_mesh(_parallel((2, 2, 2)))
  rules = sharding.logical_rules(_parallel())
  make = lambda cfg: (lambda: models.create_model(cfg, nnx.Rngs(0)))
  with pytest.raises(sharding.ShardingError) as err:
    sharding.check_shardable(make(_tiny_model_config(vocab_size=1061)), mesh, rules)
  msg = str(err.value)
  assert isinstance(err.value, config_lib.ConfigError)  # The binaries print it as `error: ...`.
  assert "parameter embed, shape (1061, 64), dimension 0 (logical axis 'vocab'" in msg
  assert "parameter head, shape (64, 1061), dimension 1" in msg
  assert "mesh axes ('tensor',) of sizes (2,) (product 2)" in msg
  assert "--config.model.vocab_size=1062" in msg and "('vocab', None)" in msg
  with pytest.raises(sharding.ShardingError):  # create_sharded checks before it compiles.
    sharding.create_sharded(make(_tiny_model_config(vocab_size=1061)), mesh, rules)
  # The fixes: a padded vocabulary, or the vocabulary replicated.
  sharding.check_shardable(make(_tiny_model_config(vocab_size=1062)), mesh, rules)
  replicated_vocab = tuple((n, None if n == "vocab" else t) for n, t in rules)
  sharding.check_shardable(make(_tiny_model_config(vocab_size=1061)), mesh, replicated_vocab)
  # Other dimensions too: 6 heads on tensor=4, with the config field to change.
  mesh = sharding.create_mesh(_parallel((1, 2, 4)))
  cfg = _tiny_model_config(vocab_size=64)
  cfg.num_heads = 6
  cfg.emb_dim = 48
  with pytest.raises(sharding.ShardingError, match=r"set model\.num_heads so that it is a "
                     r"multiple of 4"):
    sharding.check_shardable(make(cfg), mesh, rules)


def test_rule_problems_are_errors():
  """A logical name without a rule, or two dimensions of one parameter on one mesh axis, is a
  ShardingError (the old mapping replicated both silently)."""
  if len(jax.devices()) != 8:
    pytest.skip("needs the 8 simulated CPU devices of tests/conftest.py")
  mesh = sharding.create_mesh(_parallel((2, 2, 2)))
  rules = sharding.logical_rules(_parallel())
  var = lambda axes: nnx.Param(jax.ShapeDtypeStruct((4, 4), jnp.float32), out_sharding=axes,
                               eager_sharding=False)
  with pytest.raises(sharding.ShardingError, match=r"logical axis 'nope'\) has no rule"):
    sharding.state_shardings({"w": var(("nope", "embed"))}, mesh, rules)
  with pytest.raises(sharding.ShardingError, match=r"'tensor', which dimension 0 already uses"):
    sharding.state_shardings({"w": var(("heads", "mlp"))}, mesh, rules)
  got = sharding.state_shardings({"w": var(("embed", "mlp")), "step": jnp.zeros((), jnp.int32)},
                                 mesh, rules)
  assert got["w"].get_value().spec == P("fsdp", "tensor") and got["step"].spec == P()


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
