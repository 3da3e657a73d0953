"""The evaluation runner and CLI: end to end on CPU (synthetic set -> tiny checkpoint -> CLI ->
predictions, metrics, report; `score` re-scores to the same files), re-scoring under another rule
set equals a fresh run under it byte for byte, resume after a crash equals an uninterrupted run
(also across rule sets), old predictions files without a header still load, a missing benchmark
file is named before any model loads."""
import filecmp
import json
import os

import numpy as np
import pytest
from flax import nnx

from vlm_spatial import checkpoint
from vlm_spatial.data import synthetic
from vlm_spatial.data.templates import IMAGE_MARKER, load_tokenizer
from vlm_spatial.evaluate import main
from vlm_spatial.evaluation import generate as gen
from vlm_spatial.evaluation import runner
from vlm_spatial.evaluation.rules import DEFAULT_RULES
from vlm_spatial.models import presets
from vlm_spatial.models.vlm import VLM

NUM_TEST = 16
OUT_FILES = ("synthetic/predictions.jsonl", "synthetic/metrics.json", "metrics.json", "report.md")


def same_files(a, b) -> bool:
    """Whether the run directories `a` and `b` hold byte-identical `OUT_FILES`."""
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in OUT_FILES)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(str(root), num_train=4, num_val=2, num_test=NUM_TEST, seed=0)
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(data_root, tmp_path_factory):
    """A tiny random CLIP + LLaMA VLM on the synthetic tokenizer, written as a vlm_spatial checkpoint."""
    tok = load_tokenizer(str(data_root / "tokenizer"))
    cfg = presets.vlm_config("tiny-clip", "tiny-llama", vocab_size=len(tok),
                             image_token_id=tok.convert_tokens_to_ids(IMAGE_MARKER))
    params = nnx.to_pure_dict(nnx.state(VLM(cfg, rngs=nnx.Rngs(0))))
    path = tmp_path_factory.mktemp("ckpt") / "model"
    checkpoint.write_model(str(path), cfg, params, tok)
    return path


