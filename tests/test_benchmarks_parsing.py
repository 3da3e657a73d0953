"""Answer parsing of every benchmark on the edge cases models produce: "(B)", "B.", "The answer
is B", "two" vs "2", "Yes," vs "yes", trailing punctuation, refusals and unreadable output."""
import pytest

from vlm_spatial.evaluation.benchmarks import get_benchmark
from vlm_spatial.evaluation.benchmarks.answer_parsing import (
    count_from_text, llava_mcq_prompt, mmmu_eval_open, mmmu_parse_multi_choice, mmmu_parse_open,
    vqa_normalize, yorn_extraction)
from vlm_spatial.evaluation.benchmarks.base import Sample
from vlm_spatial.evaluation.rules import RULE_SETS

CHOICES = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
MCQ_CASES = [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("B)", "B"), ("The answer is B", "B"),
    ("The answer is B.", "B"), ("**B**", "B"), ("B. dog", "B"), ("Answer: B\n", "B"),
    ("dog", "B"), ("It is a dog.", "B"),           # no letter: the option text decides
    ("b", None),                                   # lower-case letters are not option tokens
    ("A or B", None), ("cat and dog", None),       # two candidates
    ("E", None), ("", None), ("Cannot determine the answer", None), ("Z", None),
]
MCQ_BENCHMARKS = ["mmvp", "cvbench", "topviewrs", "seedbench", "ccbench", "mmmu", "synthetic"]


@pytest.mark.parametrize("rules", list(RULE_SETS))
@pytest.mark.parametrize("name", MCQ_BENCHMARKS)
def test_multiple_choice_parsing(name, rules):
    """Short answers read the same under every rule set (test_benchmarks_rules.py pins where the
    rule sets differ)."""
    bench = get_benchmark(name, rules=rules)
    sample = Sample(qid="1", prompt="", gold="B", choices=dict(CHOICES))
    for raw, want in MCQ_CASES:
        parsed, correct = bench.judge(sample, raw)
        assert parsed == want, (name, raw, parsed)
        assert correct == (want == "B"), (name, raw)
    assert bench.judge(sample, None) == (None, False)


def test_llava_prompts():
    assert llava_mcq_prompt("Q?", {"A": "x", "B": "y"}, hint="H") == (
        "H\nQ?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly.")
    assert llava_mcq_prompt("Q?", {}) == "Q?\nAnswer the question directly."
    assert llava_mcq_prompt("这是什么?", {"A": "x"}).endswith("\n请直接回答选项字母。")
    assert llava_mcq_prompt("这是什么?", {}).endswith("\n请直接回答问题。")


YN_CASES = [("Yes", "Yes"), ("yes", "Yes"), ("Yes,", "Yes"), ("Yes.", "Yes"), ("YES!", "Yes"),
            ("No", "No"), ("no.", "No"), ("No, it is not.", "No"), ("The answer is no", "No"),
            ("Yes, and no", None), ("yesterday", None), ("Not sure", None), ("", None)]


@pytest.mark.parametrize("name", ["mme", "vsr"])
def test_yes_no_parsing(name):
    bench = get_benchmark(name)
    sample = Sample(qid="1", prompt="", gold="Yes")
    for raw, want in YN_CASES:
        parsed, correct = bench.judge(sample, raw)
        assert parsed == want, (name, raw, parsed)
        assert correct == (want == "Yes")
    assert yorn_extraction(None) is None


COUNT_CASES = [("2", 2), ("two", 2), ("Two.", 2), ("2.", 2), ("There are 2 dogs.", 2),
               ("twenty", 20), ("20", 20), ("25", None), ("none", None), ("one or two", 1),
               ("I see 3, maybe 4", 3), ("no idea", None), ("", None)]


@pytest.mark.parametrize("name", ["tallyqa", "countbenchqa"])
def test_count_parsing(name):
    bench = get_benchmark(name)
    sample = Sample(qid="1", prompt="", gold=2)
    for raw, want in COUNT_CASES:
        parsed, _ = bench.judge(sample, raw)
        assert parsed == want, (name, raw, parsed)
    assert count_from_text(None) is None


def test_tallyqa_scores_the_count_and_countbenchqa_the_substring():
    tally, cbq = get_benchmark("tallyqa"), get_benchmark("countbenchqa")
    s = Sample(qid="1", prompt="", gold=2)
    assert tally.judge(s, "two")[1] and tally.judge(s, "2 dogs")[1]
    assert not tally.judge(s, "12")[1]
    assert cbq.judge(s, "12")[1] and cbq.judge(s, "2.")[1]     # VLMEvalKit: "2" in "12"
    assert not cbq.judge(s, "two")[1]                          # ... but no word -> digit


def test_gqa_strict_match_is_case_and_space_insensitive_only():
    gqa = get_benchmark("gqa")
    s = Sample(qid="1", prompt="", gold="yes")
    assert gqa.judge(s, "Yes") == ("Yes", True)
    assert gqa.judge(s, " yes \n")[1]
    assert not gqa.judge(s, "Yes.")[1] and not gqa.judge(s, "Yes,")[1]
    assert gqa.judge(s, None) == (None, False)


def test_synthetic_open_answers_use_vqa_normalisation():
    syn = get_benchmark("synthetic")
    s = Sample(qid="1", prompt="", gold=vqa_normalize("2"))
    for raw in ("2", "two", "Two.", "2,"):
        assert syn.judge(s, raw)[1], raw
    assert not syn.judge(s, "3")[1] and syn.judge(s, "  ") == (None, False)
    assert vqa_normalize("The Left.") == "left" and vqa_normalize("Yes,") == "yes"


def test_mmmu_official_parsers():
    all_choices, idx = ["A", "B", "C", "D"], {"A": "$6", "B": "$7", "C": "$8", "D": "$9"}
    for raw, want in [("B", "B"), ("(B)", "B"), ("B.", "B"), ("The answer is B", "B"),
                      ("(A) is wrong, (B) is right", "B"), ("A or maybe C", "C"),
                      ("The price of the item would come to $8 in total", "C"),
                      ("I do not know", None)]:
        assert mmmu_parse_multi_choice(raw, all_choices, idx) == want, raw
    assert mmmu_eval_open("1.06", mmmu_parse_open("The speed is 1.06 m/s."))
    assert mmmu_eval_open("1.06", mmmu_parse_open("1.060"))
    assert mmmu_eval_open("1000", mmmu_parse_open("so the answer is 1,000"))
    assert mmmu_eval_open("Transformation", mmmu_parse_open("Therefore it is transformation."))
    assert mmmu_eval_open(["24.32", "24.3"], mmmu_parse_open("24.3"))
    assert not mmmu_eval_open("2", mmmu_parse_open("two"))     # MMMU does not read number words
    assert not mmmu_eval_open("5", mmmu_parse_open("It has 6 carbons."))
