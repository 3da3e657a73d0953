"""Reading and writing Hugging Face model directories: config.json and safetensors shards, never
pickle.

`HFCheckpoint(path)` opens a directory written by `save_pretrained` (one `model.safetensors` or
sharded `model-0000X-of-0000N.safetensors` + `model.safetensors.index.json`) and gives lazy,
per-tensor access by name as numpy arrays, so a loader touches one tensor at a time.
`write_safetensors` writes the same layout, producing one tensor at a time and holding at most
one shard in memory.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Mapping

import numpy as np
from safetensors import safe_open

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Buffers older transformers saved beside the weights (e.g. in openai/clip-vit-large-patch14-336):
# recomputed by every model, never read.
BUFFER_SUFFIXES = ("embeddings.position_ids", "rotary_emb.inv_freq")


class WeightsError(ValueError):
    """Weights on disk do not match what the model needs; the message lists tensors by name."""


def read_config(path: str) -> dict:
    """The `config.json` of a Hugging Face model directory, as a dict."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path!r} is not a Hugging Face model directory: no config.json")
    with open(cfg_path) as f:
        return json.load(f)


def safetensors_files(path: str) -> list[str]:
    """The safetensors files of a model directory, in shard order.

    A directory holding only pickle weights (`pytorch_model.bin`, ...) is refused with the
    command that converts it; pickle files are never opened.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory {path!r} does not exist")
    names = sorted(os.listdir(path))
    files = [os.path.join(path, n) for n in names if n.endswith(".safetensors")]
    if files:
        return files
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise WeightsError(
            f"{path!r} holds only pickle weights ({', '.join(pickles)}); vlm_spatial never unpickles "
            "files. Convert them to safetensors once, in an environment you trust:\n"
            "  python -c \"import transformers as t; m = t.AutoModel.from_pretrained('DIR', "
            "use_safetensors=False); m.save_pretrained('DIR_safetensors', safe_serialization=True)\""
        )
    raise WeightsError(f"{path!r} holds no *.safetensors weights")


class HFCheckpoint(Mapping[str, np.ndarray]):
    """Lazy name -> numpy array view over every safetensors shard of a directory.

    Indexing reads one tensor from disk (bfloat16 stays `ml_dtypes.bfloat16`). `shape(name)`
    reads only the header. Iteration yields names in file order.
    """

    def __init__(self, path: str):
        self.path = path
        self._where: dict[str, str] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._by_file: dict[str, list[str]] = {}
        for file in safetensors_files(path):
            with safe_open(file, framework="numpy") as f:
                self._by_file[file] = list(f.keys())
                for name in self._by_file[file]:
                    self._where[name] = file
                    self._shapes[name] = tuple(f.get_slice(name).get_shape())

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise KeyError(name)
        with safe_open(self._where[name], framework="numpy") as f:
            return f.get_tensor(name)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor `name` from the file header, without reading its data."""
        return self._shapes[name]

    def by_file(self) -> list[tuple[str, list[str]]]:
        """`(file, tensor names in it)` for every shard, in shard order: the reading order of a
        streaming loader, which then touches one shard at a time."""
        return list(self._by_file.items())


def is_buffer(name: str) -> bool:
    """Whether tensor `name` is a saved buffer (`BUFFER_SUFFIXES`) rather than a weight."""
    return name.endswith(BUFFER_SUFFIXES)


def find_prefix(names: Iterable[str], probe: str, candidates: Iterable[str]) -> str | None:
    """The first of `candidates` such that `candidate + probe` is among `names`, else None."""
    names = set(names)
    for c in candidates:
        if c + probe in names:
            return c
    return None


def check_tensors(
    shapes: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    *,
    source: str,
) -> None:
    """Raise `WeightsError` listing every missing, unexpected and mis-shaped tensor by name.

    `shapes` are what the file holds, `expected` what the model needs (same naming).
    """
    missing = sorted(n for n in expected if n not in shapes)
    unexpected = sorted(n for n in shapes if n not in expected)
    misshaped = sorted(
        f"{n}: expected {tuple(expected[n])}, found {tuple(shapes[n])}"
        for n in expected
        if n in shapes and tuple(shapes[n]) != tuple(expected[n])
    )
    problems = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            shown = "\n    ".join(items[:40]) + ("\n    ..." if len(items) > 40 else "")
            problems.append(f"  {len(items)} {title} tensor(s):\n    {shown}")
    if problems:
        raise WeightsError(f"weights in {source} do not fit the model:\n" + "\n".join(problems))


_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}


def parse_size(size: int | str) -> int:
    """Bytes in `size`: an int, or a string such as '5GB', '500MB', '2GiB' (as `save_pretrained`'s
    `max_shard_size`)."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(text[: -len(unit)]) * _UNITS[unit])
    if text.isdigit():
        return int(text)
    raise ValueError(f"size {size!r}: expected bytes or a number with KB/MB/GB/KiB/MiB/GiB")


def shard_plan(nbytes: Mapping[str, int], max_shard_size: int | str) -> list[list[str]]:
    """Tensor names (in the given order) split into consecutive shards of at most `max_shard_size`
    bytes each; a tensor larger than that gets a shard of its own."""
    limit = parse_size(max_shard_size)
    shards: list[list[str]] = [[]]
    size = 0
    for name, n in nbytes.items():
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


def write_safetensors(
    path: str, shards: list[list[str]], tensor: Callable[[str], np.ndarray], *, progress: bool = True
) -> list[str]:
    """Write `shards` (from `shard_plan`) as `save_pretrained` does: `model.safetensors` for one
    shard, else `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`. `tensor(name)`
    produces each numpy array when its shard is written, so memory holds one shard at a time.
    Returns the file names written."""
    from safetensors.numpy import save_file
    from tqdm.auto import tqdm

    os.makedirs(path, exist_ok=True)
    n = len(shards)
    files = ["model.safetensors"] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    weight_map, total = {}, 0
    bar = tqdm(total=sum(map(len, shards)), desc=f"writing {path}", unit="tensor", disable=not progress or None)
    for file, names in zip(files, shards):
        arrays = {}
        for name in names:
            arrays[name] = tensor(name)
            total += arrays[name].nbytes
            weight_map[name] = file
            bar.update()
        save_file(arrays, os.path.join(path, file), metadata={"format": "pt"})
        del arrays
    bar.close()
    if n > 1:
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return files
