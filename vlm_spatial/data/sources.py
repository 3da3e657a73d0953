"""Random-access sources over LLaVA-format JSON / JSONL files.

The LLaVA record format (``blip_laion_cc_sbu_558k.json``, ``llava_v1_5_mix665k.json``)::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "The bus in the image is white and red."}, ...]}

``image`` is optional (text-only records, e.g. ShareGPT in the 665K mix); ``id`` may be a string or
an int. A ``.json`` file is one top-level array of records; a ``.jsonl`` file has one record a line.

:class:`LlavaJsonSource` implements grain's ``RandomAccessDataSource`` protocol (``__len__``,
``__getitem__``): at construction it scans each file once to build a byte-offset index (two int64
numpy arrays — cheap to pickle into worker processes), and each ``__getitem__`` reads and parses
just that record with ``os.pread``. Shuffling and resuming therefore never need a pass over the data.
A record that is not valid JSON / not an object is returned as a marker the pipeline counts
(``malformed_record``), never raised.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

_DECODER = json.JSONDecoder()
_WS = " \t\r\n"


def _index_json_array(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Byte (start, length) of each top-level element of a JSON array file."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    starts, lengths = [], []

    def skip_ws(p):
        while p < len(text) and text[p] in _WS:
            p += 1
        return p

    pos = skip_ws(1 if text.startswith("\ufeff") else 0)  # a UTF-8 byte-order mark is 3 bytes
    if pos >= len(text) or text[pos] != "[":
        raise ValueError(f"{path}: a .json LLaVA file must hold one top-level array")
    pos = skip_ws(pos + 1)
    byte_pos = len(text[:pos].encode("utf-8"))
    if pos < len(text) and text[pos] == "]":
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    while True:
        try:
            _, end = _DECODER.raw_decode(text, pos)
        except ValueError as e:
            raise ValueError(f"{path}: invalid JSON in record {len(starts)} (char {pos}): {e}") from None
        nbytes = len(text[pos:end].encode("utf-8"))
        starts.append(byte_pos)
        lengths.append(nbytes)
        nxt = skip_ws(end)
        if nxt >= len(text):
            raise ValueError(f"{path}: unterminated JSON array")
        if text[nxt] == "]":
            break
        if text[nxt] != ",":
            raise ValueError(f"{path}: expected ',' or ']' at char {nxt}")
        nxt = skip_ws(nxt + 1)
        byte_pos += nbytes + len(text[end:nxt].encode("utf-8"))
        pos = nxt
    return np.asarray(starts, np.int64), np.asarray(lengths, np.int64)


def _index_jsonl(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Byte (start, length) of each non-blank line of a JSONL file."""
    starts, lengths = [], []
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                starts.append(offset)
                lengths.append(len(line))
            offset += len(line)
    return np.asarray(starts, np.int64), np.asarray(lengths, np.int64)


class LlavaJsonSource:
    """grain ``RandomAccessDataSource`` over one or several LLaVA JSON/JSONL files.

    Args:
      files: paths of ``.json`` (one array) or ``.jsonl`` (one record a line) files.
      image_roots: one image root per file (``None`` = paths in that file are absolute or relative
        to the working directory), or a single root for all files.

    ``source[i]`` returns ``{"record": dict, "image_root": str | None, "file": str, "index": int}``;
    a record that fails to parse is returned as ``{"record": None, "error": str, ...}``.
    """

    def __init__(self, files: Sequence[str] | str, image_roots: Sequence[str | None] | str | None = None):
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        files = [os.fspath(f) for f in files]
        if image_roots is None or isinstance(image_roots, (str, os.PathLike)):
            image_roots = [image_roots] * len(files)
        if len(image_roots) != len(files):
            raise ValueError(f"{len(files)} files but {len(image_roots)} image roots")
        self._files = files
        self._roots = [None if r is None else os.fspath(r) for r in image_roots]
        starts, lengths, file_ids = [], [], []
        for k, path in enumerate(files):
            if path.endswith(".jsonl"):
                s, n = _index_jsonl(path)
            else:
                s, n = _index_json_array(path)
            starts.append(s)
            lengths.append(n)
            file_ids.append(np.full(len(s), k, np.int32))
        self._starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self._lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        self._file_ids = np.concatenate(file_ids) if file_ids else np.zeros(0, np.int32)
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return int(len(self._starts))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fds"] = {}  # file descriptors are per process
        return state

    def _fd(self, k: int) -> int:
        fd = self._fds.get(k)
        if fd is None:
            fd = self._fds[k] = os.open(self._files[k], os.O_RDONLY)
        return fd

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += len(self)
        k = int(self._file_ids[index])
        raw = os.pread(self._fd(k), int(self._lengths[index]), int(self._starts[index]))
        out = {"image_root": self._roots[k], "file": self._files[k], "index": index}
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError(f"record is a {type(record).__name__}, not an object")
        except ValueError as e:
            out.update(record=None, error=str(e))
            return out
        out["record"] = record
        return out

    def __repr__(self) -> str:
        return f"LlavaJsonSource(files={self._files}, len={len(self)})"

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
