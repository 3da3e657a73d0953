"""The benchmark interface (load from local files -> prompt -> parse -> score) and its registry.

A benchmark module defines one subclass of :class:`Benchmark` and registers it with
``@register``. The runner only ever talks to this interface:

* ``load(data_root) -> list[Sample]`` reads the benchmark's published files from local disk
  (never the network) and returns samples whose ``prompt`` is the user-visible text the
  reference harness sends to a LLaVA-style model (the model adds its own conversation
  template), whose ``gold`` is the answer in the form ``parse`` produces, and whose ``meta``
  carries what the metric groups by (category, source, pair, type ...).
* ``parse(sample, raw) -> answer | None``: the reference harness's answer extraction, under the
  benchmark's rule set ``self.rules`` (``evaluation/rules.py``: which harness revision); ``None``
  means unparseable (scored wrong, counted in ``n_unparsed``).
* ``is_correct(sample, parsed) -> bool``.
* ``metrics(records) -> dict``: every number the benchmark reports. ``records`` are the
  runner's scored rows (``qid, raw_output, parsed, gold, correct, meta, choices``). The key
  named by ``primary`` is the paper-compatible number on the paper's scale.

A missing file raises :class:`BenchmarkFileMissing`, whose message names every file that
would do and where each is published.

Shared readers: JSON, JSONL, CSV, VLMEvalKit TSV (base64 images, rows that reference another
row's image by index, multi-image lists), and Hugging Face parquet (``pyarrow`` needed only
when a parquet file is actually read).
"""
from __future__ import annotations

import ast
import base64
import csv
import json
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from ..rules import HARNESS_MAX_NEW_TOKENS, get_rules

csv.field_size_limit(sys.maxsize)


# --------------------------------------------------------------------------- samples
@dataclass
class Sample:
    """One question. ``image`` is a path, raw bytes, a base64 string (``image_kind``), or None."""

    qid: str
    prompt: str
    gold: Any
    image: Any = None
    image_kind: str = "path"  # 'path' | 'bytes' | 'base64' | 'array'
    choices: Optional[dict] = None
    meta: dict = field(default_factory=dict)

    def load_image(self):
        """The image as an RGB PIL image, decoded lazily (most of a benchmark is never decoded) by
        the training data's decoder (`vlm_spatial.data.preprocess.load_image`: EXIF orientation
        applied, 16-bit scaled), or None for a text-only question."""
        from vlm_spatial.data.preprocess import load_image

        img = self.image
        if isinstance(img, (list, tuple)):  # multi-image rows: the first image
            img = img[0] if img else None
        if img is None:
            return None
        if self.image_kind == "path":
            return load_image(img)
        if self.image_kind == "bytes":
            return load_image(bytes(img))
        if self.image_kind == "base64":
            return load_image(base64.b64decode(img))
        if self.image_kind == "array":
            return load_image(np.asarray(img, dtype=np.uint8))
        raise ValueError(f"unknown image_kind {self.image_kind!r}")


class BenchmarkFileMissing(FileNotFoundError):
    """A benchmark file is not on disk; the message says what to download and from where."""

    def __init__(self, benchmark: str, searched: Sequence[Path], expected: Sequence[str],
                 published: str):
        lines = [f"{benchmark}: no benchmark file found.",
                 "Searched: " + ", ".join(str(p) for p in searched),
                 "Expected one of:"]
        lines += [f"  - {e}" for e in expected]
        lines.append(f"Published at: {published}")
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- readers
def read_json(path) -> Any:
    """The parsed content of a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path) -> list[dict]:
    """One dict per non-empty line of a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_csv(path, delimiter: str = ",") -> list[dict]:
    """Rows of a CSV/TSV with a header line, as dicts of strings (a UTF-8 BOM is dropped)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def read_parquet(path) -> list[dict]:
    """Rows of a parquet file (Hugging Face ``Image`` cells stay ``{'bytes', 'path'}`` dicts)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from e
    return pq.read_table(path).to_pylist()


