"""Name maps as data: one `Entry` per (Hugging Face tensor, our parameter) pair.

Every converter (`hf_vision`, `hf_decoder`, `hf_llava`) describes its model as a list of entries;
the generic functions here read, write and check through such a list, and the streaming loader
(`loader.py`) and the exporter (`export.py`) walk it one tensor at a time.

- A per-layer HF tensor maps to one row (`layer`) of our parameter stacked on axis 0.
- Several entries may share one HF tensor (SigLIP's fused `in_proj_weight` holds q, k and v):
  reading hands each the whole tensor; writing concatenates their parts along axis 0 in order.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np


def copy(a: np.ndarray) -> np.ndarray:
    """Same array (norm scales, biases, embeddings)."""
    return a


def transpose(a: np.ndarray) -> np.ndarray:
    """Linear kernel `[in, out]` <-> HF weight `[out, in]`."""
    return a.T


@dataclasses.dataclass(frozen=True)
class Entry:
    """One HF tensor `hf` (shape `hf_shape`) <-> our parameter at `path` (row `layer` of a stacked
    parameter, or the whole parameter when `layer` is None). `to_ours(hf array)` gives our array
    (one row when stacked); `to_hf(our array or row)` gives the HF tensor, or this entry's part of a
    tensor shared by several entries."""

    hf: str
    path: tuple[str, ...]
    layer: int | None
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray] = copy
    to_hf: Callable[[np.ndarray], np.ndarray] = copy

    def under(self, hf_prefix: str, path_prefix: tuple[str, ...]) -> "Entry":
        """This entry with `hf_prefix` before the HF name and `path_prefix` before our path."""
        return dataclasses.replace(self, hf=hf_prefix + self.hf, path=path_prefix + self.path)


def under(entries: Iterable[Entry], hf_prefix: str, path_prefix: tuple[str, ...]) -> list[Entry]:
    """`Entry.under` for every entry."""
    return [e.under(hf_prefix, path_prefix) for e in entries]


def expected_shapes(entries: Iterable[Entry]) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape, for every HF tensor the entries read."""
    return {e.hf: tuple(e.hf_shape) for e in entries}


def by_hf_name(entries: Iterable[Entry]) -> dict[str, list[Entry]]:
    """HF tensor name -> the entries it feeds (several for fused tensors), in order."""
    out: dict[str, list[Entry]] = {}
    for e in entries:
        out.setdefault(e.hf, []).append(e)
    return out


def set_path(tree: dict, path: Sequence[str], value) -> None:
    """`tree[path[0]][path[1]]... = value`, creating the nested dicts on the way."""
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def get_path(tree: dict, path: Sequence[str]):
    """`tree[path[0]][path[1]]...`."""
    for k in path:
        tree = tree[k]
    return tree


def read(entries: Sequence[Entry], get: Callable[[str], np.ndarray], dtype=None) -> dict:
    """Nested params (numpy) from `get(hf_name) -> array`, per-layer tensors stacked on axis 0.

    Arrays keep `get`'s dtype unless `dtype` is given. A missing tensor raises whatever `get`
    raises (KeyError naming it for a dict); a mis-shaped one raises ValueError naming it.
    """
    rows: dict[tuple, dict[int | None, np.ndarray]] = {}
    for name, group in by_hf_name(entries).items():
        a = np.asarray(get(name))
        if tuple(a.shape) != group[0].hf_shape:
            raise ValueError(f"HF tensor {name!r}: expected shape {group[0].hf_shape}, got {tuple(a.shape)}")
        for e in group:
            value = e.to_ours(a)
            rows.setdefault(e.path, {})[e.layer] = value if dtype is None else value.astype(dtype)
    params: dict = {}
    for path, by_layer in rows.items():
        value = by_layer[None] if None in by_layer else np.stack([by_layer[i] for i in sorted(by_layer)])
        set_path(params, path, np.ascontiguousarray(value))
    return params


def hf_tensor(group: Sequence[Entry], params: dict) -> np.ndarray:
    """The HF tensor of the entries `group` (all with one HF name) from nested params, as numpy.

    A stacked parameter is sliced to its row before it leaves the device, so only one HF tensor
    is ever on the host.
    """
    parts = []
    for e in group:
        leaf = get_path(params, e.path)
        parts.append(np.asarray(e.to_hf(np.asarray(leaf if e.layer is None else leaf[e.layer]))))
    return np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0))


