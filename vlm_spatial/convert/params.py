"""Putting parameters into modules without a random initialisation.

`abstract_params(make, mesh)` describes a module's parameters without allocating them
(`nnx.eval_shape`): a tree of `jax.ShapeDtypeStruct` and, on a mesh, the tree of `NamedSharding`
that `parallel.param_shardings` gives. Loaders fill that tree; `module_from_params(make, params)`
checks the filled tree against the module and merges it in.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, name + "."))
        else:
            out[name] = v
    return out


def check_params(params: dict, target: dict) -> None:
    """Raise ValueError naming every missing, unexpected or mis-shaped parameter path."""
    got, want = _flat(params), _flat(target)
    problems = [f"missing {n} {tuple(want[n].shape)}" for n in sorted(set(want) - set(got))]
    problems += [f"unexpected {n}" for n in sorted(set(got) - set(want))]
    problems += [
        f"mis-shaped {n}: expected {tuple(want[n].shape)}, got {tuple(np.shape(got[n]))}"
        for n in sorted(set(got) & set(want))
        if tuple(np.shape(got[n])) != tuple(want[n].shape)
    ]
    if problems:
        raise ValueError("parameters do not fit the model:\n  " + "\n  ".join(problems))


def abstract_module(make: Callable[[], nnx.Module]) -> nnx.Module:
    """`make()` with `ShapeDtypeStruct`s for arrays (no memory). Built outside any mesh even under
    `jax.set_mesh`, so logical axis names stay metadata (only `parallel.py` maps them to mesh axes)."""
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
        return nnx.eval_shape(make)


def current_mesh() -> Mesh | None:
    """The mesh set with `jax.set_mesh(...)`, or None outside one."""
    mesh = jax.sharding.get_mesh()
    return None if mesh.empty else mesh


def abstract_params(make: Callable[[], nnx.Module], mesh: Mesh | None = None) -> tuple[dict, dict | None]:
    """`(target, shardings)` for the parameters of `make()`, allocating nothing.

    target: nested dict of `jax.ShapeDtypeStruct` (the dtypes the module declares). shardings:
    the same tree of `NamedSharding` from the logical-axis rules on `mesh` (default: the current
    mesh), or None without a mesh (everything on the default device).
    """
    from vlm_spatial import parallel

    state = nnx.state(abstract_module(make))
    target = nnx.to_pure_dict(state)
    mesh = mesh if mesh is not None else current_mesh()
    return target, (parallel.param_shardings(state, mesh) if mesh is not None else None)


def module_from_params(make: Callable[[], nnx.Module], params: dict, shardings: dict | None = None) -> nnx.Module:
    """The module `make()` holding `params` (nested dict of numpy or jax arrays), cast to its
    declared dtypes.

    Arrays already on device stay there (no host round trip); numpy leaves are placed with
    `shardings` (same tree, `jax.sharding.Sharding` leaves) when given, else on the default device.
    """
    graphdef, state = nnx.split(abstract_module(make))
    target = nnx.to_pure_dict(state)
    check_params(params, target)

    def place(spec, x, sharding=None):
        if isinstance(x, jax.Array):
            x = x if x.dtype == spec.dtype else x.astype(spec.dtype)
            return x if sharding is None else jax.device_put(x, sharding)
        return jax.device_put(np.asarray(x).astype(spec.dtype, copy=False), sharding)

    if shardings is None:
        placed = jax.tree.map(place, target, params)
    else:
        placed = jax.tree.map(place, target, params, shardings)
    nnx.replace_by_pure_dict(state, placed)
    return nnx.merge(graphdef, state)


def param_shapes(make: Callable[[], nnx.Module]) -> dict[str, tuple[int, ...]]:
    """Flat 'a/b/c' -> shape of the parameters of `make()`, without allocating them."""
    flat = {}

    def walk(d, prefix):
        for k, v in d.items():
            path = f"{prefix}/{k}" if prefix else str(k)
            if isinstance(v, dict):
                walk(v, path)
            else:
                flat[path] = tuple(v.shape)

    walk(nnx.to_pure_dict(nnx.state(abstract_module(make))), "")
    return flat
