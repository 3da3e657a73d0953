"""Run benchmarks against a predictor, resumably, and score predictions files.

The model side is a callable ``predict(samples: list[Sample]) -> list[str]`` returning one raw
text output per sample (it may also take ``max_new_tokens=``; the runner passes the
benchmark's value when it does). ``vlm_predictor`` adapts a loaded ``vlm_spatial`` model
(``vlm.generate(images, prompts, max_new_tokens)``).

Outputs under ``out_dir``:
* ``<benchmark>/predictions.jsonl``: one row per question, written as each batch finishes:
  ``{"qid", "prompt", "raw_output", "parsed", "gold", "correct"}``. An interrupted run resumes
  from it: questions already in the file are not asked again.
* ``<benchmark>/metrics.json``, and for the whole run ``metrics.json`` and ``report.md``
  (this run beside the paper; see ``report.py``).

``score_predictions`` re-scores an existing predictions file without a model: rows are keyed
by ``qid`` (or ``question_id`` / ``index`` / ``id``) and the raw output is read from
``raw_output`` (or ``prediction`` / ``text`` / ``response`` / ``output``), so LLaVA answer files
and other tools' outputs are scored by exactly the same parser and metric. Repeated ids (LLaVA's
MME files use the image path for both questions of an image) are numbered in file order, as
the loaders number repeated question ids.
"""
from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

from vlm_spatial.evaluation.benchmarks.base import Benchmark, Sample, dedupe_qids, get_benchmark
from vlm_spatial.evaluation.report import markdown_report

log = logging.getLogger(__name__)

QID_FIELDS = ("qid", "question_id", "questionId", "index", "id")
RAW_FIELDS = ("raw_output", "prediction", "text", "response", "output")


def _first(row: dict, fields: Sequence[str]):
    for f in fields:
        if f in row and row[f] is not None:
            return row[f]
    return None


