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
them, or None) map logical names to mesh axes. A dimension whose size does not divide by the
mesh axes it maps to is replicated instead (e.g. an odd vocabulary on a tensor axis of 2), so
any model fits any mesh; the common dimensions (embed, mlp, heads) divide in practice.

Optimizer state: `nnx.Optimizer` (and optax applied to a `nnx.State` of Variables) keeps the
parameter metadata on the moments, so they mirror the parameters' shardings; anything without
logical metadata (step counters, RNG keys, scalars) is replicated.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from flax import nnx

LogicalRules = tuple[tuple[str, Any], ...]

__all__ = [
    "create_mesh",
    "logical_rules",
    "logical_to_spec",
    "state_shardings",
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


def logical_to_spec(logical_axes: Iterable[str | None] | None, rules: LogicalRules,
                    shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None) -> PartitionSpec:
  """Maps logical axis names to a `PartitionSpec`.

  Args:
    logical_axes: one logical name (or None) per array dimension.
    rules: (logical_name, mesh_axes) pairs; unknown names are replicated.
    shape: optional array shape; with `mesh`, dimensions that do not divide by their mesh axes'
      size are replicated instead.
    mesh: optional mesh for the divisibility check (and to drop axes the mesh lacks).

  Returns:
    The PartitionSpec. A mesh axis is used at most once: a later dimension that maps to an
    axis already used is replicated.
  """
  if logical_axes is None:
    return PartitionSpec()
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(logical_axes):
    axes = _as_axes(table.get(name)) if name is not None else ()
    if mesh is not None:
      axes = tuple(a for a in axes if a in mesh.shape)
    axes = tuple(a for a in axes if a not in used)
    if axes and shape is not None and mesh is not None:
      size = math.prod(mesh.shape[a] for a in axes)
      if shape[dim] % size:
        axes = ()
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def _variable_logical_axes(v: nnx.Variable):
  meta = v.get_metadata()
  axes = meta.get("out_sharding")
  if axes is None:
    return None
  return tuple(axes)


def state_shardings(state: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """`NamedSharding`s for every array in `state`, from the Variables' logical-axis metadata.

  Args:
    state: an `nnx.State` / pytree of `nnx.Variable`s (abstract from `nnx.eval_shape` or real),
      e.g. the model's params or an `nnx.Optimizer`'s state; plain arrays are allowed too.
    mesh: the device mesh.
    rules: logical-axis rules (see `logical_rules`).

  Returns:
    The same pytree with every Variable's value (and every bare array) replaced by a
    `NamedSharding`; Variables without logical metadata and scalars are replicated.
  """
  replicated = NamedSharding(mesh, PartitionSpec())

  def one(x):
    if isinstance(x, nnx.Variable):
      value = x.get_value()
      shape = getattr(value, "shape", None)
      axes = _variable_logical_axes(x)
      if axes is None or not shape:
        return x.replace(replicated)
      if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match the shape {shape} of a "
                         f"{type(x).__name__}")
      return x.replace(NamedSharding(mesh, logical_to_spec(axes, rules, shape, mesh)))
    return replicated

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, rules: LogicalRules | None = None) -> NamedSharding:
  """Sharding of [B, L] int batches: B over the `batch` rule (default ('data', 'fsdp'))."""
  batch_axes = ("data", "fsdp")
  if rules is not None:
    batch_axes = _as_axes(dict(rules).get("batch", batch_axes))
  batch_axes = tuple(a for a in batch_axes if a in mesh.shape)
  spec = None if not batch_axes else batch_axes[0] if len(batch_axes) == 1 else batch_axes
  return NamedSharding(mesh, PartitionSpec(spec, None))


def create_sharded(fn: Callable[[], nnx.Module], mesh: Mesh, rules: LogicalRules) -> nnx.Module:
  """Creates the module returned by `fn()` directly sharded on `mesh`.

  `fn` is traced twice (once abstractly with `nnx.eval_shape` to read the logical axes, once
  under `jax.jit` with `out_shardings`), so the full unsharded model never exists on one device.
  `fn` must build its own `nnx.Rngs` from an int seed (it runs inside jit), e.g.
  `lambda: models.create_model(config.model, nnx.Rngs(config.seed))`.

  Returns:
    The module, each Variable an array with its `NamedSharding`.
  """
  abstract = nnx.eval_shape(fn)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = state_shardings(abstract_state, mesh, rules)

  init = jax.jit(lambda: nnx.split(fn())[1], out_shardings=shardings)
  with jax.set_mesh(mesh):
    state = init()
  return nnx.merge(graphdef, state)
