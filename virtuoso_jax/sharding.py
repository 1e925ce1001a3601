"""Device meshes and logical-axis sharding for virtuoso_jax.

Models name only *logical* axes on their parameters (`embed`, `mlp`, `heads`, `kv`, `vocab`,
`length`, `relative`) through the `out_sharding` metadata that `nnx.with_partitioning` writes
on each `nnx.Variable`. This module is the one place that maps those names onto a mesh:

  mesh = sharding.create_mesh(config.parallel)             # axes (data, fsdp, tensor), AxisType.Auto
  rules = sharding.logical_rules(config.parallel)
  model = sharding.create_sharded(lambda: models.create_model(config.model, nnx.Rngs(0)),
                                  mesh, rules)             # never materialised unsharded
  shardings = sharding.state_shardings(nnx.state(model), mesh, rules)
  batch = jax.device_put(tokens, sharding.batch_sharding(mesh))

Rules (a tuple of `(logical_name, mesh_axes)` pairs, `mesh_axes` a mesh axis name, a tuple of
them, or None) map logical names to mesh axes. The mapping itself is flax's: the rules are
installed with `nnx.logical_axis_rules` and `nnx.get_partition_spec` / `nnx.get_named_sharding`
read each Variable's `out_sharding` through them. On top of that, every sharded parameter is
checked before anything is placed or compiled: a dimension whose size does not divide by the
product of its mesh axes, a logical name without a rule, or a mesh axis used twice in one
parameter is a `ShardingError` (a `config_lib.ConfigError`) that names the parameter, its
shape, the logical axis, the mesh axes and their sizes, and the config change that fixes it.
Nothing is silently replicated (an odd vocabulary on a tensor axis of 2 must be padded with
`model.vocab_size` or mapped to None).

Optimizer state: `nnx.Optimizer` (and optax applied to a `nnx.State` of Variables) keeps the
parameter metadata on the moments, so they mirror the parameters' shardings; anything without
logical metadata (step counters, RNG keys, scalars) is replicated.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from flax import nnx

from virtuoso_jax import config_lib

LogicalRules = tuple[tuple[str, Any], ...]


class ShardingError(config_lib.ConfigError):
  """A parameter cannot be sharded as the rules and the mesh say (a dimension that does not
  divide by its mesh axes, a logical name without a rule, a mesh axis used twice). A ConfigError,
  so the binaries report it as one `error:` line: the user fixes it in the config."""

__all__ = [
    "ShardingError",
    "create_mesh",
    "logical_rules",
    "logical_to_spec",
    "state_shardings",
    "check_shardable",
    "batch_sharding",
    "create_sharded",
    "resolve_mesh_shape",
]


def resolve_mesh_shape(mesh_shape: Sequence[int], dcn_mesh_shape: Sequence[int],
                       num_devices: int) -> tuple[int, ...]:
  """Fills the (at most one) -1 in `mesh_shape` so that ici x dcn uses all devices.

  Args:
    mesh_shape: per-slice (ICI) sizes, one entry may be -1.
    dcn_mesh_shape: across-slice sizes (all positive), same length.
    num_devices: total number of devices.

  Returns:
    The ICI mesh shape with -1 resolved.

  Raises:
    ValueError: on more than one -1, non-positive sizes, or sizes that do not multiply out to
      `num_devices`.
  """
  mesh_shape = tuple(int(s) for s in mesh_shape)
  dcn_mesh_shape = tuple(int(s) for s in dcn_mesh_shape)
  if len(mesh_shape) != len(dcn_mesh_shape):
    raise ValueError(f"parallel.mesh_shape {mesh_shape} and parallel.dcn_mesh_shape "
                     f"{dcn_mesh_shape} must have the same length")
  if any(s <= 0 for s in dcn_mesh_shape):
    raise ValueError(f"parallel.dcn_mesh_shape {dcn_mesh_shape}: sizes must be positive")
  unknown = [i for i, s in enumerate(mesh_shape) if s == -1]
  if len(unknown) > 1:
    raise ValueError(f"parallel.mesh_shape {mesh_shape}: at most one -1 is allowed")
  if any(s <= 0 and s != -1 for s in mesh_shape):
    raise ValueError(f"parallel.mesh_shape {mesh_shape}: sizes must be positive or -1")
  dcn = math.prod(dcn_mesh_shape)
  if num_devices % dcn:
    raise ValueError(f"parallel.dcn_mesh_shape {dcn_mesh_shape} (product {dcn}) does not divide "
                     f"the device count {num_devices}")
  per_slice = num_devices // dcn
  known = math.prod(s for s in mesh_shape if s != -1)
  if unknown:
    if per_slice % known:
      raise ValueError(f"parallel.mesh_shape {mesh_shape}: the fixed sizes (product {known}) do "
                       f"not divide the {per_slice} devices per slice ({num_devices} devices / "
                       f"dcn {dcn})")
    mesh_shape = tuple(per_slice // known if s == -1 else s for s in mesh_shape)
  elif known != per_slice:
    raise ValueError(f"parallel.mesh_shape {mesh_shape} (product {known}) x dcn_mesh_shape "
                     f"{dcn_mesh_shape} (product {dcn}) != device count {num_devices}")
  return mesh_shape


def create_mesh(parallel_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the (data, fsdp, tensor) mesh of `config.parallel`.

  Args:
    parallel_config: `config.parallel` (mesh_axes, mesh_shape with one optional -1,
      dcn_mesh_shape).
    devices: devices to use; default `jax.devices()` (all processes' devices).

  Returns:
    A `jax.sharding.Mesh` whose axes are all `AxisType.Auto` (GSPMD propagation; the models are
    not written for explicit-sharding mode, style.md P8).
  """
  if devices is None:
    devices = jax.devices()
  devices = list(devices)
  axes = tuple(parallel_config.mesh_axes)
  dcn_shape = tuple(int(s) for s in parallel_config.dcn_mesh_shape)
  ici_shape = resolve_mesh_shape(parallel_config.mesh_shape, dcn_shape, len(devices))
  if len(axes) != len(ici_shape):
    raise ValueError(f"parallel.mesh_axes {axes} and parallel.mesh_shape {ici_shape} must have "
                     "the same length")
  if math.prod(dcn_shape) > 1:
    device_array = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices)
  else:
    try:
      device_array = mesh_utils.create_device_mesh(ici_shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
      # Topologies mesh_utils does not model (e.g. a subset of TPU chips): plain order.
      import numpy as np  # pylint: disable=g-import-not-at-top
      device_array = np.asarray(devices, dtype=object).reshape(ici_shape)
  return Mesh(device_array, axes, axis_types=(AxisType.Auto,) * len(axes))


def logical_rules(parallel_config) -> LogicalRules:
  """The logical-axis rules of `config.parallel` as a tuple of (name, mesh_axes) pairs."""
  rules = []
  for entry in parallel_config.logical_axis_rules:
    if len(entry) != 2:
      raise ValueError(f"parallel.logical_axis_rules entry {entry!r}: expected (name, mesh_axes)")
    name, target = entry
    if isinstance(target, list):
      target = tuple(target)
    rules.append((str(name), target))
  names = [n for n, _ in rules]
  dupes = {n for n in names if names.count(n) > 1}
  if dupes:
    raise ValueError(f"parallel.logical_axis_rules: logical names {sorted(dupes)} appear twice")
  return tuple(rules)


def _as_axes(target) -> tuple[str, ...]:
  if target is None:
    return ()
  if isinstance(target, str):
    return (target,)
  return tuple(target)


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def logical_to_spec(logical_axes: Iterable[str | None] | None,
                    rules: LogicalRules) -> PartitionSpec:
  """Maps logical axis names to a `PartitionSpec` with flax's rule lookup.

  Args:
    logical_axes: one logical name (or None) per array dimension; None for a replicated array.
    rules: (logical_name, mesh_axes) pairs.

  Returns:
    The PartitionSpec `nnx.get_partition_spec` gives a Variable annotated with these axes under
    `nnx.logical_axis_rules(rules)`. As in flax, a name without a rule is passed through
    unchanged (so it must be a mesh axis); `state_shardings` turns that into a ShardingError.
  """
  if logical_axes is None:
    return PartitionSpec()
  axes = tuple(logical_axes)
  # A metadata-only Variable: flax maps a Variable's `out_sharding`, not a bare tuple.
  probe = nnx.Variable(jax.ShapeDtypeStruct((1,) * len(axes), jnp.float32), out_sharding=axes,
                       eager_sharding=False)
  with nnx.logical_axis_rules(rules):
    return nnx.get_partition_spec(probe).get_value()


# The config field that sets each logical axis's size, for the hint of a ShardingError.
_SIZE_FIELDS = {"vocab": "model.vocab_size", "embed": "model.emb_dim", "mlp": "model.mlp_dim",
                "heads": "model.num_heads", "kv": "model.emb_dim / model.num_heads",
                "length": "model.max_len", "relative": "model.max_relative"}


def _fix_hint(name: str, dim_size: int, axes: tuple[str, ...], divisor: int) -> str:
  """What to change so a `name` dimension of `dim_size` shards over `axes` (product `divisor`)."""
  if name == "vocab":
    padded = -(-dim_size // divisor) * divisor
    size = (f"pass --config.model.vocab_size={padded} (the smallest multiple of {divisor} that is "
            f">= {dim_size}; a model vocabulary larger than the codec's is allowed and its extra "
            "ids are never sampled)")
  else:
    field = _SIZE_FIELDS.get(name, "the model size behind it")
    size = f"set {field} so that it is a multiple of {divisor}"
  return (f"logical axis {name!r}: {size}; or change parallel.mesh_shape / dcn_mesh_shape so "
          f"that the size of mesh axes {axes} divides {dim_size}; or map it to None in "
          f"parallel.logical_axis_rules (('{name}', None): replicated on every device)")


def _check_variable(path: str, var: nnx.Variable, spec: PartitionSpec, mesh: Mesh,
                    rules: LogicalRules, hints: dict[str, str]) -> list[str]:
  """The problems (one line each) of sharding `var` as `spec` on `mesh`; adds the fix of each
  logical axis at fault to `hints` (once per axis, however many parameters it concerns)."""
  logical = tuple(var.get_metadata().get("out_sharding") or ())
  shape = tuple(getattr(var.get_value(), "shape", ()))
  if not logical:
    return []
  if len(logical) != len(shape):  # A model bug, not a config one.
    raise ValueError(f"{path}: logical axes {logical} do not match its shape {shape}")
  table = dict(rules)
  problems, used = [], {}
  for dim, (name, entry) in enumerate(zip(logical, tuple(spec))):
    axes = _as_axes(entry)
    where = f"parameter {path}, shape {shape}, dimension {dim} (logical axis {name!r}"
    if name is not None and name not in table and name not in mesh.shape:
      # flax passes a name without a rule through as a mesh axis name (NamedSharding would then
      # fail on an unknown axis); the old hand mapping replicated it silently.
      problems.append(f"{where}) has no rule")
      hints.setdefault(name, f"logical axis {name!r}: add ('{name}', None) to "
                       f"parallel.logical_axis_rules to replicate it, or ('{name}', <mesh axis>) "
                       "to shard it")
      continue
    missing = [a for a in axes if a not in mesh.shape]
    if missing:
      problems.append(f"{where}) maps to mesh axes {axes}; the mesh has only "
                      f"{tuple(mesh.axis_names)}")
      hints.setdefault(name, f"logical axis {name!r}: map it to axes of the mesh in "
                       "parallel.logical_axis_rules")
      continue
    for a in axes:
      if a in used:
        problems.append(f"{where}) maps to mesh axis {a!r}, which dimension {used[a]} already "
                        "uses")
        hints.setdefault(name, f"logical axis {name!r}: map it (or the other logical axis of "
                         f"{path} on {a!r}) to another mesh axis or None in "
                         "parallel.logical_axis_rules")
      used.setdefault(a, dim)
    sizes = tuple(int(mesh.shape[a]) for a in axes)
    divisor = math.prod(sizes)
    if axes and shape[dim] % divisor:
      problems.append(f"{where}, size {shape[dim]}) does not divide by its mesh axes {axes} of "
                      f"sizes {sizes} (product {divisor})")
      hints.setdefault(name, _fix_hint(name, shape[dim], axes, divisor))
  return problems


def state_shardings(state: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """`NamedSharding`s for every array in `state`, from the Variables' logical-axis metadata.

  Args:
    state: an `nnx.State` / pytree of `nnx.Variable`s (abstract from `nnx.eval_shape` or real),
      e.g. the model's params or an `nnx.Optimizer`'s state; plain arrays are allowed too.
    mesh: the device mesh.
    rules: logical-axis rules (see `logical_rules`).

  Returns:
    The same pytree with every Variable's value (and every bare array) replaced by a
    `NamedSharding` (`nnx.get_named_sharding` under `nnx.logical_axis_rules(rules)`); Variables
    without logical metadata, scalars and bare arrays are replicated.

  Raises:
    ShardingError: a Variable's dimension does not divide by its mesh axes (or its logical name
      has no rule, or two of its dimensions use one mesh axis); every such dimension is listed,
      then the fix of each logical axis at fault.
  """
  problems, hints = [], {}
  with nnx.logical_axis_rules(rules):
    for path, var in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_variable)[0]:
      if _is_variable(var):  # The spec flax will use, checked before any NamedSharding exists.
        spec = nnx.get_partition_spec(var).get_value()
        problems += _check_variable(jax.tree_util.keystr(path, simple=True, separator="/"), var,
                                    spec, mesh, rules, hints)
  if problems:
    raise ShardingError(
        f"parameters that the mesh {dict(mesh.shape)} cannot shard as parallel.logical_axis_rules "
        "say:\n  " + "\n  ".join(problems) + "\nTo fix it:\n  " + "\n  ".join(hints.values()))
  with nnx.logical_axis_rules(rules):
    return nnx.get_named_sharding(state, mesh)


def check_shardable(fn: Callable[[], nnx.Module], mesh: Mesh, rules: LogicalRules) -> None:
  """Raises the ShardingError `create_sharded(fn, mesh, rules)` would, from shapes only
  (`nnx.eval_shape`), so a run can stop before it builds its data pipeline."""
  state_shardings(nnx.state(nnx.eval_shape(fn)), mesh, rules)


def batch_sharding(mesh: Mesh, rules: LogicalRules | None = None) -> NamedSharding:
  """Sharding of [B, L] int batches: B over the `batch` rule (default ('data', 'fsdp'))."""
  rules = tuple(rules or ())
  if "batch" not in dict(rules):
    rules += (("batch", ("data", "fsdp")),)
  return NamedSharding(mesh, logical_to_spec(("batch", None), rules))


def create_sharded(fn: Callable[[], nnx.Module], mesh: Mesh, rules: LogicalRules) -> nnx.Module:
  """Creates the module returned by `fn()` directly sharded on `mesh`.

  `fn` is traced twice (once abstractly with `nnx.eval_shape` to read the logical axes, once
  under `jax.jit` with `out_shardings`), so the full unsharded model never exists on one device.
  `fn` must build its own `nnx.Rngs` from an int seed (it runs inside jit), e.g.
  `lambda: models.create_model(config.model, nnx.Rngs(config.seed))`.

  Returns:
    The module, each Variable an array with its `NamedSharding`.

  Raises:
    ShardingError: from `state_shardings`, before anything is compiled or placed.
  """
  # Not nnx.get_abstract_model: it builds the NamedShardings before they can be checked, and a
  # non-dividing dimension would only fail later, inside jit, with XLA's message.
  abstract = nnx.eval_shape(fn)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = state_shardings(abstract_state, mesh, rules)

  init = jax.jit(lambda: nnx.split(fn())[1], out_shardings=shardings)
  with jax.set_mesh(mesh):
    state = init()
  return nnx.merge(graphdef, state)