def read_jsonl(path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d: unreadable line skipped (interrupted write?)", path, i + 1)
    return rows


def key_predictions(rows: list[dict]) -> dict:
    """{qid: raw output}; repeated ids get ``#1``, ``#2`` suffixes in file order."""
    out, seen = {}, {}
    for r in rows:
        qid = _first(r, QID_FIELDS)
        if qid is None:
            raise ValueError(f"prediction row without an id field ({'/'.join(QID_FIELDS)}): {r}")
        qid = str(qid)
        k = seen.get(qid, 0)
        seen[qid] = k + 1
        out[qid if k == 0 else f"{qid}#{k}"] = _first(r, RAW_FIELDS)
    return out


def make_record(bench: Benchmark, sample: Sample, raw) -> dict:
    parsed, correct = bench.judge(sample, raw)
    return {"qid": sample.qid, "prompt": sample.prompt, "raw_output": raw, "parsed": parsed,
            "gold": sample.gold, "correct": correct, "meta": sample.meta,
            "choices": sample.choices, "raw": raw}


def score_predictions(bench: Benchmark, samples: list[Sample], predictions: dict,
                      allow_missing: bool = False) -> tuple[list[dict], dict]:
    """Score {qid: raw} against ``samples``; returns (records, metrics)."""
    missing = [s.qid for s in samples if s.qid not in predictions]
    if missing and not allow_missing:
        raise ValueError(f"{bench.name}: {len(missing)} of {len(samples)} questions have no "
                         f"prediction, e.g. {missing[:5]} (pass allow_missing to score a subset)")
    unknown = set(predictions) - {s.qid for s in samples}
    if unknown:
        log.warning("%s: %d predictions match no question, e.g. %s", bench.name, len(unknown),
                    sorted(unknown)[:5])
    records = [make_record(bench, s, predictions[s.qid]) for s in samples if s.qid in predictions]
    metrics = bench.metrics(records) if records else {"n": 0}
    metrics["n_missing"] = len(missing)
    return records, metrics


def _public(record: dict) -> dict:
    return {k: record[k] for k in ("qid", "prompt", "raw_output", "parsed", "gold", "correct")}


def _call_predict(predict: Callable, batch: list[Sample], max_new_tokens: int) -> list[str]:
    try:
        params = inspect.signature(predict).parameters
    except (TypeError, ValueError):
        params = {}
    if "max_new_tokens" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        outs = predict(batch, max_new_tokens=max_new_tokens)
    else:
        outs = predict(batch)
    outs = list(outs)
    if len(outs) != len(batch):
        raise ValueError(f"predict returned {len(outs)} outputs for {len(batch)} samples")
    return outs


def run_benchmark(bench: Benchmark, samples: list[Sample], predict: Callable, out_dir,
                  batch_size: int = 8, max_new_tokens: Optional[int] = None) -> dict:
    """Generate (resuming), write predictions and metrics; returns the metrics."""
    bdir = Path(out_dir) / bench.name
    bdir.mkdir(parents=True, exist_ok=True)
    pred_path = bdir / "predictions.jsonl"
    done = key_predictions(read_jsonl(pred_path)) if pred_path.exists() else {}
    todo = [s for s in samples if s.qid not in done]
    if done:
        log.info("%s: resuming, %d of %d already answered", bench.name, len(samples) - len(todo),
                 len(samples))
    mnt = max_new_tokens or bench.max_new_tokens
    with open(pred_path, "a", encoding="utf-8") as f:
        for i in range(0, len(todo), batch_size):
            batch = todo[i:i + batch_size]
            for s, raw in zip(batch, _call_predict(predict, batch, mnt)):
                rec = make_record(bench, s, raw)
                done[s.qid] = raw
                f.write(json.dumps(_public(rec), ensure_ascii=False) + "\n")
            f.flush()
    _, metrics = score_predictions(bench, samples, done)
    with open(bdir / "metrics.json", "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1, ensure_ascii=False)
    return metrics


def load_benchmarks(names: Sequence[str], data_root, limit: Optional[int] = None,
                    **options) -> dict:
    """{name: (benchmark, samples)}; every file is checked before any generation starts."""
    out = {}
    for name in names:
        bench = get_benchmark(name, **options)
        samples = dedupe_qids(bench.load(data_root))
        if limit:
            samples = samples[:limit]
        out[bench.name] = (bench, samples)
    return out


def run(benchmarks: Sequence[str], data_root, out_dir, predict: Callable, variant=None,
        batch_size: int = 8, limit: Optional[int] = None, max_new_tokens: Optional[int] = None,
        **options) -> dict:
    loaded = load_benchmarks(benchmarks, data_root, limit=limit, **options)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, (bench, samples) in loaded.items():
        metrics = run_benchmark(bench, samples, predict, out_dir, batch_size, max_new_tokens)
        results[name] = {"benchmark": bench, "metrics": metrics}
    write_outputs(results, out_dir, variant)
    return {k: v["metrics"] for k, v in results.items()}


def write_outputs(results: dict, out_dir, variant=None) -> None:
    out_dir = Path(out_dir)
    with open(out_dir / "metrics.json", "w", encoding="utf-8") as f:
        json.dump({k: v["metrics"] for k, v in results.items()}, f, indent=1, ensure_ascii=False)
    (out_dir / "report.md").write_text(markdown_report(results, variant), encoding="utf-8")


def score_file(benchmark: str, predictions_path, data_root, out_dir=None, variant=None,
               allow_missing: bool = False, **options) -> dict:
    bench = get_benchmark(benchmark, **options)
    samples = dedupe_qids(bench.load(data_root))
    records, metrics = score_predictions(bench, samples, key_predictions(read_jsonl(predictions_path)),
                                         allow_missing=allow_missing)
    if out_dir:
        out = Path(out_dir)
        (out / bench.name).mkdir(parents=True, exist_ok=True)
        with open(out / bench.name / "scored_predictions.jsonl", "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(_public(r), ensure_ascii=False) + "\n")
        write_outputs({bench.name: {"benchmark": bench, "metrics": metrics}}, out, variant)
    return metrics


def vlm_predictor(vlm) -> Callable:
    """Adapt ``vlm_spatial.load(checkpoint)`` (``.generate(images, prompts, max_new_tokens)``)."""
    def predict(samples: list[Sample], max_new_tokens: int = 64) -> list[str]:
        images = [s.load_image() for s in samples]
        return list(vlm.generate(images, [s.prompt for s in samples], max_new_tokens))
    return predict
