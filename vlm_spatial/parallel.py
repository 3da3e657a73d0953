"""Device mesh, THE logical-axis rules table, and shardings of params, optimizer state and batches.

This is the only module that names mesh axes. Parameters carry logical axis names (see
`vlm_spatial/models/layers.py`); `LOGICAL_AXIS_RULES` maps each onto mesh axes:

  mesh axes   'data'   pure data parallelism (params replicated)
              'fsdp'   data parallelism with params/optimizer state sharded (ZeRO-3 style)
              'tensor' Megatron-style tensor parallelism over heads / MLP width / vocab

A dimension whose size is not divisible by the product of its mesh axes is left replicated, so
the same rules serve a 7B model and a tiny test model.

Training state here is a pytree of *pure* nested dicts (`nnx.to_pure_dict`), so shardings are
pure dicts of `NamedSharding` with the same structure.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# THE logical-axis rules table: logical name -> mesh axis, tuple of mesh axes, or None (replicated).
LOGICAL_AXIS_RULES: dict[str | None, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),  # activations / batches
    "embed": "fsdp",  # model width: FSDP shards every matrix along it
    "mlp": "tensor",
    "heads": "tensor",
    "kv": "tensor",
    "vocab": "tensor",
    "layers": None,  # the stacked-layer (scan) axis stays whole on every device
    None: None,
}


def multihost_env() -> str | None:
    """The launcher that describes a multi-process job in the environment, or None: an explicit
    `JAX_COORDINATOR_ADDRESS`, SLURM with more than one task, Open MPI with more than one rank, or
    a TPU VM slice with several workers."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
        return "SLURM"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "Open MPI"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "TPU VM"
    return None


def maybe_initialize_distributed() -> bool:
    """`jax.distributed.initialize()` (cluster auto-detection) when `multihost_env()` finds a
    multi-process job; call before anything touches the devices. Returns whether it ran."""
    if multihost_env() is None:
        return False
    jax.distributed.initialize()
    return True


def mesh_sizes(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) sizes of a mesh over `num_devices` devices, a -1 ("the rest of the
    devices", at most one) filled in. Raises ValueError saying what does not fit and what would."""
    sizes = [data, fsdp, tensor]
    given = f"data={data} fsdp={fsdp} tensor={tensor}"
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"{given}: put sizes >= 1, at most one of them -1 (the rest of the devices)")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes and num_devices % known == 0:
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"{given} cannot cover the {num_devices} devices; put sizes whose product is "
                         f"{num_devices} (one of them may be -1)")
    return tuple(sizes)


def make_mesh(
    data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A `Mesh` with axes ('data', 'fsdp', 'tensor') and Auto axis types over `devices` (default:
    all), sized by `mesh_sizes` (one size may be -1, "the rest of the devices")."""
    devices = list(jax.devices() if devices is None else devices)
    try:
        sizes = list(mesh_sizes(data, fsdp, tensor, len(devices)))
    except ValueError as e:
        raise ValueError(f"mesh: {e}") from None
    try:  # topology-aware device order when available (TPU/GPU); CPU fake devices fall through
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_device_mesh(sizes, devices=devices)
    except Exception:  # noqa: BLE001 - any failure: plain order is always valid
        arr = np.array(devices).reshape(sizes)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(
    names: Sequence[str | None] | None, shape: Sequence[int] | None = None, mesh: Mesh | None = None
) -> P:
    """PartitionSpec for a tensor whose dims carry logical `names`, through `LOGICAL_AXIS_RULES`.

    With `shape` and `mesh`, a dim not divisible by its mesh-axes size is replicated instead, and a
    mesh axis is used at most once per tensor (first dim wins).
    """
    if names is None:
        return P()
    used: set[str] = set()
    out = []
    for i, name in enumerate(names):
        if name not in LOGICAL_AXIS_RULES:
            raise KeyError(f"logical axis {name!r} has no rule in parallel.LOGICAL_AXIS_RULES")
        rule = LOGICAL_AXIS_RULES[name]
        axes = () if rule is None else ((rule,) if isinstance(rule, str) else tuple(rule))
        axes = tuple(a for a in axes if a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
            if shape is not None and axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
                axes = ()
        used.update(axes)
        out.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
    return P(*out)


def _variable_names(var) -> tuple | None:
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    return meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")


def param_shardings(abstract_state: nnx.State, mesh: Mesh) -> dict:
    """Pure nested dict of `NamedSharding`, one per variable of `abstract_state` (an `nnx.State`
    of Variables with `ShapeDtypeStruct` values, e.g. from `nnx.eval_shape` + `nnx.split`)."""
    flat = {}
    for path, var in nnx.to_flat_state(abstract_state):
        value = var.get_value() if hasattr(var, "get_value") else var
        shape = getattr(value, "shape", ())
        names = _variable_names(var)
        if names is not None and len(names) != len(shape):
            names = None
        flat[path] = NamedSharding(mesh, logical_to_spec(names, shape, mesh))
    return _unflatten(flat)


def _unflatten(flat: dict[tuple, Any]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, P())


def opt_state_shardings(tx: optax.GradientTransformation, abstract_opt_state, params_shardings, mesh):
    """Shardings for `tx`'s state: param-shaped leaves (Adam moments) follow `params_shardings`,
    everything else (counts) is replicated. Frozen params are not in the tree at all."""
    return optax.tree_utils.tree_map_params(
        tx,
        lambda _, s: s,
        abstract_opt_state,
        params_shardings,
        transform_non_params=lambda _: replicated(mesh),
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """`x` constrained to the sharding its logical axis `names` map to on the mesh in context
    (`jax.set_mesh`, or `jax.sharding.use_abstract_mesh` inside a jitted step), so activations
    follow the batch instead of the FSDP-sharded weights. Unchanged without a mesh (one device,
    tests, inference). Dims not divisible by their mesh axes stay replicated."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))


def batch_spec(ndim: int) -> P:
    """Batch dim over ('data','fsdp'), the rest replicated."""
    rule = LOGICAL_AXIS_RULES["batch"]
    return P(rule, *([None] * (ndim - 1)))


def batch_shardings(batch: dict, mesh: Mesh) -> dict:
    """`NamedSharding` for each array of a model batch (leading dim sharded over data x fsdp)."""
    return {k: NamedSharding(mesh, batch_spec(np.ndim(v))) for k, v in batch.items()}


def batch_divisor(mesh: Mesh) -> int:
    """The number of shards of the batch dimension: per-step batches must be a multiple of it."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Place a host batch (numpy, global on one process) onto `mesh`, sharded over data x fsdp.

    Multi-process: each process passes its *local* slice and the global array is assembled.
    """
    shardings = batch_shardings(batch, mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, shardings)
    return {
        k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in batch.items()
    }


def sharded_init(init_fn: Callable[[], Any], shardings_fn: Callable[[Any], Any]):
    """Run `init_fn()` under `jax.jit` with `out_shardings=shardings_fn(abstract_output)`, so every
    array is created directly in its shards (never whole on one device). Returns the output."""
    abstract = jax.eval_shape(init_fn)
    shardings = shardings_fn(abstract)
    return jax.jit(init_fn, out_shardings=shardings)()


def abstract_with_shardings(abstract_tree, shardings_tree):
    """`ShapeDtypeStruct`s carrying shardings (restore targets for Orbax / AOT compile inputs)."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings_tree
    )
