"""Metric formulas against hand-computed numbers, and real model outputs from the benchmarks'
repositories (LLaVA-1.5-13B on GQA, MME and MMMU; GPT-4V on SEED-Bench) scored end to end.

These numbers were pinned against VLMEvalKit's April-2025 matcher, so every multiple-choice
benchmark here is scored explicitly under ``vlmevalkit-2025.04`` (the default is now
``vlmevalkit-2025.09``; test_benchmarks_rules.py pins where the two differ)."""
import json
import math
import shutil
from pathlib import Path

import pytest

from vlm_spatial.evaluation.benchmarks import get_benchmark
from vlm_spatial.evaluation.benchmarks.base import Sample
from vlm_spatial.evaluation.benchmarks.ccbench import rotations
from vlm_spatial.evaluation.benchmarks.mmmu import score_mmmu_outputs
from vlm_spatial.evaluation.benchmarks.topviewrs import partial_match
from vlm_spatial.evaluation.runner import key_predictions, read_jsonl, score_predictions

FIX = Path(__file__).parent / "fixtures" / "benchmarks"


def score(name: str, samples: list, raws: list, rules="vlmevalkit-2025.04", **options) -> dict:
    """Metrics of ``raws`` (one per sample) under benchmark ``name`` and rule set ``rules``."""
    bench = get_benchmark(name, rules=rules, **options)
    return score_predictions(bench, samples, {s.qid: r for s, r in zip(samples, raws)})[1]


def mc(qid, gold, meta=None, choices=("A", "B")):
    return Sample(qid=str(qid), prompt="", gold=gold, choices={c: c.lower() * 3 for c in choices},
                  meta=dict(meta or {}))


def test_mmvp_question_and_pair_accuracy():
    # questions 1..6 = pairs (1,2) (3,4) (5,6); 279/280 is the disputed pair.
    golds = {1: "A", 2: "B", 3: "A", 4: "B", 5: "A", 6: "B", 279: "A", 280: "B"}
    answers = {1: "A", 2: "B", 3: "A", 4: "A", 5: "B", 6: "(B)", 279: "B", 280: "A"}
    samples = [mc(n, g, {"number": n}) for n, g in golds.items()]
    m = score("mmvp", samples, [answers[int(s.qid)] for s in samples])
    assert m["question_acc"] == pytest.approx(4 / 8)           # 1, 2, 3, 6 right
    assert m["pair_acc"] == pytest.approx(1 / 4)               # only pair (1,2) fully right
    fixed = m["label_sets"]["mmvp-corrected-279-280"]
    assert fixed["question_acc"] == pytest.approx(6 / 8)        # 279 -> B, 280 -> A
    assert fixed["pair_acc"] == pytest.approx(2 / 4)
    assert m["label_sets"]["mmvp-original"] == {"question_acc": m["question_acc"], "pair_acc": m["pair_acc"]}
    assert m["n_pairs"] == 4


def test_cvbench_2d_overall_is_the_mean_of_the_two_sources():
    rows = ([("COCO", "2D", True)] * 3 + [("COCO", "2D", False)] + [("ADE20K", "2D", True)]
            + [("ADE20K", "2D", False)] + [("Omni3D", "3D", True), ("Omni3D", "3D", False)])
    samples = [mc(i, "A", {"source": src, "split": sp, "task": "Count"}) for i, (src, sp, _) in
               enumerate(rows)]
    m = score("cvbench", samples, ["A" if ok else "B" for *_, ok in rows])
    assert m["acc_2d_coco"] == 0.75 and m["acc_2d_ade20k"] == 0.5
    assert m["acc_2d"] == pytest.approx(0.625)                 # not the pooled 4/6
    assert m["acc_3d"] == 0.5 and m["overall_official"] == pytest.approx((0.625 + 0.5) / 2)


def test_ccbench_circular_accuracy():
    opts = {"A": "x", "B": "y", "C": "z"}
    assert [g for _, g in rotations(opts, "B")] == ["B", "A", "C"]
    samples = []
    for q in (0, 1):
        for k, (rot, gold) in enumerate(rotations(opts, "B")):
            samples.append(Sample(qid=f"{q}_r{k}", prompt="", gold=gold, choices=rot,
                                  meta={"group": q, "rotation": k, "category": "c"}))
    # question 0: every copy right; question 1: right on copies 0 and 1, unreadable on copy 2.
    raws = ["B", "A", "C", "B", "A", "unsure"]
    m = score("ccbench", samples, raws)
    assert m["circular_acc"] == 0.5 and m["vanilla_acc"] == 1.0
    assert m["rotation_acc"] == pytest.approx(5 / 6) and m["n"] == 2 and m["n_unparsed"] == 1