def test_cli_end_to_end_on_the_synthetic_set(data_root, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    assert main(["--checkpoint", str(tiny_checkpoint), "--benchmarks", "synthetic",
                 "--data_root", str(data_root), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)

    rows = runner.read_jsonl(out / "synthetic" / "predictions.jsonl")
    metrics = json.loads((out / "metrics.json").read_text())["synthetic"]
    report = (out / "report.md").read_text()
    evals = json.loads((data_root / "test_eval.json").read_text())
    assert [r["qid"] for r in rows] == [e["question_id"] for e in evals]
    assert all(set(r) == set(runner.PUBLIC_FIELDS) for r in rows)
    assert all(isinstance(r["raw_output"], str) for r in rows)
    assert metrics == printed["synthetic"] == json.loads((out / "synthetic" / "metrics.json").read_text())
    assert metrics["n"] == NUM_TEST and metrics["n_missing"] == 0
    assert metrics["accuracy"] == pytest.approx(np.mean([r["correct"] for r in rows]))
    assert metrics["n_unparsed"] == sum(r["parsed"] is None for r in rows)
    assert "LLaVA-1.5" in report and f"{metrics['accuracy']:.3f}" in report  # variant read from the config

    # what made the answers is in the predictions header, metrics.json and above the report's table
    header = runner.read_header(out / "synthetic" / "predictions.jsonl")
    assert header == {"vlm_spatial_predictions": 1, "benchmark": "synthetic", "rules": DEFAULT_RULES,
                      "max_new_tokens": 16, "checkpoint": str(tiny_checkpoint), "dtype": "float32",
                      "mcq": "generate", "decode_rows": gen.DECODE_ROWS, "variant": "clip",
                      "data_root": str(data_root), "limit": None, "options": {}}
    assert metrics["rules"] == DEFAULT_RULES
    above_table = report.split("| Benchmark |")[0]
    assert f"Scoring rules: **{DEFAULT_RULES}** (VLMEvalKit d3aa188e, 2025-09-02)" in above_table
    assert f"Checkpoint: `{tiny_checkpoint}`; compute dtype float32" in above_table
    assert "max_new_tokens (Synthetic spatial 16)" in above_table and "8 rows per program" in above_table
    assert (f"To redo: `python -m vlm_spatial.evaluate --checkpoint {tiny_checkpoint} --benchmarks synthetic "
            f"--data_root {data_root} --out OUT --rules {DEFAULT_RULES} --dtype float32 --mcq generate "
            "--variant clip`") in above_table

    # `score` re-scores the predictions file, without a model, to the same metrics and, with --out,
    # to the same files byte for byte
    assert main(["score", "--benchmark", "synthetic", "--predictions", str(out / "synthetic" / "predictions.jsonl"),
                 "--data_root", str(data_root), "--out", str(tmp_path / "rescored")]) == 0
    assert json.loads(capsys.readouterr().out) == metrics
    assert same_files(out, tmp_path / "rescored")
    assert main(["score", "--benchmark", "synthetic", "--predictions", str(out / "synthetic" / "predictions.jsonl"),
                 "--data_root", str(data_root), "--rules", "vlmevalkit-2025.04"]) == 0
    assert json.loads(capsys.readouterr().out)["rules"] == "vlmevalkit-2025.04"

    # sharded on a (2, 2, 2) mesh of the 8 fake devices: the same answers
    meshes = []
    real = gen.generate_tokens
    monkeypatch.setattr(gen, "generate_tokens", lambda *a, **k: meshes.append(k["mesh"]) or real(*a, **k))
    assert main(["--checkpoint", str(tiny_checkpoint), "--benchmarks", "synthetic", "--mesh", "2,2,2",
                 "--data_root", str(data_root), "--out", str(tmp_path / "sharded"), "--limit", "8"]) == 0
    capsys.readouterr()
    assert runner.read_jsonl(tmp_path / "sharded" / "synthetic" / "predictions.jsonl") == rows[:8]
    assert meshes and all(m is not None and m.size == 8 for m in meshes)

    # multiple choice by option log-likelihood: every relation_mc answer is an option letter
    assert main(["--checkpoint", str(tiny_checkpoint), "--benchmarks", "synthetic", "--mcq", "likelihood",
                 "--data_root", str(data_root), "--out", str(tmp_path / "ll"), "--limit", "8"]) == 0
    capsys.readouterr()
    mc = [r for r in runner.read_jsonl(tmp_path / "ll" / "synthetic" / "predictions.jsonl") if r["gold"] in ("A", "B")]
    assert mc and all(r["raw_output"] in ("A", "B") and r["parsed"] == r["raw_output"] for r in mc)


class Crash(RuntimeError):
    pass


def stand_in(answer, asked: list, die_after=None):
    """A model stand-in: answers `answer(sample, number of questions asked so far)`, records the
    question ids in `asked`, raises Crash once `die_after` questions were asked."""
    def predict(samples, max_new_tokens):
        outs = []
        for s in samples:
            if die_after is not None and len(asked) == die_after:
                raise Crash
            asked.append(s.qid)
            outs.append(answer(s, len(asked)))
        return outs
    return predict


def scripted(asked: list, die_after=None):
    """Right on every third question, an unparseable answer on every fifth."""
    def answer(s, _):
        i = int(s.qid.split("_")[-1])
        return str(s.gold) if i % 3 == 0 else ("" if i % 5 == 0 else "purple")
    return stand_in(answer, asked, die_after)


def verbose(asked: list, die_after=None):
    """Answers the rule sets read differently: a multiple-choice letter at the start of a 7-token
    sentence (read by vlmevalkit-2025.04, not by the last-4 window of 2025.09), right on every
    other question; the gold text for open questions."""
    def answer(s, n):
        if not s.choices:
            return str(s.gold)
        letter = s.gold if n % 2 else next(c for c in s.choices if c != s.gold)
        return f"{letter} is what I would answer here"
    return stand_in(answer, asked, die_after)


RUN_INFO = {"checkpoint": "/ckpt/model", "dtype": "bfloat16", "mcq": "generate", "decode_rows": 8, "limit": None,
            "options": {}}


def test_rescoring_under_another_rule_set_equals_a_fresh_run_byte_for_byte(data_root, tmp_path):
    info = dict(RUN_INFO, data_root=os.path.abspath(data_root))
    runs = {}
    for rules in ("vlmevalkit-2025.04", "vlmevalkit-2025.09"):
        runs[rules] = tmp_path / rules
        loaded = runner.load_benchmarks(["synthetic"], data_root, rules=rules)
        runner.run(loaded, runs[rules], verbose([]), variant="aimv2_2drope", batch_size=4, run_info=info)
    old, new = (json.loads((runs[r] / "metrics.json").read_text())["synthetic"] for r in runs)
    assert old["accuracy"] > new["accuracy"] and new["n_unparsed"] > old["n_unparsed"]  # the rules differ here

    for source, target in (("vlmevalkit-2025.04", "vlmevalkit-2025.09"), ("vlmevalkit-2025.09", "vlmevalkit-2025.04")):
        out = tmp_path / f"{source}-as-{target}"
        metrics = runner.score_file("synthetic", runs[source] / "synthetic" / "predictions.jsonl", data_root, out,
                                    rules=target)
        assert same_files(out, runs[target]), (source, target)
        assert metrics == json.loads((runs[target] / "synthetic" / "metrics.json").read_text())
    # without --rules, `score` keeps the rule set the file was scored by
    assert runner.score_file("synthetic", runs["vlmevalkit-2025.04"] / "synthetic" / "predictions.jsonl",
                             data_root) == old


def test_interrupted_run_resumes_to_the_uninterrupted_result(data_root, tmp_path):
    loaded = runner.load_benchmarks(["synthetic"], data_root)
    qids = [s.qid for s in loaded["synthetic"][1]]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    runner.run(loaded, whole, scripted([]), batch_size=4)

    with pytest.raises(Crash):  # dies inside the third batch: two batches are on disk
        runner.run(loaded, resumed, scripted([], die_after=10), batch_size=4)
    pred = resumed / "synthetic" / "predictions.jsonl"
    assert [r["qid"] for r in runner.read_jsonl(pred)] == qids[:8]
    with open(pred, "a") as f:
        f.write('{"qid": "test_0000')  # a line torn by the kill
    asked = []
    runner.run(loaded, resumed, scripted(asked), batch_size=4)
    assert asked == qids[8:]
    for name in ("synthetic/predictions.jsonl", "synthetic/metrics.json", "metrics.json", "report.md"):
        assert (resumed / name).read_text() == (whole / name).read_text(), name
    assert json.loads((whole / "metrics.json").read_text())["synthetic"]["n_unparsed"] > 0

    # resumed under another rule set: the rows already on disk are re-scored, the files equal an
    # uninterrupted run under that rule set
    sep = runner.load_benchmarks(["synthetic"], data_root, rules="vlmevalkit-2025.09")
    apr = runner.load_benchmarks(["synthetic"], data_root, rules="vlmevalkit-2025.04")
    whole_sep, mixed = tmp_path / "whole_sep", tmp_path / "mixed"
    runner.run(sep, whole_sep, verbose([]), batch_size=4)
    with pytest.raises(Crash):
        runner.run(apr, mixed, verbose([], die_after=10), batch_size=4)
    read_by_apr = [r["qid"] for r in runner.read_jsonl(mixed / "synthetic" / "predictions.jsonl")
                   if r["gold"] in ("A", "B") and r["parsed"] is not None]
    assert read_by_apr  # multiple-choice answers on disk that vlmevalkit-2025.04 read
    asked = list(qids[:8])  # the stand-in alternates right/wrong by answer count: continue its count
    runner.run(sep, mixed, verbose(asked), batch_size=4)
    assert asked == qids
    assert same_files(whole_sep, mixed)
    rescored = {r["qid"]: r for r in runner.read_jsonl(mixed / "synthetic" / "predictions.jsonl")}
    assert all(rescored[q]["parsed"] is None for q in read_by_apr)  # ... and 2025.09 does not

    # answers made with other settings (here: another answer length) are not mixed into this run
    with pytest.raises(ValueError, match="other answer settings.*max_new_tokens: 16 there, 8 now"):
        runner.run(loaded, whole, scripted([]), batch_size=4, max_new_tokens=8)

    # an old predictions file without a header still resumes (nothing asked again) and gets one
    old = tmp_path / "old"
    (old / "synthetic").mkdir(parents=True)
    lines = (whole / "synthetic" / "predictions.jsonl").read_text().splitlines(keepends=True)
    assert json.loads(lines[0])["vlm_spatial_predictions"] == 1
    (old / "synthetic" / "predictions.jsonl").write_text("".join(lines[1:]))
    assert runner.score_file("synthetic", old / "synthetic" / "predictions.jsonl", data_root) == \
        json.loads((whole / "synthetic" / "metrics.json").read_text())
    asked = []
    runner.run(loaded, old, scripted(asked), batch_size=4)
    assert asked == [] and same_files(old, whole)

    # a predictions file made with other prompts is not mixed into this run
    rows = runner.read_jsonl(pred)
    rows[0]["prompt"] = "another prompt style"
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="other prompts"):
        runner.run(loaded, resumed, scripted([]), batch_size=4)


def test_missing_file_unknown_variant_and_benchmark_fail_before_the_model_loads(tmp_path, capsys):
    code = main(["--checkpoint", str(tmp_path / "no-such-model"), "--benchmarks", "synthetic",
                 "--data_root", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "test_eval.json" in err and str(tmp_path / "synthetic") in err
    # so do an unknown paper variant and an unknown benchmark, before any file is read
    assert main(["score", "--benchmark", "synthetic", "--predictions", "x.jsonl", "--data_root", str(tmp_path),
                 "--variant", "LLaVA-9"]) == 2
    assert main(["--checkpoint", "x", "--benchmarks", "synthetic,mmvpp", "--data_root", "x", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "unknown paper variant 'LLaVA-9'" in err and "aimv2_2drope" in err and "unknown benchmark 'mmvpp'" in err