def write(entries: Sequence[Entry], params: dict) -> Iterator[tuple[str, np.ndarray]]:
    """`(HF name, numpy tensor)` one at a time from nested params; inverse of `read`."""
    for name, group in by_hf_name(entries).items():
        yield name, hf_tensor(group, params)


# ----------------------------------------------------------------------------- tables
# Name tables are rows `(our path 'a/b/c', HF name, layout)`; HF names with `{i}` are per layer
# (ours stacked on axis 0). Layouts, ours <- HF:
#   linear     kernel `[in, out]` <- weight `[out, in]`
#   copy       same array
#   conv       kernel `[p*p*C, D]` ((py, px, C) order) <- Conv2d weight `[D, C, p, p]`
#   block:i/n  row block i of n of a fused HF tensor (several entries share it)
#   squeeze:k  ours <- HF with k leading singleton axes
#   conv1x1    kernel `[in, out]` <- 1x1 Conv2d weight `[out, in, 1, 1]`
#   depthwise3x3  `[3, 3, C]` <- depthwise Conv2d weight `[C, 1, 3, 3]`
def _layout(layout: str, shape: tuple[int, ...], patch: tuple[int, int] | None):
    """`(hf_shape, to_ours, to_hf)` for our parameter (or row) of `shape` stored in `layout`."""
    kind, _, arg = layout.partition(":")
    if kind == "copy":
        return shape, copy, copy
    if kind == "linear":
        return shape[::-1], transpose, transpose
    if kind == "conv":
        p, c = patch

        def conv_to_ours(a):  # [D, C, p, p] -> [py, px, C, D] -> [p*p*C, D]
            return a.transpose(2, 3, 1, 0).reshape(-1, a.shape[0])

        return (shape[1], c, p, p), conv_to_ours, lambda a: a.reshape(p, p, c, a.shape[-1]).transpose(3, 2, 0, 1)
    if kind == "block":
        i, n = (int(v) for v in arg.split("/"))
        hf_shape = (n * shape[1], shape[0]) if len(shape) == 2 else (n * shape[0],)

        def block_to_ours(a):
            part = a[i * (a.shape[0] // n):(i + 1) * (a.shape[0] // n)]
            return part.T if a.ndim == 2 else part

        return hf_shape, block_to_ours, lambda a: a.T if a.ndim == 2 else a
    if kind == "conv1x1":
        return (shape[1], shape[0], 1, 1), lambda a: a[:, :, 0, 0].T, lambda a: a.T[:, :, None, None]
    if kind == "depthwise3x3":
        return (shape[2], 1, shape[0], shape[1]), lambda a: a[:, 0].transpose(1, 2, 0), lambda a: a.transpose(2, 0, 1)[:, None]
    if kind == "squeeze":
        hf_shape = (1,) * int(arg) + tuple(shape)
        return hf_shape, lambda a: a.reshape(shape), lambda a: a.reshape(hf_shape)
    raise ValueError(f"unknown name-table layout {layout!r}")


def table_entries(rows, shapes: dict[str, tuple[int, ...]], num_layers: int = 0,
                  patch: tuple[int, int] | None = None) -> list[Entry]:
    """Entries for the name-table `rows` (see above) of a module whose parameters have `shapes`
    ('a/b/c' -> shape; stacked ones with the layer axis first); `{i}` rows are expanded over
    `num_layers`; `patch` is `(patch_size, channels)` for the 'conv' layout."""
    out = []
    for path, hf, layout in rows:
        shape, p = shapes[path], tuple(path.split("/"))
        if "{i}" in hf:
            hf_shape, to_ours, to_hf = _layout(layout, shape[1:], patch)
            out += [Entry(hf.format(i=i), p, i, hf_shape, to_ours, to_hf) for i in range(num_layers)]
        else:
            hf_shape, to_ours, to_hf = _layout(layout, shape, patch)
            out.append(Entry(hf, p, None, hf_shape, to_ours, to_hf))
    return out