def read_records(path) -> list[dict]:
    """Rows of a .json (list, or dict of rows), .jsonl, .csv, .tsv or .parquet file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict):
            return [dict(v, _key=k) if isinstance(v, dict) else {"_key": k, "value": v}
                    for k, v in data.items()]
        return data
    if suffix == ".csv":
        return read_csv(path)
    if suffix == ".tsv":
        return read_vlmevalkit_tsv(path)
    if suffix == ".parquet":
        return read_parquet(path)
    raise ValueError(f"unsupported file type: {path}")


# The cells pandas.read_csv reads as NaN by default; VLMEvalKit loads its TSVs with pandas, so
# an option cell "None" or "NA" is a missing option there, and here.
PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                       "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                       "nan", "null"})


def read_vlmevalkit_tsv(path) -> list[dict]:
    """Rows (dicts of str/None) of a VLMEvalKit dataset TSV; images base64 in column ``image``.

    VLMEvalKit (``ImageBaseDataset``) stores a repeated image once: a row whose ``image`` is a
    string of at most 64 characters equal to another row's ``index`` reuses that row's image.
    An ``image`` that starts with ``[`` is a list of base64 strings (multi-image questions).
    Cells pandas reads as NaN become ``None``.
    """
    rows = read_csv(path, delimiter="\t")
    for r in rows:
        for k, v in list(r.items()):
            if v is None or v in PANDAS_NA:
                r[k] = None
    by_index = {str(r.get("index")): r.get("image") for r in rows}
    for r in rows:
        img = r.get("image")
        if isinstance(img, str):
            if len(img) <= 64 and img in by_index and by_index[img] and len(by_index[img]) > 64:
                r["image"] = by_index[img]
            elif img.startswith("["):
                r["image"] = ast.literal_eval(img)
    return rows


def hf_image(value) -> tuple[Any, str]:
    """A Hugging Face ``Image`` feature cell (``{'bytes', 'path'}``) -> (image, image_kind)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"], "bytes"
        return value.get("path"), "path"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), "bytes"
    return value, "path"


def option_columns(row: dict) -> dict:
    """VLMEvalKit option columns ``A``, ``B``, ... that are present and non-empty."""
    opts = {}
    for letter in string.ascii_uppercase:
        v = row.get(letter)
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        opts[letter] = str(v)
    return opts


# --------------------------------------------------------------------------- metric helpers
def accuracy(records: Iterable[dict]) -> float:
    """Fraction of records with a true ``correct`` (NaN for no records)."""
    rs = list(records)
    return float(np.mean([bool(r["correct"]) for r in rs])) if rs else float("nan")


def group_accuracy(records: Iterable[dict], key: Callable[[dict], Any]) -> dict:
    """{group: accuracy} with groups given by ``key(record)``, sorted by group name."""
    groups: dict = {}
    for r in records:
        groups.setdefault(key(r), []).append(r)
    return {k: accuracy(v) for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}


def count_unparsed(records: Iterable[dict]) -> int:
    """How many records have no parsed answer (scored wrong)."""
    return sum(1 for r in records if r.get("parsed") is None)


