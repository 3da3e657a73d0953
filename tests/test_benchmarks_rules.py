"""Scoring rule sets: hand-written answers that pin every rule in which the harness revisions
differ (letter window, option-text length cap, the article "A", markdown bold, long answers that
quote an option, the 2026 "answer is" pattern), the CountBenchQA scale, MME's official parse
against calculation.py worked by hand, and the named MMVP label sets."""
import pytest

from vlm_spatial.evaluation.benchmarks import get_benchmark
from vlm_spatial.evaluation.benchmarks.base import Sample
from vlm_spatial.evaluation.benchmarks.mme import mme_official_parse
from vlm_spatial.evaluation.rules import DEFAULT_RULES, RULE_SETS, get_rules
from vlm_spatial.evaluation.runner import score_predictions

# Option texts total 3 + 3 + 4 + 4 = 14 characters: from 2025-08 on the text rule reads answers of
# at most 28 characters.
CHOICES = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
APR, SEP, SEP12, JUN26 = "vlmevalkit-2025.04", "vlmevalkit-2025.09", "vlmevalkit-2025.09.12", "vlmevalkit-2026.06"
# answer -> expected letter (None = unparsed, scored wrong) under each rule set
CASES = {
    # the window: the letter's first occurrence must be among the last 4 tokens (2025-08 on)
    "B, I would say.": {APR: "B", SEP: "B", SEP12: "B", JUN26: "B"},       # 4 tokens, B is 4th last
    "B, I would say so.": {APR: "B", SEP: None, SEP12: None, JUN26: None},  # 5 tokens, B is 5th last
    "B is the one that matches the picture best": {APR: "B", SEP: None, SEP12: None, JUN26: None},
    # the length cap on the text rule: 35 characters > 28
    "I think it is a dog, since it barks": {APR: "B", SEP: None, SEP12: None, JUN26: None},
    "It is a dog.": {APR: "B", SEP: "B", SEP12: "B", JUN26: "B"},          # 12 characters
    # the article "A" is the option letter A wherever it stands (2025-04) ...
    "A dog.": {APR: "A", SEP: "A", SEP12: "A", JUN26: "A"},
    # ... and only near the end from 2025-08 on; the text rule then reads the option (22 chars)
    "A small dog sits there": {APR: "A", SEP: "B", SEP12: "B", JUN26: "B"},
    # markdown bold is punctuation to the token rule
    "**B**": {APR: "B", SEP: "B", SEP12: "B", JUN26: "B"},
    "The correct answer is **B**. The dog is on the left of the image.":
        {APR: "B", SEP: None, SEP12: None, JUN26: "B"},
    # long answers that quote one option's text
    "Looking closely at the picture, the animal is a dog.": {APR: "B", SEP: None, SEP12: None, JUN26: None},
    "The answer is (C) bird because of its wings and beak": {APR: "C", SEP: None, SEP12: None, JUN26: None},
    # 2026-06: "answer is X" is read case-insensitively, before the text rule
    "The answer is a dog.": {APR: "B", SEP: "B", SEP12: "B", JUN26: "A"},
    "The answer is B, not A": {APR: None, SEP: None, SEP12: None, JUN26: "B"},
    # the same everywhere: two letters, a refusal, two option texts
    "A or B": dict.fromkeys(RULE_SETS, None),
    "Z": dict.fromkeys(RULE_SETS, None),
    "cat or dog": dict.fromkeys(RULE_SETS, None),
}


def test_every_rule_set_is_covered_and_the_default_is_the_papers_revision():
    assert set(RULE_SETS) == {APR, SEP, SEP12, JUN26}
    assert DEFAULT_RULES == SEP and get_rules() is RULE_SETS[SEP] and get_rules(SEP) is RULE_SETS[SEP]
    assert get_rules(RULE_SETS[APR]) is RULE_SETS[APR]
    assert all(set(want) == set(RULE_SETS) for want in CASES.values())
    with pytest.raises(KeyError, match="unknown rule set 'vlmevalkit-2024'.*vlmevalkit-2025.09"):
        get_rules("vlmevalkit-2024")


@pytest.mark.parametrize("rules", list(RULE_SETS))
@pytest.mark.parametrize("name", ["mmvp", "cvbench", "topviewrs", "seedbench", "ccbench", "mmmu", "synthetic"])
def test_rule_differences_on_hand_written_answers(name, rules):
    bench = get_benchmark(name, rules=rules)
    sample = Sample(qid="1", prompt="", gold="B", choices=dict(CHOICES))
    for raw, want in CASES.items():
        parsed, correct = bench.judge(sample, raw)
        assert parsed == want[rules], (rules, raw, parsed)
        assert correct == (want[rules] == "B")


def test_countbenchqa_is_a_fraction_until_2025_09_12_and_x100_after():
    samples = [Sample(qid=str(i), prompt="", gold=g) for i, g in enumerate([2, 3, 4, 5])]
    raws = {"0": "12", "1": "three", "2": "4", "3": "5 cars"}
    for rules, scale in [(APR, 1), (SEP, 1), (SEP12, 100), (JUN26, 100)]:
        m = score_predictions(get_benchmark("countbenchqa", rules=rules), samples, raws)[1]
        assert m["accuracy"] == pytest.approx(scale * 3 / 4), rules
        assert m["accuracy_scale"] == ("fraction" if scale == 1 else "percent")
        assert m["accuracy_fraction"] == pytest.approx(3 / 4) and m["rules"] == rules