def test_mme_acc_plus_and_the_2800_fraction_on_llava_13b_outputs(tmp_path):
    """LLaVA-1.5-13B's answers to the 56 sampled MME questions, gold from the release layout
    (first question of each image Yes, second No). By hand, per subtask acc + acc+:
    code_reasoning 75+50, artwork 75+50, celebrity 75+50, numerical_calculation 25+0,
    text_translation 50+0, count 75+50, OCR 75+50, and 100+100 for color, commonsense_reasoning,
    position, landmark, scene, existence, posters. Perception = 6*200 + 4*125 = 1700,
    cognition = 200 + 25 + 50 + 125 = 400, total 2100 -> 2100 / 2800 = 0.75."""
    (tmp_path / "mme").mkdir()
    shutil.copy(FIX / "mme_llava_questions.jsonl", tmp_path / "mme" / "llava_mme.jsonl")
    shutil.copytree(FIX / "mme_release_handmade" / "MME_Benchmark_release_version",
                    tmp_path / "mme" / "MME_Benchmark_release_version")
    bench = get_benchmark("mme")
    samples = bench.load(tmp_path)
    preds = key_predictions(read_jsonl(FIX / "mme_llava-v1.5-13b_predictions.jsonl"))
    _, m = score_predictions(bench, samples, preds)
    sub = m["subtasks"]
    assert (sub["code_reasoning"]["acc"], sub["code_reasoning"]["acc_plus"]) == (75.0, 50.0)
    assert sub["numerical_calculation"]["score"] == 25.0 and sub["text_translation"]["score"] == 50.0
    assert sub["color"]["score"] == 200.0 and sub["OCR"]["score"] == 125.0
    assert m["perception"] == 1700.0 and m["cognition"] == 400.0
    assert m["fraction"] == pytest.approx(0.75) and m["n"] == 56 and m["n_unparsed"] == 0


def test_gqa_overall_and_structural_types_on_llava_13b_outputs(tmp_path):
    """LLaVA-1.5-13B's answers to the 50 sampled testdev-balanced questions against the
    hand-assigned answers/types of gqa_testdev_balanced_questions_handmade_gold.json (ten
    answers differ from the model's). By hand: overall 40/50; verify 9/10, logical 4/6,
    choose 4/5, compare 0/1, query 23/28."""
    (tmp_path / "gqa").mkdir()
    shutil.copy(FIX / "gqa_llava_testdev_balanced_questions.jsonl",
                tmp_path / "gqa" / "llava_gqa_testdev_balanced.jsonl")
    shutil.copy(FIX / "gqa_testdev_balanced_questions_handmade_gold.json",
                tmp_path / "gqa" / "testdev_balanced_questions.json")
    bench = get_benchmark("gqa")
    samples = bench.load(tmp_path)
    preds = key_predictions(read_jsonl(FIX / "gqa_llava-v1.5-13b_predictions.jsonl"))
    _, m = score_predictions(bench, samples, preds)
    assert m["accuracy"] == pytest.approx(80.0)
    assert m["acc_verify"] == pytest.approx(90.0) and m["acc_logical"] == pytest.approx(400 / 6)
    assert m["acc_choose"] == pytest.approx(80.0) and m["acc_compare"] == 0.0
    assert m["acc_query"] == pytest.approx(2300 / 28)
    assert m["n_by_structural"] == {"choose": 5, "compare": 1, "logical": 6, "query": 28, "verify": 10}
    assert m["official_accuracy"] == pytest.approx(80.0)
    preds["201640614"] = "Woman."       # right for LLaVA's rstrip('.').lower(), not for VLMEvalKit
    _, m2 = score_predictions(bench, samples, preds)
    assert m2["accuracy"] == pytest.approx(78.0) and m2["official_accuracy"] == pytest.approx(80.0)


def test_mmmu_official_eval_on_llava_13b_accounting_outputs():
    """MMMU's own example outputs of LLaVA-1.5-13B on the 30 Accounting validation questions,
    against answer_dict_val.json: 8 right (questions 8, 12, 15, 21, 22, 23, 26, 29)."""
    outputs = json.loads((FIX / "mmmu_example_output_llava1.5_13b_Accounting.json").read_text())
    answers = json.loads((FIX / "mmmu_answer_dict_val.json").read_text())
    m = score_mmmu_outputs(outputs, answers)
    assert m["accuracy"] == pytest.approx(8 / 30) and m["n"] == 30
    assert m["n_random_fallback"] == 0 and list(m["by_subject"]) == ["Accounting"]
    opens = [{"id": "validation_Chemistry_23", "response": "The pH is 6.5."},
             {"id": "validation_Basic_Medical_Science_14", "response": "Transformation"},
             {"id": "validation_Biology_10", "response": "1/64"},
             {"id": "validation_Chemistry_20", "response": "five"}]
    for o in opens:
        o.update(question_type="short-answer", all_choices=[], index2ans={})
    m = score_mmmu_outputs(opens, answers)
    assert m["accuracy"] == pytest.approx(3 / 4)               # "five" is not read as 5


