"""Streaming Hugging Face safetensors into placed, optionally sharded parameters.

`load_params` reads the shards one after the other and, inside each, one tensor at a time. Each
tensor is converted to our layout (`namemap.Entry.to_ours`), cast to the dtype the model declares
and placed at once with its target sharding. A parameter stacked over layers is allocated on the
device(s) first and its rows are written in place as they arrive (a jitted update that donates
the buffer), so the host never holds a second copy of the model: peak memory is the placed model
plus a couple of copies of its largest tensor (read, transposed/cast) and the compiled row
writers; `perf/load_peak_rss.py` measures it.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from vlm_spatial.convert import namemap, params as params_lib
from vlm_spatial.convert.hf_io import HFCheckpoint, WeightsError, check_tensors, is_buffer


def _flat(tree: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _update_row(buf, row, index):
    return jax.lax.dynamic_update_index_in_dim(buf, row, index, 0)


@functools.lru_cache(maxsize=None)
def _row_writer(sharding: NamedSharding | None):
    """Jitted `buf.at[index].set(row)` that reuses `buf`'s memory; with a sharding, each device
    receives only its part of the row."""
    if sharding is None:
        return jax.jit(_update_row, donate_argnums=0)
    row = NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec[1:]))
    scalar = NamedSharding(sharding.mesh, PartitionSpec())
    return jax.jit(_update_row, donate_argnums=0, in_shardings=(sharding, row, scalar), out_shardings=sharding)


def _convert(x: np.ndarray, entry: namemap.Entry, want: tuple, dtype) -> np.ndarray:
    """HF tensor `x` converted for `entry`, cast to `dtype`, C-contiguous."""
    y = entry.to_ours(x)
    if tuple(y.shape) != tuple(want):
        raise WeightsError(f"tensor {entry.hf!r} converts to shape {tuple(y.shape)} but {'/'.join(entry.path)} "
                           f"needs {tuple(want)}")
    return np.ascontiguousarray(y, dtype=dtype)


def _place(tensors: HFCheckpoint, name: str, group: Sequence[namemap.Entry], want: dict, where: dict,
           placed: dict) -> None:
    """Read tensor `name` and put it where each entry of `group` says, converted on the way; the
    raw tensor is dropped before anything is placed, so at most two copies of it are alive."""
    x = tensors[name]
    parts = []
    for e in group:
        spec = want[e.path]
        parts.append((e, _convert(x, e, spec.shape if e.layer is None else spec.shape[1:], spec.dtype)))
    del x
    while parts:
        e, y = parts.pop(0)
        spec, sharding = want[e.path], where.get(e.path)
        if e.layer is None:
            placed[e.path] = jax.device_put(y, sharding)
            continue
        if e.path not in placed:  # np.zeros pages are mapped lazily: reading them costs no memory
            placed[e.path] = jax.device_put(np.zeros(spec.shape, spec.dtype), sharding)
        placed[e.path] = _row_writer(sharding)(placed[e.path], y, np.int32(e.layer))


def load_params(
    tensors: HFCheckpoint,
    entries: Sequence[namemap.Entry],
    target: dict,
    shardings: dict | None = None,
    *,
    rename: Callable[[str], str | None] = lambda name: name,
    progress: bool = True,
) -> dict:
    """Nested params (placed `jax.Array`s) for `target` from the safetensors of `tensors`.

    `target`: nested dict of `jax.ShapeDtypeStruct` (shapes and dtypes the model declares, e.g.
    from `params.abstract_params`); `shardings`: the same tree of `NamedSharding`, or None for
    the default device. `entries` must cover every leaf of `target`. `rename(name on disk)` gives
    the entries' name for a tensor, or None for a tensor that is not part of this model (skipped,
    as are saved buffers such as `embeddings.position_ids`).
    Raises `WeightsError` listing every missing, unexpected and mis-shaped tensor by name before
    anything is read.
    """
    want = _flat(target)
    where = _flat(shardings) if shardings is not None else {}
    uncovered = sorted("/".join(p) for p in set(want) - {e.path for e in entries})
    if uncovered:
        raise ValueError(f"the name map does not cover parameters {uncovered}")
    groups = namemap.by_hf_name(entries)
    on_disk = {}
    for name in tensors:
        ours = rename(name)
        if ours is not None and not is_buffer(ours):
            on_disk[ours] = name
    check_tensors({ours: tensors.shape(name) for ours, name in on_disk.items()},
                  namemap.expected_shapes(entries), source=tensors.path)

    from tqdm.auto import tqdm

    placed: dict[tuple, jax.Array] = {}
    bar = tqdm(total=len(groups), desc=f"loading {tensors.path}", unit="tensor", disable=not progress or None)
    for _, names in tensors.by_file():
        for name in names:
            group = groups.get(rename(name))
            if group is not None:
                _place(tensors, name, group, want, where, placed)
                bar.update()
    bar.close()
    out: dict = {}
    for path, value in placed.items():
        namemap.set_path(out, path, value)
    return out


def load_module(
    make: Callable[[], nnx.Module],
    tensors: HFCheckpoint,
    entries: Sequence[namemap.Entry],
    *,
    rename: Callable[[str], str | None] = lambda name: name,
    mesh: jax.sharding.Mesh | None = None,
) -> nnx.Module:
    """The module `make()` with its parameters streamed from `tensors` (see `load_params`),
    sharded by the logical-axis rules on `mesh` (default: the current mesh, if any)."""
    target, shardings = params_lib.abstract_params(make, mesh)
    return params_lib.module_from_params(make, load_params(tensors, entries, target, shardings, rename=rename))
