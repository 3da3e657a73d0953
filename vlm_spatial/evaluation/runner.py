"""Run benchmarks against a predictor, resumably, and score predictions files.

The model side is a callable ``predict(samples: list[Sample], max_new_tokens: int) -> list[str]``
returning one raw text output per sample; ``vlm_predictor`` adapts a ``vlm_spatial.load``-ed
model. ``evaluate_checkpoint`` is the whole job (what ``python -m vlm_spatial.evaluate`` and the
``eval`` stage of ``vlm_spatial.main`` call): check every benchmark file, load the model
(sharded on a mesh if given), run, report.

Outputs under ``out_dir``:

* ``<benchmark>/predictions.jsonl``: a header record ``{"vlm_spatial_predictions": 1, "benchmark",
  "rules", "max_new_tokens", "checkpoint", "dtype", "mcq", "decode_rows", "variant", "data_root",
  "limit", "options"}`` (how the answers were made and which rule set scored them), then one row
  per question, appended as each batch finishes: ``{"qid", "prompt", "raw_output", "parsed",
  "gold", "correct"}``. An interrupted run resumes from it: questions already in the file are not
  asked again (a torn last line is dropped); a file written with other prompts or other answer
  settings (`ANSWER_FIELDS`: another checkpoint, dtype, length) is refused; rows written under
  another rule set are re-scored under this run's. Files without the header (older runs, other
  tools) still load: `read_jsonl` skips the header, `read_header` reads it.
* ``<benchmark>/metrics.json``; for the whole run ``metrics.json`` ({benchmark: metrics}) and
  ``report.md`` (the rule set, checkpoint and generation settings, then this run beside the
  paper's numbers for the variant; see ``report.py``). Every metrics dict names its ``rules``.

On several hosts (the training mesh of a multi-host run) every process runs the same questions
in lockstep and only the first writes; ``out_dir`` must be on a filesystem they share.

``score_file`` re-scores a predictions file without a model, under any rule set: for one of ours
it writes exactly the files a fresh run under that rule set writes (same header, rows, metrics
and report, byte for byte). ``score_predictions`` scores rows keyed by ``qid`` (or
``question_id`` / ``questionId`` / ``index`` / ``id``) and the raw output is read from
``raw_output`` (or ``prediction`` / ``text`` / ``response`` / ``output``), so LLaVA answer files
and other tools' outputs are scored by exactly the same parser and metric. Repeated ids (LLaVA's
MME files use the image path for both questions of an image) are numbered in file order, as
the loaders number repeated question ids.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

from tqdm.auto import tqdm

from vlm_spatial.evaluation.benchmarks.base import Benchmark, Sample, dedupe_qids, get_benchmark
from vlm_spatial.evaluation.report import load_paper_results, markdown_report, paper_rows
from vlm_spatial.evaluation.rules import get_rules

log = logging.getLogger(__name__)

QID_FIELDS = ("qid", "question_id", "questionId", "index", "id")
RAW_FIELDS = ("raw_output", "prediction", "text", "response", "output")
PUBLIC_FIELDS = ("qid", "prompt", "raw_output", "parsed", "gold", "correct")
HEADER_KEY = "vlm_spatial_predictions"  # marks the header record; its value is the format version
# what the run recorded in every predictions header, in this order (None where not known)
RUN_FIELDS = ("checkpoint", "dtype", "mcq", "decode_rows", "variant", "data_root", "limit", "options")
# header fields that change the answers: a file written with other values is not resumed
ANSWER_FIELDS = ("max_new_tokens", "checkpoint", "dtype", "mcq", "decode_rows", "options")

Predictor = Callable[[list, int], list]


def _first(row: dict, fields: Sequence[str]):
    for f in fields:
        if f in row and row[f] is not None:
            return row[f]
    return None


def _records(path) -> list:
    """Every readable record of a JSONL file; an unreadable line (a write cut by a kill) is
    skipped with a warning."""
    records = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d: unreadable line skipped (interrupted write?)", path, i + 1)
    return records


def _is_header(record) -> bool:
    return isinstance(record, dict) and HEADER_KEY in record


def read_jsonl(path) -> list[dict]:
    """The rows of a JSONL file (a predictions file's header record is not a row; see
    `read_header`); an unreadable line is skipped with a warning."""
    return [r for r in _records(path) if not _is_header(r)]


def read_header(path) -> Optional[dict]:
    """The header record of a predictions file (see the module docstring), or None (older files,
    other tools' files)."""
    return next((r for r in _records(path) if _is_header(r)), None)


def predictions_header(bench: Benchmark, max_new_tokens: Optional[int], run_info: Optional[dict]) -> dict:
    """The header record of ``bench``'s predictions file: benchmark, rule set, answer length and
    the run's `RUN_FIELDS` (from ``run_info``; None where not given)."""
    info = run_info or {}
    header = {HEADER_KEY: 1, "benchmark": bench.name, "rules": bench.rules.name,
              "max_new_tokens": max_new_tokens, **{k: info.get(k) for k in RUN_FIELDS}}
    header["options"] = dict(header["options"] or {})  # no benchmark options: {}
    return header


def _write_predictions(path: Path, header: dict, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in [header, *rows])


def key_rows(rows: list[dict]) -> dict:
    """{qid: row}; repeated ids get ``#1``, ``#2`` suffixes in file order (as `dedupe_qids`)."""
    out, seen = {}, {}
    for r in rows:
        if _is_header(r):
            continue
        qid = _first(r, QID_FIELDS)
        if qid is None:
            raise ValueError(f"prediction row without an id field ({'/'.join(QID_FIELDS)}): {r}")
        qid = str(qid)
        k = seen.get(qid, 0)
        seen[qid] = k + 1
        out[qid if k == 0 else f"{qid}#{k}"] = r
    return out


def key_predictions(rows: list[dict]) -> dict:
    """{qid: raw output} of prediction rows (see `key_rows` for the ids)."""
    return {qid: _first(r, RAW_FIELDS) for qid, r in key_rows(rows).items()}


def make_record(bench: Benchmark, sample: Sample, raw) -> dict:
    """The scored row of one answer: the public fields plus ``meta``/``choices`` for the metrics."""
    parsed, correct = bench.judge(sample, raw)
    return {"qid": sample.qid, "prompt": sample.prompt, "raw_output": raw, "parsed": parsed,
            "gold": sample.gold, "correct": correct, "meta": sample.meta, "choices": sample.choices}


def score_predictions(bench: Benchmark, samples: list[Sample], predictions: dict,
                      allow_missing: bool = False) -> tuple[list[dict], dict]:
    """Score ``predictions`` ({qid: raw output}) against ``samples``; returns (records, metrics).

    Questions without a prediction raise unless ``allow_missing`` (then ``n_missing`` counts them).
    """
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
    metrics["rules"] = bench.rules.name
    return records, metrics


def _public(record: dict) -> dict:
    return {k: record[k] for k in PUBLIC_FIELDS}


def _write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)