def test_mmmu_benchmark_vlmevalkit_and_official_accuracy():
    mcq = Sample(qid="1", prompt="", gold="B", choices={"A": "$6", "B": "$7"},
                 meta={"category": "Accounting", "question_type": "multiple-choice",
                       "options": {"A": "$6", "B": "$7"}, "answer": "B"})
    opn = Sample(qid="2", prompt="", gold="A", choices={"A": "1.06", "B": "Other Answers"},
                 meta={"category": "Arch", "question_type": "open", "options": {}, "answer": "1.06"})
    letter = Sample(qid="3", prompt="", gold="C", choices={"A": "C", "B": "Other Answers"},
                    meta={"category": "Med", "question_type": "open", "options": {}, "answer": "C"})
    m = score("mmmu", [mcq, opn, letter], ["(B)", "1.06", "C"])
    # VLMEvalKit: B right; "1.06" matches option A's text; "C" -> A != gold C (upstream quirk).
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["official_acc"] == pytest.approx(3 / 3)
    m = score("mmmu", [opn], ["The answer is 1.07"])
    assert m["accuracy"] == 0.0 and m["official_acc"] == 0.0 and m["n_unparsed"] == 1


def test_seedbench_gpt4v_predictions(tmp_path):
    """GPT-4V's SEED-Bench-1 answers (its own result file, with gt_answer): 34 of 50 right."""
    (tmp_path / "seedbench").mkdir()
    shutil.copy(FIX / "seedbench1_handmade_SEED-Bench.json", tmp_path / "seedbench" / "SEED-Bench.json")
    bench = get_benchmark("seedbench", rules="vlmevalkit-2025.04")
    rows = json.loads((FIX / "seedbench1_gpt4v_predictions.json").read_text())
    _, m = score_predictions(bench, bench.load(tmp_path), key_predictions(rows))
    assert m["accuracy"] == pytest.approx(34 / 50) and m["n"] == 50 and m["n_unparsed"] == 0
    assert sum(m["by_category"].values()) > 0


def test_tallyqa_simple_complex_and_rmse():
    samples = [Sample(qid=str(i), prompt="", gold=g, meta={"issimple": s})
               for i, (g, s) in enumerate([(2, True), (3, True), (4, False), (1, False)])]
    m = score("tallyqa", samples, ["2", "five", "4 buses", "I can't tell"])
    assert m["accuracy"] == 0.5 and m["simple_acc"] == 0.5 and m["complex_acc"] == 0.5
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 4 + 0) / 3))     # unparsed one left out
    assert m["simple_rmse"] == pytest.approx(math.sqrt(2)) and m["complex_rmse"] == 0.0
    assert m["n_unparsed"] == 1


def test_countbenchqa_substring_and_exact():
    samples = [Sample(qid=str(i), prompt="", gold=g) for i, g in enumerate([2, 3, 4])]
    m = score("countbenchqa", samples, ["12", "three", "4"])
    assert m["accuracy"] == pytest.approx(2 / 3) and m["exact_acc"] == pytest.approx(2 / 3)


def test_vsr_accuracy_precision_recall_f1():
    golds = ["Yes", "Yes", "No", "No", "Yes"]
    samples = [Sample(qid=str(i), prompt="", gold=g, meta={"relation": "left of"})
               for i, g in enumerate(golds)]
    m = score("vsr", samples, ["Yes", "No", "Yes", "No.", "Maybe"])
    assert m["accuracy"] == pytest.approx(40.0) and m["n_unparsed"] == 1
    assert m["precision"] == pytest.approx(50.0) and m["recall"] == pytest.approx(100 / 3)
    assert m["f1"] == pytest.approx(0.4)


def test_topviewrs_exact_and_partial_match():
    choices = {"A": "the red sofa", "B": "the blue sofa", "C": "a lamp"}
    assert partial_match("B", "B", choices, "B") == 1.0
    assert partial_match("The answer is A.", "A", choices, "B") == pytest.approx(2 / 3)
    assert partial_match("[C] lamp", "C", choices, "B") == 0.0
    assert partial_match("blue sofa", "B", choices, "B") == 0.0   # VLMEvalKit reads "sofa"
    assert partial_match("?", None, choices, "B") == 0.0
    samples = [Sample(qid=str(i), prompt="", gold="B", choices=choices, meta={"category": "t"})
               for i in range(2)]
    m = score("topviewrs", samples, ["B", "A"])
    assert m["accuracy"] == 0.5 and m["partial_match"] == pytest.approx((1 + 2 / 3) / 2)
