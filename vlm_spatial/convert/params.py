"""Putting converted parameters into modules without a random initialisation.

`module_from_params(make, params)` builds the module abstractly (`nnx.eval_shape`, no memory),
checks that `params` (a nested dict as `nnx.to_pure_dict` gives) has exactly its tree and
shapes, casts each leaf to the dtype the module declares and places it, with its sharding when
`shardings` is given (a matching tree of `jax.sharding.Sharding`, e.g. from `parallel.py`).
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from flax import nnx


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


def module_from_params(make: Callable[[], nnx.Module], params: dict, shardings: dict | None = None) -> nnx.Module:
    """The module `make()` holding `params` (nested dict of arrays), cast to its declared dtypes.

    With `shardings` (same tree, leaves `jax.sharding.Sharding`) each leaf is placed with its
    sharding one at a time, so no device ever holds the whole model unsharded.
    """
    graphdef, state = nnx.split(nnx.eval_shape(make))
    target = nnx.to_pure_dict(state)
    check_params(params, target)

    def place(spec, x, sharding=None):
        x = np.asarray(x).astype(spec.dtype, copy=False)
        return jax.device_put(x, sharding) if sharding is not None else jax.device_put(x)

    if shardings is None:
        placed = jax.tree.map(place, target, params)
    else:
        placed = jax.tree.map(place, target, params, shardings)
    nnx.replace_by_pure_dict(state, placed)
    return nnx.merge(graphdef, state)