def test_mme_official_parse_reads_the_first_four_characters():
    for raw, want in [("Yes", "Yes"), ("no", "No"), ("Yes, and no", "Yes"), ("Not sure", "No"),
                      ("nope", "No"), ("yesterday", "Yes"), ("The answer is no", None),
                      ("I think yes", None), ("  no", "No"), ("   no", None), ("NO.", "No"),
                      ("ye", None), ("", None), (None, None)]:
        assert mme_official_parse(raw) == want, raw


def mme_row(cat, image, gold, raw):
    return {"qid": f"{cat}/{image}/{gold}", "raw_output": raw, "gold": gold,
            "meta": {"category": cat, "image_key": f"{cat}/{image}"}}


def test_mme_official_scores_equal_calculation_py_by_hand():
    """Three subtasks, two questions per image (Yes first, No second, as in the release):

    existence, image 1: "Yes, there is one" (both yes) | "The answer is no" (VLMEvalKit no,
      official other); image 2: "Yes, and no" (VLMEvalKit unknown, official yes) | "Not sure"
      (VLMEvalKit unknown, official no).
      VLMEvalKit: right 1, 2 (of 4), acc 50, acc+ 50 (image 1) -> 100.
      official: right 1, 3, 4, acc 75, acc+ 50 (image 2) -> 125; 1 other.
    count: "yes" | "no" and "no" | "yes": both rules 2 of 4 right, image 1 -> 50 + 50 = 100.
    OCR (no yes/no answer at all): "I cannot read it" x4 -> 0 + 0 = 0 under both; 4 others.
    Perception = 100 + 100 + 0 = 200 (VLMEvalKit), 125 + 100 + 0 = 225 (official).
    """
    rows = [mme_row("existence", 1, "Yes", "Yes, there is one"), mme_row("existence", 1, "No", "The answer is no"),
            mme_row("existence", 2, "Yes", "Yes, and no"), mme_row("existence", 2, "No", "Not sure"),
            mme_row("count", 1, "Yes", "yes"), mme_row("count", 1, "No", "no"),
            mme_row("count", 2, "Yes", "no"), mme_row("count", 2, "No", "yes")]
    rows += [mme_row("OCR", i, g, "I cannot read it") for i in (1, 2) for g in ("Yes", "No")]
    samples = [Sample(qid=r["qid"], prompt="", gold=r["gold"], meta=r["meta"]) for r in rows]
    m = score_predictions(get_benchmark("mme"), samples, {r["qid"]: r["raw_output"] for r in rows})[1]
    assert (m["subtasks"]["existence"]["score"], m["subtasks"]["count"]["score"], m["subtasks"]["OCR"]["score"]) == (
        100.0, 100.0, 0.0)
    assert m["perception"] == 200.0 and m["n_unparsed"] == 2 + 4
    off = m["official_subtasks"]
    assert (off["existence"]["acc"], off["existence"]["acc_plus"], off["existence"]["score"]) == (75.0, 50.0, 125.0)
    assert off["count"]["score"] == 100.0 and off["OCR"] == {"acc": 0.0, "acc_plus": 0.0, "score": 0.0, "other": 4}
    assert off["existence"]["other"] == 1 and off["count"]["other"] == 0
    assert m["official_perception"] == 225.0 and m["official_cognition"] == 0.0
    assert m["official_total"] == 225.0 and m["official_fraction"] == pytest.approx(225 / 2800)
    assert m["official_n_other"] == 5


def test_mmvp_named_label_sets():
    """Questions 97..100 (pairs 48, 49) and 279, 280 (pair 139); the file's labels alternate A, B.
    The model answers 99 B, 100 A (right for lmms-eval's tusk fix only), 279 B, 280 A (right for
    both fixes), 97 A, 98 B (right everywhere)."""
    numbers = [97, 98, 99, 100, 279, 280]
    answers = {97: "A", 98: "B", 99: "B", 100: "A", 279: "B", 280: "A"}
    samples = [Sample(qid=str(n), prompt="", gold="AB"[i % 2], choices={"A": "x", "B": "y"},
                      meta={"number": n}) for i, n in enumerate(numbers)]
    m = score_predictions(get_benchmark("mmvp"), samples, {str(n): answers[n] for n in numbers})[1]
    sets = m["label_sets"]
    assert list(sets) == ["mmvp-original", "mmvp-corrected-279-280", "lmms-eval"]
    assert m["question_acc"] == pytest.approx(2 / 6) and m["pair_acc"] == pytest.approx(1 / 3)
    assert sets["mmvp-original"] == {"question_acc": pytest.approx(2 / 6), "pair_acc": pytest.approx(1 / 3)}
    assert sets["mmvp-corrected-279-280"] == {"question_acc": pytest.approx(4 / 6), "pair_acc": pytest.approx(2 / 3)}
    assert sets["lmms-eval"] == {"question_acc": 1.0, "pair_acc": 1.0}