def _is_writer() -> bool:
    """Only the first process writes files (every process of a multi-host run asks the same questions)."""
    import jax

    return jax.process_index() == 0


def _barrier(name: str) -> None:
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _check_prompts(path, rows: dict, samples: list[Sample]) -> None:
    """Refuse rows ({qid: row}) whose prompt differs from this run's (another prompt style or
    data version)."""
    by_qid = {s.qid: s for s in samples}
    stale = [q for q, r in rows.items() if q in by_qid and r.get("prompt") != by_qid[q].prompt]
    if stale:
        raise ValueError(f"{path} was written with other prompts (e.g. question {stale[0]!r}); "
                         "use another --out or delete the file to start this benchmark afresh")


def _resume(bench: Benchmark, samples: list[Sample], pred_path: Path, header: dict) -> dict:
    """{qid: raw output} of this run's questions already answered in ``pred_path``.

    A file made with other prompts or other `ANSWER_FIELDS` than ``header`` (this run's) is
    refused. The file is rewritten as ``header`` + its readable rows in order (a line torn by a
    kill is dropped), this run's questions re-scored under this run's rule set.
    """
    if not pred_path.exists():
        _barrier(f"resume {pred_path}")
        return {}
    old = read_header(pred_path)
    rows = read_jsonl(pred_path)
    _barrier(f"read {pred_path}")  # multi-host: every process has read the file before it is rewritten
    if old is None:
        log.warning("%s has no header: its answers are taken as made with this run's settings", pred_path)
    else:
        changed = [k for k in ANSWER_FIELDS if old.get(k) != header.get(k)]
        if changed:
            raise ValueError(f"{pred_path} was written with other answer settings ("
                             + ", ".join(f"{k}: {old.get(k)!r} there, {header.get(k)!r} now" for k in changed)
                             + "); use another --out or delete the file to start this benchmark afresh")
    keyed = key_rows(rows)
    _check_prompts(pred_path, keyed, samples)
    by_qid = {s.qid: s for s in samples}
    done = {q: _first(r, RAW_FIELDS) for q, r in keyed.items() if q in by_qid}
    if _is_writer():
        rescored = {id(r): _public(make_record(bench, by_qid[q], done[q])) for q, r in keyed.items() if q in by_qid}
        _write_predictions(pred_path, header, [rescored.get(id(r), r) for r in rows])
    _barrier(f"resume {pred_path}")  # multi-host: nobody appends before the file is rewritten
    log.info("%s: resuming, %d of %d already answered", bench.name, len(done), len(samples))
    return done