# --------------------------------------------------------------------------- interface
class Benchmark:
    """Base class; see the module docstring. Subclasses set the class attributes."""

    name: str = ""                 # registry key, e.g. 'mmvp'
    title: str = ""                # human name, e.g. 'MMVP'
    vlmevalkit_key: str = ""       # VLMEvalKit dataset key the paper-compatible mode follows
    primary: str = "accuracy"      # metrics key of the paper-compatible headline number
    scale: str = "fraction"        # 'fraction' (0..1) or 'percent' (0..100): the paper's scale
    paper_columns: dict = {}       # paper column name -> metrics key (see paper_results.json)
    max_new_tokens: int = HARNESS_MAX_NEW_TOKENS  # the harness's own limit (see rules.py)
    subdirs: Sequence[str] = ()    # directories under data_root searched before data_root itself
    expected_files: Sequence[str] = ()
    published: str = ""

    def __init__(self, rules=None, **options):
        """``rules``: a rule-set name or `RuleSet` (None: the default, see ``evaluation/rules.py``);
        ``options``: benchmark options (e.g. ``prompt_style``)."""
        self.rules = get_rules(rules)
        self.options = options

    # -- files
    def search_dirs(self, data_root) -> list[Path]:
        """``data_root/<subdir>`` for each of ``subdirs`` (default: the name), then ``data_root``."""
        root = Path(data_root)
        dirs = [root / d for d in (self.subdirs or (self.name,))]
        return dirs + [root]

    def find(self, data_root, candidates: Sequence[str], required: bool = True) -> Optional[Path]:
        """The first existing ``candidate`` (relative paths or glob patterns) in the search dirs."""
        dirs = self.search_dirs(data_root)
        for d in dirs:
            for c in candidates:
                hits = sorted(d.glob(c)) if any(ch in c for ch in "*?[") else [d / c]
                for h in hits:
                    if h.exists():
                        return h
        if required:
            raise BenchmarkFileMissing(self.title or self.name, dirs,
                                       self.expected_files or candidates, self.published)
        return None

    # -- the four steps
    def load(self, data_root) -> list[Sample]:
        """Every question of the benchmark, read from its published files under ``data_root``."""
        raise NotImplementedError

    def parse(self, sample: Sample, raw: str):
        """The answer the reference harness extracts from ``raw``, or None (unparseable)."""
        raise NotImplementedError

    def is_correct(self, sample: Sample, parsed) -> bool:
        """Whether a parsed answer is right; None never is."""
        return parsed is not None and parsed == sample.gold

    def judge(self, sample: Sample, raw) -> tuple:
        """(parsed, correct) for one raw output; never raises (a parser error = unparsed)."""
        try:
            parsed = self.parse(sample, raw)
        except Exception:  # noqa: BLE001 - an odd output must never stop a run
            parsed = None
        raw_rule = getattr(self, "correct_from_raw", None)
        if raw_rule is not None:
            correct = bool(raw_rule(sample, raw))
        else:
            correct = bool(self.is_correct(sample, parsed))
        return parsed, correct

    def metrics(self, records: list[dict]) -> dict:
        """Every number the benchmark reports for the scored rows (see the module docstring)."""
        return {"accuracy": accuracy(records), "n": len(records),
                "n_unparsed": count_unparsed(records)}


REGISTRY: dict[str, type] = {}
ALIASES: dict[str, str] = {}


def register(cls):
    """Class decorator: make a Benchmark subclass reachable by name, VLMEvalKit key and title."""
    REGISTRY[cls.name] = cls
    for alias in (cls.vlmevalkit_key, cls.title):
        if alias:
            ALIASES[alias.lower()] = cls.name
    return cls


def get_benchmark(name: str, **options) -> Benchmark:
    """The benchmark registered as ``name`` (case-insensitive; aliases allowed), built with options."""
    from vlm_spatial.evaluation import benchmarks as _  # noqa: F401  (imports every module)

    key = name.strip().lower()
    key = key if key in REGISTRY else ALIASES.get(key, key)
    if key not in REGISTRY:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[key](**options)


def list_benchmarks() -> list[str]:
    """Registered benchmark names, sorted."""
    from vlm_spatial.evaluation import benchmarks as _  # noqa: F401

    return sorted(REGISTRY)


def dedupe_qids(samples: list[Sample]) -> list[Sample]:
    """Make question ids unique by suffixing repeats ``#1``, ``#2`` in file order.

    LLaVA's MME files use the image path as ``question_id`` for both questions of an image;
    predictions from other tools are keyed the same way (see ``runner.key_predictions``).
    """
    seen: dict = {}
    for s in samples:
        k = seen.get(s.qid, 0)
        seen[s.qid] = k + 1
        if k:
            s.qid = f"{s.qid}#{k}"
    return samples
