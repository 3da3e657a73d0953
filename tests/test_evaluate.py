"""The evaluation runner and CLI: end to end on CPU (synthetic set -> tiny checkpoint -> CLI ->
predictions, metrics, report; `score` re-scores to the same metrics), resume after a crash equals
an uninterrupted run, a missing benchmark file is named before any model loads."""
import json

import numpy as np
import pytest
from flax import nnx

from vlm_spatial import checkpoint
from vlm_spatial.data import synthetic
from vlm_spatial.data.templates import IMAGE_MARKER, load_tokenizer
from vlm_spatial.evaluate import main
from vlm_spatial.evaluation import generate as gen
from vlm_spatial.evaluation import runner
from vlm_spatial.models import presets
from vlm_spatial.models.vlm import VLM

NUM_TEST = 16


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

    # `score` re-scores the predictions file, without a model, to the same metrics
    assert main(["score", "--benchmark", "synthetic", "--predictions", str(out / "synthetic" / "predictions.jsonl"),
                 "--data_root", str(data_root)]) == 0
    assert json.loads(capsys.readouterr().out) == metrics

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


def scripted(asked: list, die_after=None):
    """A model stand-in: right on every third question, an unparseable answer on every fifth."""
    def predict(samples, max_new_tokens):
        outs = []
        for s in samples:
            if die_after is not None and len(asked) == die_after:
                raise Crash
            asked.append(s.qid)
            i = int(s.qid.split("_")[-1])
            outs.append(str(s.gold) if i % 3 == 0 else ("" if i % 5 == 0 else "purple"))
        return outs
    return predict


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