def run_benchmark(bench: Benchmark, samples: list[Sample], predict: Predictor, out_dir,
                  batch_size: int = 8, max_new_tokens: Optional[int] = None,
                  run_info: Optional[dict] = None) -> dict:
    """Answer every question not yet in ``out_dir/<name>/predictions.jsonl`` (batches of
    ``batch_size``, appended as they finish), then write and return the benchmark's metrics.
    ``run_info``: the run's `RUN_FIELDS` for the file's header."""
    bdir = Path(out_dir) / bench.name
    bdir.mkdir(parents=True, exist_ok=True)
    pred_path = bdir / "predictions.jsonl"
    mnt = max_new_tokens or bench.max_new_tokens
    header = predictions_header(bench, mnt, run_info)
    done = _resume(bench, samples, pred_path, header)
    todo = [s for s in samples if s.qid not in done]
    writer = _is_writer()
    if writer and not pred_path.exists():
        _write_predictions(pred_path, header, [])
    with open(pred_path if writer else os.devnull, "a", encoding="utf-8") as f, \
            tqdm(total=len(samples), initial=len(samples) - len(todo), desc=bench.name, unit="q",
                 disable=not writer) as bar:
        for i in range(0, len(todo), batch_size):
            batch = todo[i:i + batch_size]
            outs = list(predict(batch, mnt))
            if len(outs) != len(batch):
                raise ValueError(f"predict returned {len(outs)} outputs for {len(batch)} samples")
            for s, raw in zip(batch, outs):
                done[s.qid] = raw
                f.write(json.dumps(_public(make_record(bench, s, raw)), ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(batch))
    _, metrics = score_predictions(bench, samples, done)
    if writer:
        _write_json(bdir / "metrics.json", metrics)
    return metrics


def load_benchmarks(names: Sequence[str], data_root, limit: Optional[int] = None, rules=None,
                    **options) -> dict:
    """{name: (benchmark, samples)} with every file read, so a missing one fails before any model
    is loaded (`BenchmarkFileMissing` names the expected files and where they are published).
    ``rules``: the rule set every benchmark scores by (name or `RuleSet`; None: the default)."""
    out = {}
    for name in names:
        bench = get_benchmark(name, rules=rules, **options)
        samples = dedupe_qids(bench.load(data_root))
        out[bench.name] = (bench, samples[:limit] if limit else samples)
    return out


def write_outputs(results: dict, out_dir, variant: Optional[str] = None,
                  run_info: Optional[dict] = None) -> None:
    """``metrics.json`` and ``report.md`` of ``results`` ({name: {"benchmark", "metrics",
    "max_new_tokens"}}); ``run_info``: the run's `RUN_FIELDS` for the report's header."""
    if not _is_writer():
        return
    out_dir = Path(out_dir)
    _write_json(out_dir / "metrics.json", {k: v["metrics"] for k, v in results.items()})
    (out_dir / "report.md").write_text(markdown_report(results, variant, run=run_info), encoding="utf-8")


def run(loaded: dict, out_dir, predict: Predictor, variant: Optional[str] = None, batch_size: int = 8,
        max_new_tokens: Optional[int] = None, run_info: Optional[dict] = None) -> dict:
    """Run every benchmark of ``loaded`` (from `load_benchmarks`) with ``predict``; writes the
    per-benchmark files and the run's ``metrics.json``/``report.md``. ``run_info``: the run's
    `RUN_FIELDS` (checkpoint, dtype ...) recorded in the headers and the report. Returns
    {name: metrics}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_info = dict(run_info or {}, variant=variant)
    results = {}
    for name, (bench, samples) in loaded.items():
        metrics = run_benchmark(bench, samples, predict, out_dir, batch_size, max_new_tokens, run_info)
        results[name] = {"benchmark": bench, "metrics": metrics,
                         "max_new_tokens": max_new_tokens or bench.max_new_tokens}
    write_outputs(results, out_dir, variant, run_info)
    return {k: v["metrics"] for k, v in results.items()}


def score_file(benchmark: str, predictions_path, data_root, out_dir=None, variant: Optional[str] = None,
               allow_missing: bool = False, rules=None, **options) -> dict:
    """Metrics of an existing predictions file (ours or another tool's) for ``benchmark``.

    ``rules``: the rule set to score by (None: the file header's, else the default). The
    header's variant, question limit and benchmark options are used unless given here. With
    ``out_dir``, writes ``<name>/predictions.jsonl`` (header naming this rule set, rows scored
    by it), ``<name>/metrics.json``, ``metrics.json`` and ``report.md`` -- for a predictions file
    of ours, byte for byte what a fresh run under this rule set writes.
    """
    check_variant(variant)
    header = read_header(predictions_path) or {}
    name = get_benchmark(benchmark).name
    if header.get("benchmark") not in (None, name):
        raise ValueError(f"{predictions_path} holds {header['benchmark']!r} predictions, not {name!r}")
    options = {**(header.get("options") or {}), **options}
    bench = get_benchmark(benchmark, rules=get_rules(rules or header.get("rules")), **options)
    limit = header.get("limit")
    samples = dedupe_qids(bench.load(data_root))
    samples = samples[:limit] if limit else samples
    rows = key_rows(read_jsonl(predictions_path))
    if header:
        _check_prompts(predictions_path, rows, samples)
    records, metrics = score_predictions(bench, samples, {q: _first(r, RAW_FIELDS) for q, r in rows.items()},
                                         allow_missing=allow_missing)
    if out_dir:
        out = Path(out_dir)
        (out / bench.name).mkdir(parents=True, exist_ok=True)
        variant = variant or header.get("variant")
        run_info = {**{k: header.get(k) for k in RUN_FIELDS}, "variant": variant, "options": options,
                    "data_root": os.path.abspath(data_root)}
        mnt = header.get("max_new_tokens")
        _write_predictions(out / bench.name / "predictions.jsonl", predictions_header(bench, mnt, run_info),
                           [_public(r) for r in records])
        _write_json(out / bench.name / "metrics.json", metrics)
        write_outputs({bench.name: {"benchmark": bench, "metrics": metrics, "max_new_tokens": mnt}}, out,
                      variant, run_info)
    return metrics


def paper_variant(cfg) -> str:
    """The paper variant of a model config (a key of ``paper_results.json``'s ``variants``, as
    the config files are named): its encoder family, ``_2drope`` when the encoder has 2D-RoPE."""
    return cfg.vision.family + ("_2drope" if cfg.vision.rope2d else "")


def check_variant(variant: Optional[str]) -> None:
    """Fail now, not after a long run, when ``variant`` names no row of the paper's tables."""
    if variant is not None:
        paper_rows(load_paper_results(), variant)


def vlm_predictor(vlm, mcq: str = "generate") -> Predictor:
    """Adapt a ``vlm_spatial.load``-ed model (``LoadedVLM``) to ``predict(samples, max_new_tokens)``.

    ``mcq='generate'`` answers every question by greedy generation (the paper's harness);
    ``'likelihood'`` answers multiple-choice questions (samples with ``choices``) by the option
    letter whose log-likelihood as the reply is highest, and generates the rest.
    """
    if mcq not in ("generate", "likelihood"):
        raise ValueError(f"mcq={mcq!r}; one of 'generate', 'likelihood'")

    def predict(samples: list[Sample], max_new_tokens: int) -> list[str]:
        images = [s.load_image() for s in samples]
        prompts = [s.prompt for s in samples]
        scored = [i for i, s in enumerate(samples) if mcq == "likelihood" and s.choices]
        rest = [i for i in range(len(samples)) if i not in set(scored)]
        out: list = [None] * len(samples)
        if rest:
            for i, text in zip(rest, vlm.generate([images[i] for i in rest], [prompts[i] for i in rest],
                                                  max_new_tokens)):
                out[i] = text
        if scored:
            letters = [list(samples[i].choices) for i in scored]
            scores = vlm.score_options([images[i] for i in scored], [prompts[i] for i in scored], letters)
            for i, opts, sc in zip(scored, letters, scores):
                out[i] = opts[max(range(len(opts)), key=sc.__getitem__)]
        return out

    return predict


def evaluate_checkpoint(checkpoint: str, benchmarks: Sequence[str], data_root, out_dir, *,
                        variant: Optional[str] = None, batch_size: int = 8, limit: Optional[int] = None,
                        max_new_tokens: Optional[int] = None, mesh=None, mcq: str = "generate",
                        dtype: Optional[str] = None, rules=None, resize_mode: str = "resize",
                        **options) -> dict:
    """Evaluate a model on benchmarks; returns {benchmark: metrics} and writes ``out_dir``.

    ``checkpoint``: a vlm_spatial checkpoint, training workdir or Hugging Face LLaVA directory.
    ``benchmarks``: registry names (``python -m vlm_spatial.evaluate list``); their files are
    read from ``data_root`` first, so a missing one fails before the model loads.
    ``variant``: the paper row to compare with, a config name ('aimv2_2drope') or a table row
    name ('LLaVA-AIMv2-2D-RoPE'); default: `paper_variant` of the checkpoint's config (none when the
    paper has no row for it). ``mesh``:
    shard params and batches on it (e.g. the training mesh); None = `vlm_spatial.load`'s default. ``limit``: the first N questions of each benchmark.
    ``max_new_tokens``: overrides each benchmark's own. ``mcq``: see `vlm_predictor`.
    ``dtype``: compute dtype override (e.g. 'bfloat16'). ``rules``: the scoring rule set (a name
    of ``evaluation/rules.py``; None: the default). ``resize_mode``: image preprocessing as the
    model was trained, 'resize' (the paper's) or 'pad' (LLaVA's pad-to-square). ``options``:
    benchmark options.
    """
    import vlm_spatial
    from vlm_spatial.api import image_config_for

    check_variant(variant)
    loaded = load_benchmarks(benchmarks, data_root, limit=limit, rules=rules, **options)
    vlm = vlm_spatial.load(checkpoint, dtype=dtype, mesh=mesh)
    vlm.image_config = image_config_for(vlm.config, resize_mode)
    if variant is None:  # resolved before any benchmark runs: a model the paper has no row for reports alone
        variant = paper_variant(vlm.config)
        try:
            check_variant(variant)
        except KeyError:
            log.info("the paper has no row for %s; the report shows this run alone", variant)
            variant = None
    log.info("evaluating %s as paper variant %s on %s", checkpoint, variant, ", ".join(loaded))
    run_info = {"checkpoint": os.path.abspath(checkpoint), "dtype": str(vlm.config.decoder.dtype), "mcq": mcq,
                "decode_rows": vlm.decode_rows, "data_root": os.path.abspath(data_root), "limit": limit,
                "options": options}
    return run(loaded, out_dir, vlm_predictor(vlm, mcq), variant=variant, batch_size=batch_size,
               max_new_tokens=max_new_tokens, run_info=run_info)
