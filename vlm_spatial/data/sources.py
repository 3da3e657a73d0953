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
A record that is not valid JSON / not UTF-8 / not an object is returned as a marker the pipeline
counts (``malformed_record``; the error names the file, the record's index in it and the byte
offset of the fault), never raised. A ``.json`` file whose array structure itself is broken fails
at construction with a message naming the file, the record index and the byte offset.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

_DECODER = json.JSONDecoder()
_WS = " \t\r\n"


def _index_json_array(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Byte (start, length) of each top-level element of a JSON array file.

    The bytes are decoded with ``surrogateescape``, so a byte that is not UTF-8 never stops the
    index: inside a string it only spoils its record (reported when that record is read), and
    ``len(text[a:b].encode("utf-8", "surrogateescape"))`` gives back the exact byte counts."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "surrogateescape")
    starts, lengths = [], []

    def nbytes(a, b):
        return len(text[a:b].encode("utf-8", "surrogateescape"))

    def skip_ws(p):
        while p < len(text) and text[p] in _WS:
            p += 1
        return p

    pos = skip_ws(1 if text.startswith("\ufeff") else 0)  # a UTF-8 byte-order mark is 3 bytes
    if pos >= len(text) or text[pos] != "[":
        raise ValueError(f"{path}: a .json LLaVA file must hold one top-level array")
    pos = skip_ws(pos + 1)
    byte_pos = nbytes(0, pos)
    if pos < len(text) and text[pos] == "]":
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    while True:
        try:
            _, end = _DECODER.raw_decode(text, pos)
        except ValueError as e:
            raise ValueError(f"{path}: invalid JSON in record {len(starts)} (starting at byte {byte_pos}; error "
                             f"at byte {byte_pos + nbytes(pos, getattr(e, 'pos', pos))}): {e}") from None
        n = nbytes(pos, end)
        starts.append(byte_pos)
        lengths.append(n)
        nxt = skip_ws(end)
        if nxt >= len(text):
            raise ValueError(f"{path}: unterminated JSON array after record {len(starts) - 1}")
        if text[nxt] == "]":
            break
        if text[nxt] != ",":
            raise ValueError(f"{path}: expected ',' or ']' after record {len(starts) - 1}, at byte "
                             f"{byte_pos + n + nbytes(end, nxt)}")
        nxt = skip_ws(nxt + 1)
        byte_pos += n + nbytes(end, nxt)
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
        self._file_first = np.cumsum([0] + [len(s) for s in starts[:-1]]).astype(np.int64)
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
        start = int(self._starts[index])
        raw = os.pread(self._fd(k), int(self._lengths[index]), start)
        out = {"image_root": self._roots[k], "file": self._files[k], "index": index}
        where = f"{self._files[k]}: record {index - int(self._file_first[k])} (byte {start})"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            out.update(record=None, error=f"{where}: byte {start + e.start} (0x{raw[e.start]:02x}) is not UTF-8; "
                                          f"re-encode the file as UTF-8")
            return out
        try:
            record = json.loads(text)
            if not isinstance(record, dict):
                raise ValueError(f"record is a {type(record).__name__}, not an object")
        except ValueError as e:
            out.update(record=None, error=f"{where}: {e}")
            return out
        out["record"] = record
        return out

    def __repr__(self) -> str:
        return f"LlavaJsonSource(files={self._files}, image_roots={self._roots}, len={len(self)})"

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
