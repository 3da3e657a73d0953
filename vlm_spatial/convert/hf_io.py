"""Reading Hugging Face model directories: config.json and safetensors shards, never pickle.

`HFCheckpoint(path)` opens a directory written by `save_pretrained` (one `model.safetensors` or
sharded `model-0000X-of-0000N.safetensors` + `model.safetensors.index.json`) and gives lazy,
per-tensor access by name as numpy arrays, so a loader touches one tensor at a time.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Mapping

import numpy as np
from safetensors import safe_open

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


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
        for file in safetensors_files(path):
            with safe_open(file, framework="numpy") as f:
                for name in f.keys():
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


def with_prefix(tensors: Mapping[str, np.ndarray], prefixes: Iterable[str]) -> Callable[[str], np.ndarray]:
    """A getter `get(name)` that finds `name` under the first of `prefixes` present in `tensors`.

    Hugging Face writes the same model under different prefixes (`vision_tower.`,
    `vision_tower.vision_model.`, `model.vision_tower.`, ...); this hides which one a file used.
    """
    prefixes = list(prefixes)

    def get(name: str) -> np.ndarray:
        for p in prefixes:
            if p + name in tensors:
                return tensors[p + name]
        raise KeyError(name)

    return get


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
    ignore_unexpected: Callable[[str], bool] = lambda name: False,
) -> None:
    """Raise `WeightsError` listing every missing, unexpected and mis-shaped tensor by name.

    `shapes` are what the file holds, `expected` what the model needs (same naming).
    """
    missing = sorted(n for n in expected if n not in shapes)
    unexpected = sorted(n for n in shapes if n not in expected and not ignore_unexpected(n))
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
